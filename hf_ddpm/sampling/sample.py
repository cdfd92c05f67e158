"""``hf-ddpm sample``: draw images from a pipeline and save them as one grid image."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_ddpm.core.pipeline_base import check_covariance_head, expected_unet_out_channels
from hf_ddpm.core.scheduling import (
    DEFAULT_SAMPLING_STEPS,
    TIMESTEP_SPACINGS,
    HFDDPMScheduler,
    sampling_variance_type,
)
from hf_ddpm.core.variance import VARIANCE_TYPE_NAMES
from hf_ddpm.hub.bundled import bundled_model_path

logger = logging.getLogger(__name__)


def _from_config(cls: type, config: Mapping[str, Any], **kwargs: Any) -> Any:
    """``cls.from_config`` of the keys ``cls`` takes: diffusers would warn of every other one, printing
    the T floats of eps_second_moment."""
    taken = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in taken}, **kwargs)


def _ddim(config: Mapping[str, Any]) -> Any:
    from diffusers import DDIMScheduler

    return _from_config(DDIMScheduler, config)


def _dpm_solver_pp(config: Mapping[str, Any]) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    return _from_config(
        DPMSolverMultistepScheduler, config, algorithm_type="dpmsolver++", solver_order=2
    )


# diffusers' few-step samplers, built from the model's own config (its betas and spacing) by from_config.
DIFFUSERS_SAMPLERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ddim": _ddim,  # Song et al. 2021, eta 0: deterministic
    "dpm-solver++": _dpm_solver_pp,  # Lu et al. 2022, multistep 2M
}
# "ddpm": ancestral sampling with HFDDPMScheduler, whose variance type --variance-type picks.
SAMPLERS = ("ddpm", *DIFFUSERS_SAMPLERS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hf-ddpm sample`` options; ``--threads`` and the ``--device`` check come from cli.py."""
    parser.add_argument(
        "--model",
        default=None,
        help="Hub repo id or local pipeline folder (default: the bundled mnist-5k model)",
    )
    parser.add_argument("--output", default="samples.png", help="grid image to write (PNG)")
    parser.add_argument("--num-images", type=int, default=16, help="images in the grid (>= 1)")
    parser.add_argument(
        "--num-inference-steps",
        type=int,
        default=None,
        help=f"sampling steps, 1..T (default: {DEFAULT_SAMPLING_STEPS}, or T if the model has fewer; "
        "fewer steps are faster, respaced as in Nichol & Dhariwal 2021)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="ddpm",
        help="ddpm: ancestral sampling with the model's scheduler; ddim (eta 0) and dpm-solver++ (2M): "
        "diffusers' few-step samplers on the same network",
    )
    parser.add_argument(
        "--variance-type",
        choices=VARIANCE_TYPE_NAMES,
        default=None,
        help="reverse-process variance of --sampler ddpm (default: analytic when the model carries "
        "eps_second_moment, from hf-ddpm calibrate or train; else the model's own)",
    )
    parser.add_argument(
        "--timestep-spacing",
        choices=TIMESTEP_SPACINGS,
        default=None,
        help="how the steps are chosen among the T (default: the model's; optimal needs "
        "eps_second_moment and --sampler ddpm)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the one CPU generator")
    parser.add_argument(
        "--class-label",
        type=int,
        default=None,
        help="class to draw, 0..num_classes-1 (class-conditional models; default: every class in turn)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance weight, >= 0 (class-conditional models; 1 is no guidance)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )


def _untrained_pipeline() -> Any:
    from diffusers import UNet2DModel

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    logger.warning(
        "No model given and no bundled model in this checkout: sampling from a freshly initialised UNet "
        "(the images are noise). Pass --model REPO_OR_FOLDER."
    )
    unet = UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())


def load_for_sampling(model: str | None) -> Any:
    """The pipeline named by ``model``, else the bundled one, else an untrained one (with a warning).

    Raises:
        FileNotFoundError: ``model`` is neither a saved pipeline folder nor a reachable Hub repo; the
            message names ``--model``.
    """
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    if model is None:
        bundled = bundled_model_path()
        if bundled is None:
            return _untrained_pipeline()
        model = str(bundled)
    try:
        return HFDDPMPipeline.from_pretrained(model)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise FileNotFoundError(f"--model {model}: {error}") from error


SEED_RANGE = range(0, 2**64)  # what torch.Generator.manual_seed takes without wrapping around


def num_classes(pipeline: Any) -> int | None:
    """Classes a model trained by ``hf-ddpm train --class-column`` draws, or None if unconditional.

    hf-ddpm train keeps the last class embedding as the null label of classifier-free guidance, so the
    classes are 0..num_class_embeds-2.
    """
    num_class_embeds = getattr(pipeline.unet.config, "num_class_embeds", None)
    return num_class_embeds - 1 if num_class_embeds else None


def check_sample_options(
    pipeline: Any,
    num_images: int,
    num_inference_steps: int,
    seed: int,
    class_label: int | None,
    guidance_scale: float,
) -> None:
    """Raise ``ValueError`` naming the ``hf-ddpm sample`` flag and its allowed range for a bad value."""
    num_train_timesteps = int(pipeline.scheduler.config.num_train_timesteps)
    if num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {num_images}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"--num-inference-steps must be in 1..{num_train_timesteps} (the model's "
            f"num_train_timesteps), got {num_inference_steps}"
        )
    if seed not in SEED_RANGE:
        raise ValueError(f"--seed must be in 0..{SEED_RANGE.stop - 1}, got {seed}")
    if guidance_scale < 0:
        raise ValueError(
            f"--guidance-scale must be >= 0 (1 is no guidance), got {guidance_scale:g}"
        )
    classes = num_classes(pipeline)
    if classes is None:
        if class_label is not None or guidance_scale != 1.0:
            flag = "--class-label" if class_label is not None else "--guidance-scale"
            raise ValueError(
                f"{flag} needs a class-conditional model; this UNet has no class embedding"
            )
    elif class_label is not None and not 0 <= class_label < classes:
        raise ValueError(
            f"--class-label must be in 0..{classes - 1} (this model has {classes} classes), got "
            f"{class_label}"
        )


@dataclass(frozen=True)
class SamplingChoice:
    """The scheduler ``hf-ddpm sample`` swaps into the pipeline, and what its log line says of it."""

    scheduler: Any
    description: str


def sampling_scheduler(
    pipeline: Any,
    sampler: str = "ddpm",
    variance_type: str | None = None,
    timestep_spacing: str | None = None,
) -> SamplingChoice:
    """The scheduler to sample ``pipeline`` with, built from its scheduler config by ``from_config``.

    ``sampler`` "ddpm" is HFDDPMScheduler with ``variance_type`` (default:
    :func:`~hf_ddpm.core.scheduling.sampling_variance_type`, analytic for a calibrated model); "ddim" and
    "dpm-solver++" are diffusers' schedulers, which have no variance to choose.

    Raises:
        ValueError: an unknown name, or a combination the model or sampler cannot honour; the message
            names the flag.
    """
    config = dict(pipeline.scheduler.config)
    for flag, value, allowed in (
        ("--sampler", sampler, SAMPLERS),
        ("--variance-type", variance_type, VARIANCE_TYPE_NAMES),
        ("--timestep-spacing", timestep_spacing, TIMESTEP_SPACINGS),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    spacing = timestep_spacing or config["timestep_spacing"]
    if sampler in DIFFUSERS_SAMPLERS:
        if variance_type is not None:
            raise ValueError(
                f"--variance-type is for --sampler ddpm; {sampler} has no reverse variance to choose"
            )
        if spacing == "optimal":
            raise ValueError(
                f"--timestep-spacing optimal is for --sampler ddpm; {sampler} takes "
                f"{', '.join(s for s in TIMESTEP_SPACINGS if s != 'optimal')}"
            )
        scheduler = DIFFUSERS_SAMPLERS[sampler]({**config, "timestep_spacing": spacing})
        return SamplingChoice(scheduler, f"{sampler} sampler (diffusers), {spacing} spacing")
    variance = variance_type or sampling_variance_type(config)
    flags = " ".join(
        f"{flag} {value}"
        for flag, value in (("--variance-type", variance), ("--timestep-spacing", spacing))
    )
    try:
        scheduler = HFDDPMScheduler.from_config(
            config, variance_type=variance, timestep_spacing=spacing
        )
        needed = expected_unet_out_channels(scheduler, pipeline.unet.config.in_channels)
        check_covariance_head(pipeline.unet, scheduler, getattr(pipeline, "covariance_head", None))
    except ValueError as error:
        raise ValueError(f"{flags}: {error}") from error
    if needed != pipeline.unet.config.out_channels:
        raise ValueError(
            f"--variance-type {variance} needs a network with {needed} output channels; this model's "
            f"has {pipeline.unet.config.out_channels} (it was trained for variance_type "
            f"{config['variance_type']!r})"
        )
    why = (
        " (the model's eps_second_moment)"
        if variance_type is None and variance != config["variance_type"]
        else ""
    )
    return SamplingChoice(scheduler, f"ddpm sampler, {variance} variance{why}, {spacing} spacing")


def default_sampling_steps(pipeline: Any) -> int:
    """:data:`~hf_ddpm.core.scheduling.DEFAULT_SAMPLING_STEPS`, or T for a model with fewer."""
    return min(DEFAULT_SAMPLING_STEPS, int(pipeline.scheduler.config.num_train_timesteps))


def sample_grid(
    pipeline: Any,
    num_images: int = 16,
    num_inference_steps: int | None = None,
    seed: int = 0,
    class_label: int | None = None,
    guidance_scale: float = 1.0,
    description: str | None = None,
) -> Any:
    """``num_images`` samples as one near-square PIL grid, with the pipeline's scheduler;
    ``num_inference_steps`` defaults to :func:`default_sampling_steps`. A ``description`` of the
    sampler is logged with the steps once the options are checked.

    Raises:
        ValueError: an option out of its range (see :func:`check_sample_options`).
    """
    from hf_ddpm.data.image_grid import image_grid

    steps = default_sampling_steps(pipeline) if num_inference_steps is None else num_inference_steps
    check_sample_options(pipeline, num_images, steps, seed, class_label, guidance_scale)
    if description is not None:
        logger.info("sampling %d images: %s, %d steps", num_images, description, steps)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    kwargs: dict[str, Any] = {}
    classes = num_classes(pipeline)
    if classes is not None:
        labels = [class_label] * num_images if class_label is not None else None
        labels = labels or [i % classes for i in range(num_images)]
        kwargs = {"class_labels": labels, "guidance_scale": guidance_scale}
    images = pipeline(
        batch_size=num_images,
        generator=generator,
        num_inference_steps=steps,
        output_type="np",
        **kwargs,
    ).images
    return image_grid(images)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hf-ddpm sample``; user errors are raised and cli.py reports them."""
    from hf_ddpm.data.image_grid import save_png_atomically

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must be a .png file, got {output}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = load_for_sampling(args.model).to(device)
    choice = sampling_scheduler(pipeline, args.sampler, args.variance_type, args.timestep_spacing)
    pipeline.scheduler = choice.scheduler
    grid = sample_grid(
        pipeline,
        description=choice.description,
        num_images=args.num_images,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        class_label=args.class_label,
        guidance_scale=args.guidance_scale,
    )
    save_png_atomically(grid, output)
    print(f"wrote {args.num_images} samples to {output}")
    return 0
