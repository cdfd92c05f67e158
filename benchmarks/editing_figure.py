"""The README's editing pictures, made with the bundled model (CPU, a few minutes).

- ``docs/inpaint.png``: held-out test digits (never seen in training) with their lower half masked; each
  row is one digit: the original, the masked input (grey = to fill), then one fill per seed.
- ``docs/img2img.png``: a rough hand-drawn "7" redrawn by SDEdit; each row one strength, each column
  one seed; the first column is the drawing.

    python benchmarks/editing_figure.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from hf_ddpm import HFDDPMImg2ImgPipeline, HFDDPMInpaintPipeline, HFDDPMPipeline
from hf_ddpm.data.image_datasets import load_image_dataset, preprocess
from hf_ddpm.hub.bundled import bundled_model_path

SIZE = 32
SCALE = 3
GAP = 2
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _held_out_digits(classes: list[int]) -> np.ndarray:
    """The first held-out test digit of each class, (N, 32, 32) in [0, 1], as training saw them."""
    data = preprocess(load_image_dataset("mnist-5k", split="test", class_column="label"), SIZE)
    batch = data[: len(data)]
    labels = np.asarray(batch["label"])
    images = [batch["pixel_values"][int(np.argmax(labels == c))][0].numpy() for c in classes]
    return (np.stack(images) + 1) / 2


def _rough_seven() -> np.ndarray:
    """A crude "7" of straight strokes, as a user might draw it with a mouse."""
    canvas = PIL.Image.new("L", (SIZE, SIZE))
    draw = PIL.ImageDraw.Draw(canvas)
    draw.line([(8, 7), (24, 7), (13, 26)], fill=255, width=4)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _sheet(rows: list[list[np.ndarray]]) -> PIL.Image.Image:
    """Rows of (32, 32) images in [0, 1], enlarged, with thin gaps, as one grey PNG."""
    cell = SIZE * SCALE
    height = len(rows) * cell + (len(rows) - 1) * GAP
    width = max(len(r) for r in rows) * cell + (max(len(r) for r in rows) - 1) * GAP
    sheet = np.full((height, width), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
            big = np.kron(pixels, np.ones((SCALE, SCALE), dtype=np.uint8))
            y, x = i * (cell + GAP), j * (cell + GAP)
            sheet[y : y + cell, x : x + cell] = big
    return PIL.Image.fromarray(sheet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--inpaint-steps", type=int, default=100)
    parser.add_argument("--jump-length", type=int, default=10)
    parser.add_argument("--jump-n-sample", type=int, default=5)
    parser.add_argument("--img2img-steps", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    pipe = HFDDPMPipeline.from_pretrained(bundled_model_path())
    seeds = range(args.seeds)

    digits = _held_out_digits([2, 3, 4, 5, 9])
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[SIZE // 2 :] = 1.0
    inpaint = HFDDPMInpaintPipeline.from_pipe(pipe)
    n = len(digits)
    fills = inpaint(
        image=np.repeat(digits, len(seeds), axis=0)[..., None],
        mask_image=mask,
        num_inference_steps=args.inpaint_steps,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
        generator=[torch.Generator().manual_seed(s) for _ in range(n) for s in seeds],
        output_type="np",
    ).images[..., 0]
    rows = []
    for i, digit in enumerate(digits):
        masked = np.where(mask > 0, 0.5, digit)
        rows.append([digit, masked, *fills[i * len(seeds) : (i + 1) * len(seeds)]])
    _sheet(rows).save(DOCS / "inpaint.png")

    drawing = _rough_seven()
    img2img = HFDDPMImg2ImgPipeline.from_pipe(pipe)
    rows = []
    for strength in (0.2, 0.4, 0.6, 0.8):
        edits = img2img(
            image=np.repeat(drawing[None, ..., None], len(seeds), axis=0),
            strength=strength,
            num_inference_steps=args.img2img_steps,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="np",
        ).images[..., 0]
        rows.append([drawing, *edits])
    _sheet(rows).save(DOCS / "img2img.png")
    print(f"wrote {DOCS / 'inpaint.png'} and {DOCS / 'img2img.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
