"""Training checkpoints that cannot be half-written: ``output_dir/checkpoint-N``.

A checkpoint is a folder of safetensors files (one per tensor group: model, EMA, optimizer, RNG, ...) and
one ``state.json`` for everything else. It is written into a hidden temporary folder, each file fsynced,
then ``manifest.json`` (the SHA-256 of every file) is written last, and the folder is renamed into place.
A rename is atomic on one file system, so ``checkpoint-N`` is either complete or absent; a folder without a
manifest, or whose files do not match it, is reported and skipped in favour of the previous checkpoint.

Nested state (an optimizer's ``state_dict``, a sampler's numpy history) is split by :func:`flatten_state`
into a JSON-able skeleton and a flat dict of tensors, so nothing is pickled and nothing needs
``torch.load``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load_file

from hf_ddpm.core.saving import plain_file_mode
from hf_ddpm.hub.loading import CHECKPOINT_NAME

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "state.json"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-checkpoint-"
# The tensor groups of every `hf-ddpm train` checkpoint (run_checkpoint.save_run_checkpoint): a checkpoint
# verified for training must have each one's file, whatever its manifest lists.
TRAINING_GROUPS = ("model", "ema", "training_state")
# The tensor groups of every `hf-ddpm fit-covariance` checkpoint (fit_covariance._save), required alike.
HEAD_FIT_GROUPS = ("head", "optimizer")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint folder that is partial, or whose files do not match its manifest."""


class OutputWriteError(RuntimeError):
    """A checkpoint or the final pipeline could not be written (a full disk, an I/O error); the message
    names the path, the error and the last complete checkpoint, which is intact."""


# Errors that may pass (a busy network file system, an interrupted call): one retry, then a stop.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT})

T = TypeVar("T")


def retry_once_if_transient(write: Callable[[], T], what: str) -> T:
    """``write()``, called once more (with a warning naming ``what``) if it raised an ``OSError`` whose
    errno is in :data:`TRANSIENT_ERRNOS`. ``write`` must leave nothing behind when it fails, so that the
    second call starts clean; any other error, or a second failure, propagates."""
    try:
        return write()
    except OSError as error:
        if error.errno not in TRANSIENT_ERRNOS:
            raise
        logger.warning("writing %s failed (%s); retrying once", what, error)
    return write()


def checkpoint_path(output_dir: str | os.PathLike[str], step: int) -> Path:
    """``output_dir/checkpoint-{step}``."""
    return Path(output_dir) / f"checkpoint-{step}"


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
) -> Path:
    """Atomically write ``checkpoint-{step}`` and return its path.

    Args:
        output_dir: the training output folder.
        step: the optimizer step the checkpoint holds.
        tensors: groups of tensors; group ``g`` goes to ``g.safetensors``.
        state: JSON-serialisable metadata, written to ``state.json``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(output_dir, step)
    tmp = output_dir / f"{TMP_PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_into(tmp, step, tensors, state)
        rename_into_place(tmp, final)
    except BaseException:
        # Nothing half-written stays behind (latest_checkpoint would skip it anyway).
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_into(
    tmp: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]
) -> None:
    """The checkpoint's files, each fsynced, the manifest last."""
    # safetensors writes each file with mode 0600; a checkpoint's files get a plain open()'s mode.
    file_mode = plain_file_mode(tmp)
    digests: dict[str, str] = {}
    for group, group_tensors in tensors.items():
        path = tmp / f"{group}.safetensors"
        safetensors.torch.save_file(
            {k: v.detach().cpu().contiguous() for k, v in group_tensors.items()}, str(path)
        )
        path.chmod(file_mode)
        digests[path.name] = _fsync_and_hash(path)
    state_path = tmp / STATE
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    digests[STATE] = _fsync_and_hash(state_path)
    manifest = {"format_version": FORMAT_VERSION, "step": step, "sha256": digests}
    manifest_path = tmp / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    _fsync_and_hash(manifest_path)


def rename_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final`` (same parent), replacing any folder there."""
    if final.exists():
        # Re-writing a step (e.g. after resuming from it): move the old one aside first, so that at
        # every moment one complete copy exists.
        old = final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


def required_files(groups: Iterable[str] = ()) -> frozenset[str]:
    """The files a checkpoint holding the tensor ``groups`` must have: ``{group}.safetensors`` for each,
    and ``state.json``, which every checkpoint has."""
    return frozenset({STATE, *(f"{group}.safetensors" for group in groups)})


def load_checkpoint(
    path: str | os.PathLike[str], groups: Iterable[str] = ()
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Verify a checkpoint against its manifest (and that it holds ``groups``) and return
    ``(tensors, state)``.

    Raises:
        FileNotFoundError: the folder does not exist.
        CorruptCheckpointError: see :func:`verify_checkpoint`.
    """
    path = Path(path)
    verify_checkpoint(path, groups)
    tensors = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    state = json.loads((path / STATE).read_text(encoding="utf-8"))
    return tensors, state


def verify_checkpoint(path: str | os.PathLike[str], groups: Iterable[str] = ()) -> None:
    """Raise unless ``path`` is a complete checkpoint: a manifest that is a JSON object of this format,
    every file it lists present with its recorded SHA-256, and every file of :func:`required_files`
    ``(groups)`` among them (a file deleted together with its manifest entry is caught here, not by a
    KeyError when resuming).

    Raises:
        FileNotFoundError: the folder does not exist.
        CorruptCheckpointError: the reason, naming the checkpoint and the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"checkpoint {str(path)!r} has no {MANIFEST}: it is partial")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} has an unreadable {MANIFEST}"
        ) from e
    if not isinstance(manifest, dict):
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} has a {MANIFEST} that is not a JSON object "
            f"(a {type(manifest).__name__})"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} has format version {manifest.get('format_version')!r}; "
            f"this version of hf_ddpm reads version {FORMAT_VERSION}"
        )
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or not all(
        isinstance(name, str) and isinstance(digest, str) for name, digest in digests.items()
    ):
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} has a {MANIFEST} without its sha256 object of file names to "
            "digests"
        )
    unlisted = sorted(required_files(groups) - set(digests))
    if unlisted:
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} is missing {', '.join(unlisted)} (not listed in its "
            f"{MANIFEST} either), which every checkpoint of its kind has"
        )
    for name, digest in digests.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(f"checkpoint {str(path)!r} is missing {name}")
        if _sha256(file) != digest:
            raise CorruptCheckpointError(
                f"checkpoint {str(path)!r}: {name} does not match its checksum"
            )


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``checkpoint-N`` folder in ``output_dir`` (verified or not), oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_NAME.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(
    output_dir: str | os.PathLike[str], groups: Iterable[str] = ()
) -> Path | None:
    """The newest checkpoint that verifies (holding ``groups``); newer partial or corrupt ones are
    skipped with a warning that names each and why."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path, groups)
        except CorruptCheckpointError as e:
            logger.warning("skipping %s; falling back to the previous checkpoint", e)
            continue
        return path
    return None


def resolve_resume(
    output_dir: str | os.PathLike[str], resume: str | None, groups: Iterable[str] = ()
) -> Path | None:
    """Turn ``--resume-from-checkpoint`` (``None``, ``"latest"`` or a path) into a verified folder
    holding ``groups``.

    ``"latest"`` with no checkpoint yet means a fresh start (so the same command can start and resume
    a job). An explicit path must exist and verify.
    """
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir, groups)
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(
            f"--resume-from-checkpoint {resume!r} does not exist; give 'latest', 'hub' (with --hub-model-id) or a checkpoint-N folder"
        )
    verify_checkpoint(path, groups)
    return path


def prune_checkpoints(output_dir: str | os.PathLike[str], total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so at most ``total_limit`` remain, plus stale temporary folders.

    Returns the deleted checkpoint folders.
    """
    output_dir = Path(output_dir)
    for stale in output_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    if total_limit is None:
        return []
    existing = list_checkpoints(output_dir)
    doomed = existing[: max(len(existing) - total_limit, 0)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested state into a JSON-able skeleton and ``{key: tensor}``.

    Tensors and numpy arrays become ``{"__tensor__": key}`` (numpy ones tagged to come back as numpy);
    tuples and dicts with non-string keys are tagged so :func:`unflatten_state` restores them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(value))
            return {"__tensor__": path, "numpy": True}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"__dict__": {k: walk(v, f"{path}.{k}") for k, v in value.items()}}
            return {"__items__": [[k, walk(v, f"{path}.{k}")] for k, v in value.items()]}
        if isinstance(value, tuple | list):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot checkpoint a value of type {type(value).__name__} at {path!r}")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        value = tensors[skeleton["__tensor__"]]
        return value.numpy() if skeleton.get("numpy") else value
    if "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"].items()}
    if "__items__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
    if "__tuple__" in skeleton:
        return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    raise ValueError(f"unknown checkpoint skeleton entry {sorted(skeleton)}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_and_hash(path: Path) -> str:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return _sha256(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
