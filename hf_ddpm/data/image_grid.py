"""One near-square grid image from a batch, as training, sampling and evaluation all save, and the 8-bit
conversion and atomic PNG write that every saved sample goes through."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images with values in [0, 1] as 8-bit levels, rounded to the nearest (the evaluators' uint8)."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def image_grid(images: np.ndarray) -> Image.Image:
    """A near-square grid of NHWC images with values in [0, 1]; empty cells stay black."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, image in enumerate(to_uint8(images)):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_png_atomically(picture: Image.Image, path: str | Path) -> Path:
    """Write ``picture`` to ``path`` as a PNG through a temporary file in the same folder (created if
    needed), so that a reader never sees half a PNG and a crash leaves any old file whole. A failed
    write (a full disk, an I/O error) removes the temporary file and raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        picture.save(partial, format="PNG")
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return path
