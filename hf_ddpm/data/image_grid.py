"""One near-square grid image from a batch, as training, sampling and evaluation all save."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray) -> Image.Image:
    """A near-square grid of NHWC images with values in [0, 1]; empty cells stay black."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, image in enumerate(np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_png_atomically(picture: Image.Image, path: str | Path) -> Path:
    """Write ``picture`` to ``path`` as a PNG through a temporary file in the same folder (created if
    needed), so that a reader never sees half a PNG and a crash leaves any old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    picture.save(partial, format="PNG")
    partial.replace(path)
    return path
