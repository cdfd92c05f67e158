"""Images and masks given to the edit pipelines, turned into the tensors the chain works on.

Accepted, as in diffusers' image pipelines: a PIL image, a numpy array (H, W), (H, W, C) or (B, H, W, C)
in [0, 1], a torch tensor (C, H, W) or (B, C, H, W) in [-1, 1] (a mask tensor: (H, W), (1, H, W) or
(B, 1, H, W) in [0, 1]), or a list of PIL images or arrays. Anything else, or a size or channel count
the model does not take, is a ValueError that names what is expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

ImageArg = PIL.Image.Image | np.ndarray | torch.Tensor | list[Any]


def _pil_channels(image: PIL.Image.Image) -> int:
    bands = image.getbands()
    return len(bands) - ("A" in bands)


def _pil_to_array(image: PIL.Image.Image, channels: int | None, name: str) -> np.ndarray:
    """(H, W, C) float array in [0, 1]; ``channels=None`` reads a mask (any mode, as luminance)."""
    if channels is None:
        return np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255.0
    have = _pil_channels(image)
    # A palette image may hold grey or colour alike: it converts to either.
    if have != channels and image.mode not in ("P", "PA"):
        mode = "L" if channels == 1 else "RGB"
        raise ValueError(
            f"{name} has {have} channel(s) (PIL mode {image.mode!r}), but this model takes {channels}-channel "
            f"images: convert it first, e.g. {name}.convert({mode!r})."
        )
    return np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0


def _as_nchw_unit(value: ImageArg, name: str, channels: int | None) -> torch.Tensor:
    """(B, C, H, W) float32 in [0, 1], from any accepted container; C is unchecked here."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().float().cpu()
        if channels is None:
            tensor = {2: tensor[None, None], 3: tensor[None]}.get(tensor.ndim, tensor)
        elif tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4:
            raise ValueError(
                f"{name} as a tensor must have shape (C, H, W) or (B, C, H, W)"
                f"{' (a mask also (H, W))' if channels is None else ''}, got {tuple(value.shape)}."
            )
        low, high = (0.0, 1.0) if channels is None else (-1.0, 1.0)
        if tensor.numel() and (tensor.min() < low or tensor.max() > high):
            raise ValueError(
                f"{name} as a tensor must lie in [{low:g}, {high:g}], got values in "
                f"[{tensor.min():.3g}, {tensor.max():.3g}]."
            )
        return tensor if channels is None else (tensor + 1.0) / 2.0
    if isinstance(value, PIL.Image.Image):
        arrays = [_pil_to_array(value, channels, name)]
    elif isinstance(value, np.ndarray):
        arrays = [value] if value.ndim in (2, 3) else list(value)
    elif isinstance(value, list | tuple) and value:
        arrays = [
            _pil_to_array(item, channels, f"{name}[{i}]")
            if isinstance(item, PIL.Image.Image)
            else item
            for i, item in enumerate(value)
        ]
    else:
        raise ValueError(
            f"{name} must be a PIL image, a numpy array in [0, 1], a torch tensor or a non-empty list of "
            f"images, got {type(value).__name__}."
        )
    batch = []
    for array in arrays:
        if not isinstance(array, np.ndarray):
            raise ValueError(
                f"{name} lists must hold PIL images or numpy arrays, got {type(array).__name__}."
            )
        array = array.astype(np.float32)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ValueError(
                f"{name} as a numpy array must have shape (H, W), (H, W, C) or (B, H, W, C), got "
                f"{tuple(np.shape(value))}."
            )
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError(
                f"{name} as a numpy array must lie in [0, 1], got values in "
                f"[{array.min():.3g}, {array.max():.3g}]."
            )
        batch.append(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
    shapes = {tuple(t.shape) for t in batch}
    if len(shapes) > 1:
        raise ValueError(f"{name}: all images must have one shape, got {sorted(shapes)}.")
    return torch.stack(batch)


def _check_size(tensor: torch.Tensor, name: str, height: int, width: int, expected: str) -> None:
    if tuple(tensor.shape[2:]) != (height, width):
        raise ValueError(
            f"{name} is {tensor.shape[3]}x{tensor.shape[2]} pixels (W x H), but this model takes "
            f"{width}x{height} images: expected shape {expected}. Resize it first."
        )


def prepare_images(
    image: ImageArg, channels: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """``image`` as a (B, channels, height, width) float32 tensor in [-1, 1], the model's data space."""
    tensor = _as_nchw_unit(image, "image", channels)
    _check_size(tensor, "image", height, width, f"({channels}, {height}, {width})")
    if tensor.shape[1] != channels:
        raise ValueError(
            f"image has {tensor.shape[1]} channel(s), but this model takes {channels}: expected shape "
            f"({channels}, {height}, {width}) as a tensor, or (H, W{', C' if channels > 1 else ''}) as "
            "an array."
        )
    return (tensor * 2.0 - 1.0).to(device)


def prepare_masks(
    mask_image: ImageArg,
    height: int,
    width: int,
    device: torch.device,
    name: str = "mask_image",
    instead: str = "sample from scratch with HFDDPMPipeline",
) -> torch.Tensor:
    """``mask_image`` as a (B, 1, height, width) float32 tensor of 0s and 1s, 1 where new content goes
    (white), thresholded at 0.5. A mask with several channels must have them equal (a grey image).

    The errors call the mask ``name`` and say to ``instead`` for a mask that keeps nothing: the
    pipeline's argument and class by default, a command line's flag and command where it checks first."""
    tensor = _as_nchw_unit(mask_image, name, None)
    _check_size(tensor, name, height, width, f"({height}, {width})")
    if tensor.shape[1] != 1:
        if not bool((tensor == tensor[:, :1]).all()):
            raise ValueError(
                f"{name} has {tensor.shape[1]} different channels; pass one channel, shape "
                f"({height}, {width}), white (1) where new content goes."
            )
        tensor = tensor[:, :1]
    masks = (tensor >= 0.5).float()
    filled = masks.flatten(1).mean(1)
    for i, fraction in enumerate(filled.tolist()):
        which = f"{name} {i}" if len(filled) > 1 else name
        if fraction == 0.0:
            raise ValueError(
                f"{which} is all black: nothing to fill. Paint white (1) where new content goes."
            )
        if fraction == 1.0:
            raise ValueError(
                f"{which} is all white: nothing of the image is kept. Leave black (0) the pixels to "
                f"keep, or {instead}."
            )
    return masks.to(device)


def broadcast_batch(sizes: dict[str, int]) -> int:
    """The common batch size of inputs holding 1 or B images each, or a ValueError naming the counts."""
    batch = max(sizes.values())
    if any(size not in (1, batch) for size in sizes.values()):
        raise ValueError(
            f"the inputs give different numbers of images: {sizes}; give each 1 or the same count."
        )
    return batch
