"""One image as the model sees it: the per-image transform of training, evaluation and the Space.

``hf-ddpm train`` and ``hf-ddpm evaluate`` apply it to every dataset image (through
:func:`hf_ddpm.data.image_datasets.preprocess`), and the Space applies it to an uploaded image, so that the Space's
bits/dim for an image is the number the evaluation gives for the same image. The Space gets this file
copied beside its app by ``hf-ddpm space``, so it imports only numpy, torch, PIL and the bundled sets'
registry.

The steps, for one PIL image:

1. convert to grey (``"L"``) or RGB, as the model's data is;
2. resize (bilinear) so that the shorter side is ``resolution``, then center-crop to a square;
3. scale 0..255 to [-1, 1], snapping data with fewer than 256 levels onto its ``num_bins`` grid
   ``-1, -1 + 2 / (num_bins - 1), ..., 1``, where the discretised decoder L_0 puts its bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .bundled_datasets import BUNDLED_DATASETS

MODES = ("L", "RGB")
_8_BIT_BINS = 256


def dataset_num_bins(dataset: str | None) -> int:
    """Intensity levels of a data source named as ``hf-ddpm train --dataset`` takes it.

    The bundled sets have their own (:data:`.bundled_datasets.BUNDLED_DATASETS`); a Hub dataset, an image
    folder (``None``) or anything else is taken as 8-bit images.
    """
    bundled = BUNDLED_DATASETS.get(dataset) if dataset is not None else None
    return _8_BIT_BINS if bundled is None else bundled.num_bins


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> (C, resolution, resolution) float32 tensor in [-1, 1] (see the module docstring).

    A frozen dataclass rather than a closure, so DataLoader workers started with ``spawn`` (macOS,
    Windows) can receive it.

    Attributes:
        mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        resolution: side length of the square result.
        num_bins: intensity levels of the data, 2..256.

    Raises:
        ValueError: an unknown mode, a resolution below 1 or ``num_bins`` outside 2..256.
    """

    mode: str
    resolution: int
    num_bins: int = _8_BIT_BINS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {self.resolution}")
        if not 2 <= self.num_bins <= _8_BIT_BINS:
            raise ValueError(f"num_bins must be from 2 to {_8_BIT_BINS}, got {self.num_bins}")

    @classmethod
    def for_channels(
        cls, channels: int, resolution: int, num_bins: int = _8_BIT_BINS
    ) -> ImageTransform:
        """The transform for a model with ``channels`` input channels (1: grey, 3: RGB)."""
        modes = {1: "L", 3: "RGB"}
        if channels not in modes:
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        return cls(modes[channels], resolution, num_bins)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``image`` (any PIL mode) as a (C, resolution, resolution) float32 tensor in [-1, 1]."""
        return _to_tensor(
            _resize_center_crop(image.convert(self.mode), self.resolution), self.num_bins
        )


def _resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize (bilinear) so the shorter side is ``resolution``, then crop the centre square.

    An image already ``resolution`` on its shorter side is only cropped, so its pixels stay exact.
    """
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def _to_tensor(image: Image.Image, num_bins: int) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    if num_bins != _8_BIT_BINS:
        levels = num_bins - 1
        array = np.rint(array * levels) / levels
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array * 2.0 - 1.0))
