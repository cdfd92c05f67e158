"""One near-square grid image from a batch, as training, sampling and evaluation all save, and the 8-bit
conversion and atomic PNG and .npz writes that every saved sample goes through."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
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


def _through_partial(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(partial)`` to a hidden file beside ``path`` (its folder created if needed), then
    ``os.replace`` it onto ``path``: a reader never sees half a file and a crash leaves any old file
    whole. A failed write (a full disk, an I/O error) removes the partial file and raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # core/saving.partial_path's naming (data/ imports no other subpackage, so the rule is restated).
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return path


def save_png_atomically(picture: Image.Image, path: str | Path) -> Path:
    """Write ``picture`` to ``path`` as a PNG, atomically (a hidden partial file, then a rename)."""
    return _through_partial(path, lambda partial: picture.save(partial, format="PNG"))


def save_npz_atomically(images: np.ndarray, path: str | Path) -> Path:
    """Write ``images`` to ``path`` as the ``arr_0`` of an .npz (the evaluators' format), atomically (a
    hidden partial file, then a rename)."""

    def write(partial: Path) -> None:
        with open(partial, "wb") as f:  # a file object: np.savez would add .npz to a path
            np.savez(f, images)

    return _through_partial(path, write)
