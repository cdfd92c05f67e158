"""Sample folders: one PNG per image, written by every process of a launch, resumable, with the settings
they were drawn with and, optionally, the evaluators' ``.npz``.

A folder holds

- ``000000.png`` .. ``{N-1:06d}.png``: image ``i`` is drawn from its own generator
  (:func:`~hf_ddpm.sampling.sharding.image_generator`), so it depends only on the seed and ``i``; each file
  is written to a hidden temporary name and renamed, so a killed run leaves no half-written PNG;
- ``sample_config.json``: the settings the images depend on besides their index. A rerun with the same
  settings draws only the missing indices; other settings are refused, naming the differences, unless
  ``overwrite``;
- with ``npz``: ``samples_{N}x{H}x{W}x{C}.npz``, a uint8 array ``arr_0`` of shape (N, H, W, C), the format
  that openai/improved-diffusion's and guided-diffusion's evaluators read (shared/DESIGN.md).

A failed write (a full disk, an I/O error) raises :class:`SampleWriteError` naming the file; the files
already written stay, and a rerun fills in the rest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from hf_ddpm.data.image_grid import save_png_atomically, to_uint8

from .sharding import ProcessGroup, image_generator

__all__ = [
    "CONFIG_NAME",
    "SampleFolderJob",
    "SampleWriteError",
    "image_name",
    "npz_name",
    "pipeline_drawer",
    "read_samples",
    "unet_sha256",
    "write_sample_folder",
]

CONFIG_NAME = "sample_config.json"
_IMAGE_FILE = re.compile(r"^(\d{6,})\.png$")
_NPZ_FILE = re.compile(r"^samples_\d+x\d+x\d+x\d+\.npz$")


class SampleWriteError(OSError):
    """A file of a sample folder could not be written; the message names it and the error."""


def image_name(index: int) -> str:
    """The file name of image ``index``: six digits or more, so names sort as the indices do."""
    return f"{index:06d}.png"


def npz_name(num_images: int, height: int, width: int, channels: int) -> str:
    """``samples_{N}x{H}x{W}x{C}.npz``, as improved-diffusion's ``image_sample.py`` names its output."""
    return f"samples_{num_images}x{height}x{width}x{channels}.npz"


@dataclass(frozen=True)
class SampleFolderJob:
    """What :func:`write_sample_folder` writes.

    Attributes:
        output_dir: the folder (``--output-dir``).
        num_images: N, the images ``0..N-1`` (``--num-images``).
        batch_size: images per pipeline call on each process (``--batch-size``).
        settings: everything the images depend on besides their index (model, steps, sampler, seed,
            image shape, ...), JSON-ready; recorded in ``sample_config.json`` and compared on resume.
        npz: also write the evaluators' ``.npz`` of all N images.
        overwrite: replace a folder made with other settings instead of refusing.
    """

    output_dir: Path
    num_images: int
    batch_size: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    npz: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for flag, value in (("--num-images", self.num_images), ("--batch-size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class SampleFolderReport:
    """What a run did: images drawn now, images found from an earlier run, and the ``.npz`` if written."""

    drawn: int
    kept: int
    npz_path: Path | None


def _write_file(path: Path, write: Callable[[], Any]) -> None:
    try:
        write()
    except OSError as error:
        failure = SampleWriteError(f"could not write {path}: {error.strerror or error}")
        failure.errno = error.errno
        raise failure from error


def _write_json_atomically(data: Mapping[str, Any], path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")

    def write() -> None:
        try:
            partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            partial.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    _write_file(path, write)


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(wanted))
    return [
        f"{key} {recorded.get(key)!r} (folder) vs {wanted.get(key)!r} (now)"
        for key in keys
        if recorded.get(key) != wanted.get(key)
    ]


def _check_folder(job: SampleFolderJob) -> None:
    """Refuse a folder that is not one, or that holds images made with other settings."""
    folder = job.output_dir
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output-dir {folder} is a file, not a folder")
    config = folder / CONFIG_NAME
    if job.overwrite or not config.exists():
        if not job.overwrite and any(_IMAGE_FILE.match(p.name) for p in _listing(folder)):
            raise ValueError(
                f"--output-dir {folder} holds numbered PNGs but no {CONFIG_NAME}, so their settings are "
                "unknown: pass --overwrite to replace them, or choose another --output-dir"
            )
        return
    try:
        recorded = json.loads(config.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"--output-dir {folder}: {CONFIG_NAME} cannot be read ({error}); pass --overwrite to start "
            "the folder again"
        ) from error
    differences = _differences(recorded, json.loads(json.dumps(dict(job.settings))))
    if differences:
        raise ValueError(
            f"--output-dir {folder} holds images made with other settings: {'; '.join(differences)}. "
            "Pass --overwrite to replace them, or choose another --output-dir"
        )


def _listing(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _prepare_folder(job: SampleFolderJob) -> None:
    """On the main process: create the folder, clear it under ``overwrite``, record the settings."""
    folder = job.output_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output-dir {folder}: cannot create it ({error})") from error
    for path in _listing(folder):
        stale = path.name.startswith(".") and path.name.endswith(".partial")
        replaced = job.overwrite and (_IMAGE_FILE.match(path.name) or _NPZ_FILE.match(path.name))
        if stale or replaced:
            path.unlink()
    record = {"settings": dict(job.settings), "num_images": job.num_images}
    try:
        _write_json_atomically(record, folder / CONFIG_NAME)
    except SampleWriteError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # the folder is not writable
            raise ValueError(f"--output-dir {folder}: cannot write there ({error})") from error
        raise


def _save_image(image: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    _write_file(path, lambda: save_png_atomically(picture, path))


def _run_round(
    draw: Callable[[Sequence[int]], np.ndarray], batch: Sequence[int], folder: Path
) -> tuple[int, BaseException | None]:
    try:
        images = draw(batch)
        for index, image in zip(batch, images, strict=True):
            _save_image(image, folder / image_name(index))
    except Exception as error:  # handed to every process, which all raise it
        return 0, error
    return len(batch), None


def _write_npz(folder: Path, num_images: int) -> Path:
    images = _read_pngs([folder / image_name(i) for i in range(num_images)])
    path = folder / npz_name(*images.shape)
    partial = path.with_name(f".{path.name}.partial")

    def write() -> None:
        try:
            with open(partial, "wb") as f:
                np.savez(f, images)
            partial.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    _write_file(path, write)
    return path


def write_sample_folder(
    draw: Callable[[Sequence[int]], np.ndarray],
    job: SampleFolderJob,
    group: ProcessGroup | None = None,
) -> SampleFolderReport:
    """Fill ``job.output_dir`` with the images ``0..N-1`` that it lacks, split over ``group``'s processes.

    Args:
        draw: ``draw(indices)`` returns the images of those indices as uint8 (B, H, W, C); image ``i``
            must depend only on ``i`` and the job's settings.
        job: the folder, N, the batch size, the settings and the options.
        group: the processes sharing the work (:func:`~hf_ddpm.sampling.sharding.process_group`); one
            process when None.

    Every process writes its own images; the main process records the settings first, shows one
    progress bar with the total, and writes the ``.npz`` once all are done.

    Raises:
        ValueError: the folder cannot be used (see the module docstring); raised before any image is drawn.
        SampleWriteError: a file could not be written; the images already written stay.
    """
    group = group or ProcessGroup()
    folder = job.output_dir
    error: BaseException | None = None
    try:
        _check_folder(job)
    except ValueError as e:
        error = e
    group.agree(error)
    if group.is_main:
        try:
            _prepare_folder(job)
        except (ValueError, OSError) as e:
            error = e
    group.agree(error)

    todo = [i for i in group.shard(range(job.num_images)) if not (folder / image_name(i)).exists()]
    batches = [
        todo[start : start + job.batch_size] for start in range(0, len(todo), job.batch_size)
    ]
    rounds, missing = group.max(len(batches)), group.sum(len(todo))
    bar = tqdm(
        total=job.num_images,
        initial=job.num_images - missing,
        desc="sampling",
        unit="img",
        disable=not group.is_main,
    )
    with bar:
        # Every process takes part in every round, with or without images of its own, so that the
        # count and an error of any process reach all of them.
        for round_index in range(rounds):
            batch = batches[round_index] if round_index < len(batches) else []
            done, error = _run_round(draw, batch, folder) if batch else (0, None)
            outcomes = group.gather((done, error))
            bar.update(sum(count for count, _ in outcomes))
            errors = [e for _, e in outcomes if e is not None]
            if errors:
                raise error or errors[0]

    npz_path = None
    if job.npz:
        error = None
        if group.is_main:
            try:
                npz_path = _write_npz(folder, job.num_images)
            except OSError as e:
                error = e
        group.agree(error)
    return SampleFolderReport(drawn=missing, kept=job.num_images - missing, npz_path=npz_path)


def pipeline_drawer(
    pipeline: Any,
    seed: int,
    num_inference_steps: int,
    label_of: Callable[[int], int] | None = None,
    guidance_scale: float = 1.0,
) -> Callable[[Sequence[int]], np.ndarray]:
    """``draw(indices)`` for :func:`write_sample_folder`: one ``pipeline`` call on the images of
    ``indices``, image ``i`` from :func:`~hf_ddpm.sampling.sharding.image_generator` ``(seed, i)`` and,
    for a class-conditional model, class ``label_of(i)``."""

    def draw(indices: Sequence[int]) -> np.ndarray:
        kwargs: dict[str, Any] = {}
        if label_of is not None:
            kwargs = {
                "class_labels": [label_of(i) for i in indices],
                "guidance_scale": guidance_scale,
            }
        images = pipeline(
            batch_size=len(indices),
            generator=[image_generator(seed, i) for i in indices],
            num_inference_steps=num_inference_steps,
            output_type="np",
            **kwargs,
        ).images
        return to_uint8(images)

    return draw


def _read_pngs(paths: Sequence[Path]) -> np.ndarray:
    arrays = []
    for path in paths:
        with Image.open(path) as picture:
            array = np.asarray(picture)
        arrays.append(array[..., None] if array.ndim == 2 else array)
    return np.stack(arrays)


def _folder_images(folder: Path) -> list[Path]:
    numbered = sorted(
        (int(m.group(1)), p) for p in _listing(folder) if (m := _IMAGE_FILE.match(p.name))
    )
    return [path for _, path in numbered]


def unet_sha256(unet: Any) -> str:
    """A hash of ``unet``'s weights: what a sample folder records of the model, so that a model retrained
    into the same folder is told apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def read_samples(
    path: str | Path, group: ProcessGroup | None = None, limit: int | None = None
) -> np.ndarray:
    """The images of a sample folder (its numbered PNGs, in index order) or of an evaluators' ``.npz``
    (``arr_0``), as uint8 (N, H, W, C): the first ``limit`` of them when given and, with a ``group``, only
    this process's share of those (indices ``rank, rank + world, ...``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is neither a folder of numbered PNGs nor a ``.npz`` holding a uint8
            (N, H, W, C) ``arr_0``; the message names ``--samples``.
    """
    group = group or ProcessGroup()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--samples {path}: no such folder or file")
    if path.is_dir():
        files = _folder_images(path)
        if not files:
            raise ValueError(
                f"--samples {path}: the folder holds no numbered PNGs (000000.png, ...); "
                "write one with hf-ddpm sample --output-dir"
            )
        return _read_pngs(group.shard(files[:limit]))
    if path.suffix != ".npz":
        raise ValueError(
            f"--samples {path} is neither a folder of numbered PNGs nor a .npz (arr_0, uint8 N x H x W x C)"
        )
    try:
        with np.load(path) as data:
            images = data["arr_0"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"--samples {path}: not a readable .npz with an arr_0 ({error})"
        ) from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"--samples {path}: arr_0 must be uint8 of shape (N, H, W, C) with C 1 or 3, got "
            f"{images.dtype} {images.shape}"
        )
    return images[:limit][group.rank :: group.world]
