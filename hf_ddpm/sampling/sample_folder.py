"""Sample folders: one PNG per image, written by every process of a launch, resumable, with the settings
they were drawn with and, optionally, the evaluators' ``.npz``.

A folder holds

- ``000000.png`` .. ``{N-1:06d}.png``: image ``i`` is drawn from its own generator
  (:func:`~hf_ddpm.sampling.sharding.image_generator`), so it depends only on the seed and ``i``; each file
  is written to a hidden temporary name and renamed, so a killed run leaves no half-written PNG;
- ``sample_config.json``: the settings the images depend on besides their index
  (:meth:`PipelineSampling.settings`; the model by a hash of its weights, its scheduler by a hash of its
  config). A rerun with the same settings
  draws only the missing indices; other settings are refused, naming the differences, unless
  ``overwrite``;
- with ``npz``: ``samples_{N}x{H}x{W}x{C}.npz``, a uint8 array ``arr_0`` of shape (N, H, W, C), the format
  that openai/improved-diffusion's and guided-diffusion's evaluators read (shared/DESIGN.md). Once it is
  written, the folder's ``.npz`` of a smaller N, which it supersedes, goes; one of a larger N stays.

A failed write (a full disk, an I/O error) raises :class:`SampleWriteError` naming the file; the files
already written stay, and a rerun fills in the rest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from hf_ddpm.core.class_layout import num_classes_of
from hf_ddpm.core.saving import write_atomically
from hf_ddpm.data.image_grid import save_npz_atomically, save_png_atomically, to_uint8

from .samplers import image_class_labels
from .sharding import ProcessGroup, image_generator
from .unet_speed import unet_dtype, unet_image_shape

__all__ = [
    "CONFIG_NAME",
    "SampleFolderJob",
    "SampleWriteError",
    "image_name",
    "INFORMATION_ONLY",
    "PipelineSampling",
    "npz_name",
    "read_samples",
    "write_sample_folder",
]

CONFIG_NAME = "sample_config.json"
# Settings recorded for the reader but not compared on resume: the same weights reached through another
# path (a symlink, a copy, the Hub cache) are the same model, which unet_sha256 recognises.
INFORMATION_ONLY = frozenset({"model"})
_IMAGE_FILE = re.compile(r"^(\d{6,})\.png$")
_NPZ_FILE = re.compile(r"^samples_(\d+)x\d+x\d+x\d+\.npz$")


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
        flag: the command's flag for the folder, which its errors name (``hf-ddpm evaluate``:
            ``--samples-dir``).
        overwrite_flag: the command's flag for ``overwrite``, which a refusal suggests; None where the
            command has none.
    """

    output_dir: Path
    num_images: int
    batch_size: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    npz: bool = False
    overwrite: bool = False
    flag: str = "--output-dir"
    overwrite_flag: str | None = "--overwrite"

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
        # The OS's words for the errno: the error of an atomic writer names its partial file or the path.
        reason = os.strerror(error.errno) if error.errno else str(error)
        failure = SampleWriteError(f"could not write {path}: {reason}")
        failure.errno = error.errno
        raise failure from error


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The compared settings that differ, in words; other weights are named by where they came from."""
    keys = sorted((set(recorded) | set(wanted)) - INFORMATION_ONLY)
    lines = []
    for key in keys:
        was, now = recorded.get(key), wanted.get(key)
        if was == now:
            continue
        if key == "scheduler_config_sha256":
            lines.append(
                f"the scheduler config differs (sha256 {str(was)[:12]} in the folder, {str(now)[:12]} "
                "now: another eps_second_moment from hf-ddpm calibrate, or other betas, clipping, "
                "prediction or variance type)"
            )
        elif key == "unet_sha256":
            lines.append(
                f"the model's weights: {recorded.get('model')} (folder, unet_sha256 {str(was)[:12]}) vs "
                f"{wanted.get('model')} (now, unet_sha256 {str(now)[:12]})"
            )
        elif key == "class_label":
            every = "every class in turn"
            was, now = (every if v is None else v for v in (was, now))
            lines.append(f"class_label {was} (folder) vs {now} (now)")
        else:
            lines.append(f"{key} {was!r} (folder) vs {now!r} (now)")
    return lines


def _json_kind(value: Any) -> str:
    """A parsed JSON value's type as JSON names it."""
    kinds = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return kinds.get(type(value), "a number")


def _recorded_settings(config: Path, compared: set[str]) -> dict[str, Any]:
    """The ``settings`` object of a folder's ``sample_config.json``, holding every ``compared`` key; an
    OSError, or a ValueError saying what the file holds instead."""
    record = json.loads(config.read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"it holds {_json_kind(record)}, not an object")
    if "settings" not in record:
        raise ValueError('it has no "settings"')
    settings = record["settings"]
    if not isinstance(settings, dict):
        raise ValueError(f'its "settings" is {_json_kind(settings)}, not an object')
    missing = sorted(compared - set(settings))
    if missing:
        raise ValueError(
            f"its settings lack {', '.join(missing)}: written by an older hf-ddpm, or edited"
        )
    return settings


def _check_folder(job: SampleFolderJob) -> None:
    """Refuse a folder that is not one, or that holds images made with other settings."""
    folder, flag = job.output_dir, job.flag
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a folder")
    remedy = (
        f"pass {job.overwrite_flag} to replace them, or choose another {flag}"
        if job.overwrite_flag
        else f"choose another {flag}, or remove this one"
    )
    config = folder / CONFIG_NAME
    if job.overwrite or not config.exists():
        if not job.overwrite and any(_IMAGE_FILE.match(p.name) for p in _listing(folder)):
            raise ValueError(
                f"{flag} {folder} holds numbered PNGs but no {CONFIG_NAME}, so their settings are "
                f"unknown: {remedy}"
            )
        return
    wanted = json.loads(json.dumps(dict(job.settings)))
    try:
        recorded = _recorded_settings(config, set(wanted) - INFORMATION_ONLY)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{flag} {folder}: {CONFIG_NAME} cannot be read ({error}): {remedy}"
        ) from error
    differences = _differences(recorded, wanted)
    if differences:
        raise ValueError(
            f"{flag} {folder} holds images made with other settings: {'; '.join(differences)}. "
            f"{remedy[0].upper()}{remedy[1:]}"
        )


def _listing(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _missing_indices(folder: Path, num_images: int) -> list[int]:
    present = {path.name for path in _listing(folder)}
    return [i for i in range(num_images) if image_name(i) not in present]


def _prepare_folder(job: SampleFolderJob) -> None:
    """On the main process: create the folder, clear it under ``overwrite``, record the settings."""
    folder = job.output_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{job.flag} {folder}: cannot create it ({error})") from error
    for path in _listing(folder):
        stale = path.name.startswith(".") and path.name.endswith(".partial")
        replaced = job.overwrite and (_IMAGE_FILE.match(path.name) or _NPZ_FILE.match(path.name))
        if stale or replaced:
            path.unlink()
    record = {"settings": dict(job.settings), "num_images": job.num_images}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    try:
        _write_file(folder / CONFIG_NAME, lambda: write_atomically(folder / CONFIG_NAME, text))
    except SampleWriteError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # the folder is not writable
            raise ValueError(f"{job.flag} {folder}: cannot write there ({error})") from error
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
    _write_file(path, lambda: save_npz_atomically(images, path))
    # An .npz of an earlier, smaller N would pass for the folder's images, and the new one holds all of
    # it; one of a larger N holds images this one lacks (a 10,000-image .npz of a 50,000-image folder),
    # so it stays. Only evaluator-named files of this folder go.
    for stale in _listing(folder):
        match = _NPZ_FILE.match(stale.name)
        if match and int(match.group(1)) < num_images:
            stale.unlink()
    return path


def write_sample_folder(
    draw: Callable[[Sequence[int]], np.ndarray],
    job: SampleFolderJob,
    group: ProcessGroup | None = None,
    before_drawing: Callable[[SampleFolderReport], None] | None = None,
) -> SampleFolderReport:
    """Fill ``job.output_dir`` with the images ``0..N-1`` that it lacks, split over ``group``'s processes.

    Args:
        draw: ``draw(indices)`` returns the images of those indices as uint8 (B, H, W, C); image ``i``
            must depend only on ``i`` and the job's settings (:class:`PipelineSampling`).
        job: the folder, N, the batch size, the settings and the options.
        group: the processes sharing the work (:func:`~hf_ddpm.sampling.sharding.process_group`); one
            process when None.
        before_drawing: called on every process once the folder is checked and prepared, before the first
            image is drawn, with what the run will do (``npz_path`` still None): where a command announces
            its work, so that a refused folder is the only thing it prints.

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

    # Only the missing indices are split, so that the processes share what is left evenly. The main
    # process lists them for all: a process listing later could see images another has already written.
    missing: list[int] = group.broadcast(
        _missing_indices(folder, job.num_images) if group.is_main else None
    )
    if before_drawing is not None:
        before_drawing(
            SampleFolderReport(
                drawn=len(missing), kept=job.num_images - len(missing), npz_path=None
            )
        )
    todo = group.shard(missing)
    batches = [
        todo[start : start + job.batch_size] for start in range(0, len(todo), job.batch_size)
    ]
    rounds = group.max(len(batches))
    bar = tqdm(
        total=job.num_images,
        initial=job.num_images - len(missing),
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
    return SampleFolderReport(
        drawn=len(missing), kept=job.num_images - len(missing), npz_path=npz_path
    )


@dataclass(frozen=True)
class PipelineSampling:
    """How ``pipeline`` draws the images of a sample folder: called as ``draw(indices)`` by
    :func:`write_sample_folder`, and the one source of the :meth:`settings` the folder records, so that
    ``hf-ddpm sample --output-dir`` and ``hf-ddpm evaluate --samples-dir`` describe the same images alike.

    Image ``i`` comes from :func:`~hf_ddpm.sampling.sharding.image_generator` ``(seed, i)``. A
    class-conditional model draws ``class_label``, or every class in turn when it is None
    (:func:`~hf_ddpm.sampling.samplers.image_class_labels`); an unconditional one draws without labels.

    Attributes:
        pipeline: the pipeline, with the scheduler to sample with and its UNet as it will run
            (:func:`~hf_ddpm.sampling.unet_speed.apply_unet_speed` applied).
        sampler: that scheduler in words (:attr:`~hf_ddpm.sampling.samplers.SamplingChoice.description`).
        num_inference_steps, seed, class_label, guidance_scale: as ``hf-ddpm sample``'s flags.
    """

    pipeline: Any
    sampler: str
    num_inference_steps: int
    seed: int
    class_label: int | None = None
    guidance_scale: float = 1.0

    def __call__(self, indices: Sequence[int]) -> np.ndarray:
        """The images of ``indices`` as uint8 (B, H, W, C), from one pipeline call."""
        classes = num_classes_of(getattr(self.pipeline.unet.config, "num_class_embeds", None))
        labels = image_class_labels(indices, classes, self.class_label)
        kwargs: dict[str, Any] = {}
        if labels is not None:
            kwargs = {"class_labels": labels, "guidance_scale": self.guidance_scale}
        images = self.pipeline(
            batch_size=len(indices),
            generator=[image_generator(self.seed, i) for i in indices],
            num_inference_steps=self.num_inference_steps,
            output_type="np",
            **kwargs,
        ).images
        return to_uint8(images)

    def settings(self) -> dict[str, Any]:
        """Everything the images depend on besides their index, for :class:`SampleFolderJob`: the model by
        the content of its weights (``unet_sha256``, and ``covariance_head_sha256``, None without a
        covariance head), the sampler and its scheduler's config (``scheduler_config_sha256``: the
        model's eps_second_moment, betas, clipping, prediction and variance type), steps, seed, class
        label, guidance, image shape and the dtype the UNet runs in; and, for information only
        (:data:`INFORMATION_ONLY`), where the model was loaded from."""
        pipeline = self.pipeline
        # The dtype is compared because it changes the precision of the UNet's arithmetic, and so what
        # the images are. channels_last and torch.compile are not: they run the same float32 (or
        # autocast) arithmetic in another order, which changes float rounding only, as the batch size,
        # the number of processes and the device do, none of which a resume must match.
        settings: dict[str, Any] = {
            "model": _model_source(pipeline),
            "unet_sha256": _weights_sha256(pipeline.unet),
            "sampler": self.sampler,
            "scheduler_config_sha256": _config_sha256(pipeline.scheduler),
            "num_inference_steps": self.num_inference_steps,
            "seed": self.seed,
            "class_label": self.class_label,
            "guidance_scale": self.guidance_scale,
            "image_shape": list(unet_image_shape(pipeline.unet)),
            "dtype": unet_dtype(pipeline.unet),
        }
        # Recorded as None without a head, so that every folder records the same keys and one that
        # lacks any is known to be incomplete.
        head = getattr(pipeline, "covariance_head", None)
        settings["covariance_head_sha256"] = None if head is None else _weights_sha256(head)
        return settings


def _model_source(pipeline: Any) -> str | None:
    """Where ``pipeline`` was loaded from (diffusers' ``_name_or_path``), a local folder as an absolute
    path; None for a pipeline built in memory."""
    source = getattr(pipeline.config, "_name_or_path", None)
    if not source:
        return None
    return str(Path(source).resolve()) if Path(source).exists() else str(source)


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


def _config_sha256(scheduler: Any) -> str:
    """A hash of ``scheduler``'s config (diffusers' JSON of it, keys sorted): recalibrating a model in place
    (a new eps_second_moment), or editing its betas, clipping, prediction or variance type, changes it.
    diffusers' bookkeeping keys (``_class_name``, ``_diffusers_version``, ...) are left out: the sampler
    is recorded by name, and they change no image."""
    config = json.loads(scheduler.to_json_string())
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()


def _weights_sha256(module: Any) -> str:
    """A hash of ``module``'s weights (names and float32 values): what a sample folder records of the model,
    so that the same weights are recognised wherever they are loaded from, and a model retrained into the
    same folder is told apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
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
