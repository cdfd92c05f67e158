"""Folders of small colour pictures in class sub-folders, as a user's photos would come: mixed sizes
and formats (PNG and JPEG), one shape and colour per class, so that the classes differ visibly."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# class -> (fill colour, shape): red discs and blue squares on a light ground.
CLASSES = {"cats": ((200, 40, 30), "disc"), "dogs": ((30, 60, 200), "square")}


def picture(kind: str, colour: tuple[int, int, int], size: tuple[int, int], rng) -> Image.Image:
    """One ``size`` (width, height) RGB picture: a ``kind`` shape of ``colour`` at a random place."""
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    side = int(min(size) * rng.uniform(0.4, 0.7))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    box = (x, y, x + side - 1, y + side - 1)
    (draw.ellipse if kind == "disc" else draw.rectangle)(box, fill=colour)
    return image


def class_folders(root: Path, per_class: int = 4, classes=CLASSES, seed: int = 0) -> Path:
    """``root/<class>/<n>.png|jpg`` for each class of ``classes``; sizes vary from 10x8 to 16x14."""
    rng = np.random.default_rng(seed)
    for name, (colour, kind) in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(10, 17)), int(rng.integers(8, 15)))
            suffix = "jpg" if i % 2 else "png"
            picture(kind, colour, size, rng).save(folder / f"{name} {i:02d}.{suffix}")
    return root
