"""One image as the model sees it: the per-image transform of training, evaluation and the Space.

``hf-ddpm train`` and ``hf-ddpm evaluate`` apply it to every dataset image (through
:func:`hf_ddpm.data.image_datasets.preprocess`), and the Space applies it to an uploaded image, so that the Space's
bits/dim for an image is the number the evaluation gives for the same image. The Space gets this file
copied beside its app by ``hf-ddpm space``, so it imports only numpy, torch, PIL and the bundled sets'
registry.

The steps, for one PIL image:

0. turn it upright as its EXIF orientation says, and bring it to 8 bits per channel
   (:func:`to_eight_bit`: 16-bit and float images scaled, transparency composited over white, modes whose
   range cannot be known refused by name);
1. convert to grey (``"L"``) or RGB, as the model's data is;
2. resize (bilinear) so that the shorter side is ``resolution``, then center-crop to a square;
3. scale 0..255 to [-1, 1], snapping data with fewer than 256 levels onto its ``num_bins`` grid
   ``-1, -1 + 2 / (num_bins - 1), ..., 1``, where the discretised decoder L_0 puts its bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .bundled_datasets import BUNDLED_DATASETS

MODES = ("L", "RGB")
_8_BIT_BINS = 256
# PIL modes that hold one grey value per pixel (the alpha of LA / La is composited away).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Modes at 8 bits per channel or fewer, without alpha, that Pillow converts to L and RGB exactly.
_PILLOW_CONVERTS = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"})
_WITH_ALPHA = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_EXIF_ORIENTATION = 0x0112


def _from_array(values: np.ndarray, full_scale: float) -> Image.Image:
    """Grey values on 0..``full_scale`` as an 8-bit ``"L"`` image: round(v * 255 / full_scale)."""
    return Image.fromarray(
        np.rint(values.astype(np.float64) * (255.0 / full_scale)).astype(np.uint8)
    )


def to_eight_bit(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation applied) in mode ``"L"`` (grey) or ``"RGB"``, 8 bits per channel.

    - 8-bit modes without alpha (1, L, P, RGB, CMYK, YCbCr, ...): Pillow's conversions (CMYK without a
      colour profile as R = (255 - C)(255 - K) / 255);
    - with alpha (LA, PA, RGBA, a palette with a transparent colour, ...): composited over white,
      c * a + 255 * (1 - a), as a viewer shows it on a white page;
    - 16-bit grey (I;16 and its byte orders): v * 255 / 65535, rounded; Pillow's own conversion clips
      at 255 instead and makes most 16-bit images white;
    - 32-bit integers (I): 8-bit values as they are when all are in 0..255 (as Pillow reads them),
      else 16-bit values in 0..65535, scaled as I;16; 32-bit floats (F): values must be in [0, 1],
      scaled by 255.

    Raises:
        ValueError: a mode not listed, or I / F values outside the range that says how to scale them;
            the message names the mode.
    """
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _PILLOW_CONVERTS:
        return image.convert("L" if mode in GREY_MODES else "RGB")
    if mode in _WITH_ALPHA:
        grey = mode in GREY_MODES
        rgba = np.asarray(image.convert("LA" if grey else "RGBA"), dtype=np.float64)
        colour, alpha = rgba[..., :-1], rgba[..., -1:] / 255.0
        over_white = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return Image.fromarray(over_white[..., 0] if grey else over_white)
    values = np.asarray(image)
    if mode in _SIXTEEN_BIT:
        return _from_array(values, 65535.0)
    if mode == "I":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"image mode 'I' (32-bit integers) with values {low}..{high}: only 0..65535 "
                "(16-bit) can be scaled to 8 bits; convert it to 8-bit L or RGB first"
            )
        # Mode I carries no bit depth (Pillow makes it of int32 arrays and integer TIFFs), and Pillow's
        # own convert("L") reads its values as 8-bit: values that all fit 0..255 are kept as they are
        # (200 stays 200, not 200 * 255 / 65535 = 1); any value above 255 makes it a 16-bit image.
        # Only a 16-bit image darker than 256 / 65535 everywhere is read wrongly (as 8-bit); I;16
        # images are always 16-bit.
        return _from_array(values, 255.0 if high <= 255 else 65535.0)
    if mode == "F":
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
            raise ValueError(
                f"image mode 'F' (32-bit floats) with values {values.min():g}..{values.max():g}: "
                "only values in [0, 1] can be scaled to 8 bits; convert it to 8-bit L or RGB first"
            )
        return _from_array(values, 1.0)
    raise ValueError(
        f"image mode {mode!r} is not supported; supported: "
        f"{', '.join(sorted(_PILLOW_CONVERTS | _WITH_ALPHA | _SIXTEEN_BIT | {'I', 'F'}))}. "
        "Convert it to 8-bit L or RGB first"
    )


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
        """``image`` (a mode :func:`to_eight_bit` takes) as a (C, resolution, resolution) float32 tensor
        in [-1, 1]."""
        eight_bit = to_eight_bit(image).convert(self.mode)
        return _to_tensor(_resize_center_crop(eight_bit, self.resolution), self.num_bins)


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
