"""Tensors to images for display, and an upload to the model's x_0.

An upload becomes x_0 through ``hf_ddpm.data.image_transform.ImageTransform``, the transform of
``hf-ddpm train`` and ``hf-ddpm evaluate``, where hf_ddpm is importable; without it (a Space made from
this folder alone) it is only squeezed to the model's size (``ResizeOnly``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr
import numpy as np
import PIL.Image
import torch
from PIL import Image

try:  # hf_ddpm installed, or copied beside app.py by `hf-ddpm space`
    from hf_ddpm.data.image_transform import ImageTransform
except ImportError:  # a Space made from spaces_app/ alone: see ResizeOnly
    ImageTransform = None

Transform = Callable[[Image.Image], torch.Tensor]
UploadComponent = TypeVar("UploadComponent", gr.Image, gr.ImageEditor)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8; values outside [-1, 1] are clipped for display.

    One channel is shown grey and three as RGB; other counts show their first three channels, or
    the first one in grey."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def pipeline_images_to_uint8(images: np.ndarray) -> np.ndarray:
    """A pipeline's ``output_type="np"`` result, (B, H, W, C) in [0, 1], as (B, H, W, 3) uint8."""
    images = (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = images.repeat(3, axis=-1)
    return images[..., :3]


def tile(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) -> one near-square grid image with a 1-pixel gutter."""
    count, height, width, _ = images.shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[
            r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width
        ] = image
    return grid


@dataclass(frozen=True)
class ResizeOnly:
    """Without hf_ddpm there is no training transform to share: the Forward and Edit tabs get an upload
    squeezed to the model's size. The Likelihood tab refuses instead."""

    channels: int
    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``image`` as (C, size, size) in [-1, 1], resized (bicubic) without keeping its aspect."""
        pil = image.convert("L" if self.channels == 1 else "RGB")
        if pil.size != (self.size, self.size):
            pil = pil.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(pil, dtype=np.float32).reshape(self.size, self.size, self.channels)
        return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


@dataclass(frozen=True)
class NoUploads:
    """The upload transform of a model whose images are neither grey (1 channel) nor RGB (3)."""

    channels: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        raise gr.Error(
            f"This model works on {self.channels}-channel images; an uploaded picture can only be "
            "used with a 1-channel (grey) or 3-channel (RGB) model."
        )


def upload_transform(channels: int, size: int, num_bins: int) -> Transform:
    """PIL image -> (channels, size, size) in [-1, 1], as training prepares data where it can."""
    if channels not in (1, 3):
        # Generation still works; only an uploaded picture has no meaning for such a model.
        return NoUploads(channels)
    if ImageTransform is None:
        return ResizeOnly(channels, size)
    return ImageTransform.for_channels(channels, size, num_bins)


def image_to_tensor(image: np.ndarray, transform: Transform) -> torch.Tensor:
    """An uploaded image -> (1, C, size, size) in [-1, 1], as training and evaluation prepare data."""
    return transform(Image.fromarray(np.asarray(image)))[None]


_DECODING_ERRORS = (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError)


def _upload_name(payload: object) -> str | None:
    """The uploaded file's own name, from an Image's payload or an ImageEditor's background."""
    name = getattr(payload, "orig_name", None)
    return name or getattr(getattr(payload, "background", None), "orig_name", None)


def readable_upload(component: UploadComponent) -> UploadComponent:
    """``component`` (a ``gr.Image`` or ``gr.ImageEditor``) with PIL's decoding errors (a text file
    named .png, a truncated picture) turned into a message naming the file, not a bare error badge.

    Its ``preprocess`` is wrapped on the instance: a subclass would make Gradio write a .pyi stub
    beside this file at import, which fails in a read-only install."""
    preprocess = component.preprocess

    def checked(payload: object) -> Any:
        try:
            return preprocess(payload)
        except _DECODING_ERRORS as err:
            name = _upload_name(payload)
            shown = f"`{name}`" if name else "The uploaded file"
            # PIL's own words name the server's temporary copy, which means nothing to the user.
            detail = (
                "not a format PIL knows" if isinstance(err, PIL.UnidentifiedImageError) else err
            )
            raise gr.Error(
                f"{shown} is not an image this Space can read ({detail}). "
                "Upload a PNG, JPEG or WebP picture.",
                print_exception=False,
            ) from err

    component.preprocess = checked
    return component
