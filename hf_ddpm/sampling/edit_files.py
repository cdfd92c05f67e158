"""What ``hf-ddpm inpaint`` and ``hf-ddpm img2img`` share: the model argument, reading the input images
with errors that name the file and the flag, running the edit pipeline and writing the result."""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from hf_ddpm.core.diffusion_tables import check_num_inference_steps
from hf_ddpm.data.image_grid import save_png_atomically
from hf_ddpm.sampling.samplers import (
    DDPM_SAMPLER,
    default_sampling_steps,
    resolve_class_label,
    sampling_scheduler,
)
from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed

from .sample import class_in_words, load_for_sampling

# What a class-conditional model draws without --class-label: the pipelines' default.
NO_CLASS = "no class (the null label)"

logger = logging.getLogger(__name__)


def pipeline_default(pipeline_class: type, name: str) -> Any:
    """The default of ``name`` in ``pipeline_class.__call__``, so the CLI states the pipeline's own."""
    return inspect.signature(pipeline_class.__call__).parameters[name].default


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The input image and output options of both edit commands (the model, steps, chain, seed, class
    and device flags are cli.py's shared ones). ``--num-inference-steps`` defaults to ``hf-ddpm
    sample``'s steps (:func:`~hf_ddpm.sampling.samplers.default_sampling_steps` of the model), not to
    the edit pipelines' own Python defaults, which are the papers' (RePaint 250, SDEdit 1000)."""
    parser.add_argument(
        "--image",
        required=True,
        help="image to edit (PNG, JPEG, ...); resized and centre-cropped to the model's size as "
        "training does",
    )
    parser.add_argument("--output", required=True, help="where to write the result (.png)")
    parser.add_argument(
        "--num-images",
        type=int,
        default=1,
        help="edits to draw, one seed each (seed, seed+1, ...), written side by side",
    )


def check_output_path(output: str) -> Path:
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--output must be a .png file, got {output!r}.")
    return path


def open_image(path: str, flag: str) -> PIL.Image.Image:
    """The image file at ``path``, decoded; a FileNotFoundError or ValueError naming ``flag`` and the file
    otherwise. Read before the model loads, so that a bad file fails at once."""
    file = Path(path)
    if not file.is_file():
        what = "a folder, not an image file" if file.is_dir() else "no such file"
        raise FileNotFoundError(f"{flag} {path}: {what}.")
    try:
        with PIL.Image.open(file) as opened:
            opened.load()
            return opened.copy()
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{flag} {path} is not an image PIL can read ({error}).") from error


def model_input(
    image: PIL.Image.Image, path: str, flag: str, pipeline: Any, mask: bool = False
) -> np.ndarray:
    """``image`` (:func:`open_image` of ``path``) as the model sees it, an (H, W, C) float array in
    [0, 1]: converted to the model's channels (a mask: one grey channel), resized so its shorter side is
    the model's size and centre-cropped, by the transform training applies to every image
    (:class:`hf_ddpm.data.image_transform.ImageTransform`); each change is logged, naming ``flag``."""
    from hf_ddpm.data.image_transform import GREY_MODES, ImageTransform

    config = pipeline.unet.config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
        raise ValueError(
            f"{flag}: the model takes {width}x{height} images; only square ones are read"
        )
    channels = 1 if mask else int(config.in_channels)
    if image.size != (width, height):
        logger.info(
            "%s %s is %dx%d pixels: resized (bilinear, shorter side to %d) and centre-cropped to "
            "%dx%d, as training does",
            flag,
            path,
            image.width,
            image.height,
            width,
            width,
            height,
        )
    colour = image.mode not in GREY_MODES
    if colour and channels == 1 and not mask:
        logger.info(
            "%s %s is in colour, but the model is grey (1 channel): converted to grey", flag, path
        )
    elif not colour and channels == 3:
        logger.info(
            "%s %s is grey, but the model takes colour (RGB): the grey is copied to each channel",
            flag,
            path,
        )
    pixels = ImageTransform.for_channels(channels, width)(image)
    return ((pixels.permute(1, 2, 0).numpy() + 1.0) / 2.0).astype(np.float32)


def generators(seed: int, num_images: int) -> list[torch.Generator]:
    if num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {num_images}.")
    return [torch.Generator().manual_seed(seed + i) for i in range(num_images)]


def class_kwargs(class_label: int | None, guidance_scale: float) -> dict[str, Any]:
    """Label options for the pipeline: without --class-label the pipeline's own default applies."""
    if class_label is None:
        return {"guidance_scale": guidance_scale}
    return {"class_labels": class_label, "guidance_scale": guidance_scale}


def write_row(images: np.ndarray, output: Path) -> None:
    """NHWC images in [0, 1] written side by side as one PNG, atomically (no half-written file)."""
    row = np.concatenate(list(np.clip(images, 0.0, 1.0)), axis=1)
    pixels = np.rint(row * 255).astype(np.uint8)
    picture = PIL.Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    save_png_atomically(picture, output)


def open_edit(args: argparse.Namespace, pipeline_class: type) -> tuple[Any, str, Path]:
    """The model as ``pipeline_class`` on ``--device`` (its UNet as ``--dtype``, ``--compile`` and
    ``--channels-last`` say), its DDPM chain with the variance and spacing ``hf-ddpm sample`` would use
    (``--variance-type``, ``--timestep-spacing``, else the same defaults) and that chain in words, and
    the checked ``--output`` path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = check_output_path(args.output)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = pipeline_class.from_pipe(load_for_sampling(args.model)).to(device)
    choice = sampling_scheduler(pipe, DDPM_SAMPLER, args.variance_type, args.timestep_spacing)
    pipe.scheduler = choice.scheduler
    apply_unet_speed(pipe, UNetSpeed(args.dtype, args.compile, args.channels_last))
    return pipe, choice.description, output


def draw_edits(
    pipe: Any,
    chain: str,
    args: argparse.Namespace,
    output: Path,
    done: str,
    **inputs: Any,
) -> int:
    """Run ``pipe`` on ``inputs`` with the options both commands share (steps, one seed per image, class),
    write the results side by side to ``output`` and say so (``done``: what happened to the images);
    first log the ``chain`` (:func:`open_edit`), the steps, the class and the guidance in one line."""
    num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
    steps = args.num_inference_steps or default_sampling_steps(num_train_timesteps)
    check_num_inference_steps(steps, num_train_timesteps, "--num-inference-steps")
    generator = generators(args.seed, args.num_images)
    class_label = resolve_class_label(pipe, args.class_label)
    logger.info(
        "drawing %d %s image(s): %s, %d steps%s",
        args.num_images,
        done,
        chain,
        steps,
        class_in_words(pipe, class_label, args.guidance_scale, NO_CLASS),
    )
    images = pipe(
        **inputs,
        num_inference_steps=steps,
        generator=generator,
        output_type="np",
        **class_kwargs(class_label, args.guidance_scale),
    ).images
    write_row(images, output)
    print(f"wrote {len(images)} {done} image(s) to {output}")
    return 0
