"""Data ingestion of an image folder: every image is opened and fully decoded once, before anything runs.

A truncated or non-image file would otherwise surface mid-training as a DataLoader traceback that never
names the file, and the first file alone would decide the channel count of the whole dataset. One pass
over the folder at start-up finds both:

- the unreadable files, by name (:class:`UnreadableImagesError` lists them, unless they are skipped);
- the channel count: 3 (RGB) if any readable image is stored in a colour mode, else 1 (grey), unless
  the caller fixes it. Every image is then converted to that mode by the per-image transform.

Decoding runs on a thread pool for folders big enough for it to pay (PIL's decoders release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .image_transform import GREY_MODES, to_eight_bit

CHANNEL_CHOICES = (1, 3)
# Unreadable files named in an error message; the rest are counted.
LISTED_BAD_FILES = 10
# Below this many files one thread decodes faster than starting a pool.
_PARALLEL_FROM = 32
_MAX_WORKERS = 8


class UnreadableImagesError(ValueError):
    """Some files of an image folder cannot be decoded; ``bad`` holds ``(name, reason)`` pairs."""

    def __init__(self, folder: str, bad: Sequence[tuple[str, str]], total: int) -> None:
        self.bad = tuple(bad)
        listed = ", ".join(f"{name} ({reason})" for name, reason in self.bad[:LISTED_BAD_FILES])
        more = len(self.bad) - LISTED_BAD_FILES
        tail = f", and {more} more" if more > 0 else ""
        super().__init__(
            f"--train-data-dir {folder!r}: {len(self.bad)} of {total} images cannot be read: "
            f"{listed}{tail}. Fix or remove them, or pass --skip-bad-images to use the other "
            f"{total - len(self.bad)}"
        )


@dataclass(frozen=True)
class FolderScan:
    """What one pass over the images of a folder found.

    Attributes:
        readable: indices (into the scanned paths) of the images that decode.
        unreadable: ``(name, reason)`` for each file that does not, names relative to the folder.
        colour: how many readable images are stored in a colour mode.
    """

    readable: tuple[int, ...]
    unreadable: tuple[tuple[str, str], ...]
    colour: int

    def channels(self, requested: int | None) -> int:
        """``requested`` if given, else 3 when any readable image is in colour, else 1."""
        if requested is not None:
            return requested
        return 3 if self.colour else 1


def _decoded_mode(path: str) -> str:
    """Open and fully decode one image (``Image.load``, which reads every pixel), check that its mode and
    values can be brought to 8 bits (``to_eight_bit``, which raises naming the mode); return its mode."""
    with Image.open(path) as image:
        image.load()
        to_eight_bit(image)
        return image.mode


def _try_decode(path: str) -> str | Exception:
    try:
        return _decoded_mode(path)
    # PIL reports a bad file as OSError, SyntaxError, ValueError, DecompressionBombError, ...: any of
    # them means this one file cannot be used.
    except Exception as error:
        return error


def scan_images(folder: str | os.PathLike[str], paths: Sequence[str]) -> FolderScan:
    """Decode every file of ``paths`` once (in parallel for many files) and classify it."""
    if len(paths) >= _PARALLEL_FROM:
        workers = min(_MAX_WORKERS, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf-ddpm-ingest") as pool:
            results = list(pool.map(_try_decode, paths))
    else:
        results = [_try_decode(path) for path in paths]
    root = Path(folder).resolve()
    readable: list[int] = []
    unreadable: list[tuple[str, str]] = []
    colour = 0
    for index, (path, result) in enumerate(zip(paths, results, strict=True)):
        if isinstance(result, Exception):
            # PIL's own message for a non-image repeats the full path.
            not_image = isinstance(result, UnidentifiedImageError)
            reason = "not an image" if not_image else str(result) or type(result).__name__
            unreadable.append((_relative_name(path, root), reason))
            continue
        readable.append(index)
        colour += result not in GREY_MODES
    return FolderScan(tuple(readable), tuple(unreadable), colour)


def _relative_name(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path
