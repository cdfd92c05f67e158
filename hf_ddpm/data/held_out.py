"""A dataset split read as a model's held-out (or calibration) images, and the data options of the
commands that read one beside a model (``hf-ddpm evaluate``, ``hf-ddpm calibrate``): the same options and
preprocessing as ``hf-ddpm train``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm


@dataclass
class ReferenceData:
    """Held-out images for the NLL and the reference side of the Fréchet distances.

    Attributes:
        images: (N, C, H, W) in [-1, 1], on the data's ``num_bins`` grid, at the model's resolution.
        num_bins: intensity levels of the data (256 for 8-bit images); the discretised decoder uses it.
        name: dataset name, Hub id or folder (part of the statistics cache key).
        split: the split the images come from.
    """

    images: torch.Tensor
    num_bins: int
    name: str
    split: str

    @property
    def resolution(self) -> int:
        """Image side length."""
        return int(self.images.shape[-1])


def load_reference(
    resolution: int,
    dataset: str | None = "mnist-5k",
    train_data_dir: str | None = None,
    split: str = "test",
    image_column: str | None = None,
    max_images: int | None = None,
    skip_bad_images: bool = False,
) -> ReferenceData:
    """Read a dataset split with ``hf_ddpm.data.image_datasets`` (the same options and preprocessing as ``train``).

    Args:
        resolution: side length to resize and center-crop to; the model's ``sample_size``.
        dataset, train_data_dir, split, image_column: as for :func:`hf_ddpm.data.image_datasets.load_image_dataset`.
        max_images: use only the first ``max_images`` images of the split.
        skip_bad_images: leave out the files of ``train_data_dir`` that cannot be decoded instead of
            raising (``--skip-bad-images``).
    """
    from .image_datasets import collate, load_image_dataset, preprocess

    if train_data_dir is not None:
        _check_folder_split(train_data_dir, split)
    data = load_image_dataset(
        dataset,
        train_data_dir,
        split=split,
        image_column=image_column,
        skip_bad_images=skip_bad_images,
    )
    count = len(data) if max_images is None else min(max_images, len(data))
    processed = preprocess(data, resolution)
    examples = [processed[i] for i in tqdm(range(count), desc=f"loading {split}", leave=False)]
    if not examples:
        raise ValueError(f"the {split!r} split of {data.name!r} has no images")
    images = collate(examples)["pixel_values"]
    return ReferenceData(images=images, num_bins=data.num_bins, name=data.name, split=split)


def _check_folder_split(train_data_dir: str, split: str) -> None:
    """An image folder has only the splits its sub-folders name (most have just ``train``): say which."""
    import datasets

    if not Path(train_data_dir).is_dir():
        return  # load_image_dataset names the missing folder
    splits = datasets.get_dataset_split_names("imagefolder", data_dir=train_data_dir)
    if split not in splits:
        hint = f"pass --split {splits[0]}" if len(splits) == 1 else f"pass --split one of {splits}"
        raise ValueError(
            f"--split {split}: the image folder {train_data_dir} has no {split!r} split, only "
            f"{splits}; {hint} (a split the model was trained on makes the NLL and Fréchet distances "
            f"optimistic), or put held-out images in a {split}/ sub-folder"
        )


def add_data_arguments(
    parser: argparse.ArgumentParser, split: str, split_help: str
) -> argparse._ArgumentGroup:
    """The data options that commands reading a model and a dataset share, as
    :func:`load_reference` takes them; returns the data group for more options."""
    data = parser.add_argument_group("data (as for `hf-ddpm train`)")
    data.add_argument(
        "--dataset",
        default=None,
        help="bundled name or Hub dataset id (default: the data the model's train_config.json names)",
    )
    data.add_argument(
        "--train-data-dir", default=None, help="a local image folder instead of --dataset"
    )
    data.add_argument("--split", default=split, help=f"{split_help} (default: {split})")
    data.add_argument("--image-column", default=None, help="the dataset's image column")
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out the files of --train-data-dir that cannot be read (listed in the log) "
        "instead of stopping",
    )
    return data
