"""``hf-ddpm sample``: draw images from a pipeline and save them as one grid image, or as a sample folder
(one PNG per image, over many processes, resumable: :mod:`hf_ddpm.sampling.sample_folder`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from hf_ddpm.core.class_layout import num_classes_of
from hf_ddpm.core.diffusion_tables import check_num_inference_steps
from hf_ddpm.hub.bundled import bundled_model_path
from hf_ddpm.sampling.samplers import (
    SEED_RANGE,
    image_class_labels,
    resolve_class_label,
    sampling_scheduler,
    steps_or_default,
)
from hf_ddpm.sampling.unet_speed import UNetSpeed, apply_unet_speed, compile_warm_up

logger = logging.getLogger(__name__)

FOLDER_BATCH_SIZE = 64  # --batch-size of a sample folder; a grid is drawn in one call
# What a class-conditional model draws without --class-label.
EVERY_CLASS = "every class in turn"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hf-ddpm sample`` options of its own; the model, device, seed, threads, sampling and speed
    flags are cli.py's shared ones."""
    parser.add_argument(
        "--output", default=None, help="grid image to write (PNG; default: samples.png)"
    )
    parser.add_argument(
        "--num-images", type=int, default=16, help="images in the grid or the folder (>= 1)"
    )
    folder = parser.add_argument_group(
        "sample folders: one PNG per image, split over the processes of torchrun or accelerate "
        "launch, resumable"
    )
    folder.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="write DIR/000000.png ... instead of a grid; a rerun draws only the missing images",
    )
    folder.add_argument(
        "--batch-size",
        type=int,
        help=f"images per pipeline call on each process (default: {FOLDER_BATCH_SIZE})",
    )
    folder.add_argument(
        "--npz",
        action="store_true",
        help="also write DIR/samples_NxHxWxC.npz (uint8 arr_0), the format of improved-diffusion's "
        "and guided-diffusion's evaluators",
    )
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a folder drawn with other settings instead of refusing",
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


def num_classes(pipeline: Any) -> int | None:
    """Classes a model trained by ``hf-ddpm train --class-column`` draws (the embeddings before its null
    label, :func:`.class_layout.num_classes_of`), or None if unconditional."""
    return num_classes_of(getattr(pipeline.unet.config, "num_class_embeds", None))


def class_in_words(
    pipeline: Any, class_label: int | None, guidance_scale: float, unset: str
) -> str:
    """What a draw conditions on, as its log line says it: ``, class dogs (1), guidance 3`` (a class by the
    name the model records, where it has one), ``unset`` without a class; nothing for an unconditional
    model."""
    if num_classes(pipeline) is None:
        return ""
    names = list(getattr(pipeline.config, "class_names", None) or [])
    if class_label is None:
        which = unset
    elif 0 <= class_label < len(names):
        which = f"class {names[class_label]} ({class_label})"
    else:
        which = f"class {class_label}"
    guidance = "no guidance (1)" if guidance_scale == 1 else f"guidance {guidance_scale:g}"
    return f", {which}, {guidance}"


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
    check_num_inference_steps(num_inference_steps, num_train_timesteps, "--num-inference-steps")
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
    ``num_inference_steps`` defaults to :func:`~hf_ddpm.sampling.samplers.steps_or_default`'s. A
    ``description`` of the sampler is logged with the steps once the options are checked.

    Raises:
        ValueError: an option out of its range (see :func:`check_sample_options`).
    """
    from hf_ddpm.data.image_grid import image_grid

    steps = steps_or_default(num_inference_steps, pipeline.scheduler.config.num_train_timesteps)
    check_sample_options(pipeline, num_images, steps, seed, class_label, guidance_scale)
    if description is not None:
        logger.info(
            "sampling %d images: %s, %d steps%s",
            num_images,
            description,
            steps,
            class_in_words(pipeline, class_label, guidance_scale, EVERY_CLASS),
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    kwargs: dict[str, Any] = {}
    labels = image_class_labels(range(num_images), num_classes(pipeline), class_label)
    if labels is not None:
        kwargs = {"class_labels": labels, "guidance_scale": guidance_scale}
    images = pipeline(
        batch_size=num_images,
        generator=generator,
        num_inference_steps=steps,
        output_type="np",
        **kwargs,
    ).images
    return image_grid(images)


def _checked_options(pipeline: Any, args: argparse.Namespace) -> tuple[int, int | None]:
    """The steps and class label ``args`` ask of ``pipeline``, with every option checked
    (:func:`check_sample_options`): before any work on the UNet, so a bad flag costs no compilation."""
    steps = steps_or_default(
        args.num_inference_steps, pipeline.scheduler.config.num_train_timesteps
    )
    class_label = resolve_class_label(pipeline, args.class_label)
    check_sample_options(
        pipeline, args.num_images, steps, args.seed, class_label, args.guidance_scale
    )
    return steps, class_label


def _warm_up(pipeline: Any, speed: UNetSpeed, images_per_call: int, guidance_scale: float) -> None:
    """With ``--compile``, :func:`compile_warm_up` at the batch the UNet will see: ``images_per_call``, or
    twice that with guidance, whose two halves go through one UNet call."""
    if not speed.compile:
        return
    guided = num_classes(pipeline) is not None and guidance_scale != 1.0
    compile_warm_up(pipeline, images_per_call * (2 if guided else 1))


def _run_folder(args: argparse.Namespace, speed: UNetSpeed) -> int:
    from hf_ddpm.sampling.sample_folder import (
        PipelineSampling,
        SampleFolderJob,
        SampleFolderReport,
        write_sample_folder,
    )
    from hf_ddpm.sampling.sharding import process_group

    group = process_group(args.device)
    pipeline = load_for_sampling(args.model).to(group.device)
    choice = sampling_scheduler(pipeline, args.sampler, args.variance_type, args.timestep_spacing)
    pipeline.scheduler = choice.scheduler
    steps, class_label = _checked_options(pipeline, args)
    apply_unet_speed(pipeline, speed)  # warmed up once the folder is accepted
    pipeline.set_progress_bar_config(disable=True)  # the folder's one bar counts the images
    drawing = PipelineSampling(
        pipeline, choice.description, steps, args.seed, class_label, args.guidance_scale
    )
    job = SampleFolderJob(
        Path(args.output_dir),
        args.num_images,
        FOLDER_BATCH_SIZE if args.batch_size is None else args.batch_size,
        settings=drawing.settings(),
        npz=args.npz,
        overwrite=args.overwrite,
    )

    def announce(plan: SampleFolderReport) -> None:
        if group.is_main:
            kept = f" ({plan.kept} kept from an earlier run)" if plan.kept else ""
            logger.info(
                "sampling %d images into %s%s on %d process(es): %s, %d steps%s, UNet in %s",
                plan.drawn,
                job.output_dir,
                kept,
                group.world,
                choice.description,
                steps,
                class_in_words(pipeline, class_label, args.guidance_scale, EVERY_CLASS),
                speed.describe(),
            )
        if plan.drawn:
            batch = min(job.batch_size, -(-plan.drawn // group.world))
            _warm_up(pipeline, speed, batch, args.guidance_scale)

    report = write_sample_folder(drawing, job, group, before_drawing=announce)
    if group.is_main:
        kept = f", {report.kept} kept from an earlier run" if report.kept else ""
        npz = f"; {report.npz_path}" if report.npz_path else ""
        print(
            f"wrote {args.num_images} samples to {job.output_dir} ({report.drawn} drawn now{kept}){npz}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hf-ddpm sample``; user errors are raised and cli.py reports them."""
    from hf_ddpm.data.image_grid import save_png_atomically

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    speed = UNetSpeed(args.dtype, args.compile, args.channels_last)
    if args.output_dir is not None:
        if args.output is not None:
            raise ValueError(
                "--output writes one grid and --output-dir one PNG per image: give one of them"
            )
        return _run_folder(args, speed)
    folder_only = [
        flag
        for flag, given in (
            ("--batch-size", args.batch_size is not None),
            ("--npz", args.npz),
            ("--overwrite", args.overwrite),
        )
        if given
    ]
    if folder_only:
        raise ValueError(
            f"{' and '.join(folder_only)} {'is' if len(folder_only) == 1 else 'are'} for a sample "
            "folder: give --output-dir DIR (--output writes one grid, in one pipeline call)"
        )
    output = Path(args.output or "samples.png")
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must be a .png file, got {output}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = load_for_sampling(args.model).to(device)
    choice = sampling_scheduler(pipeline, args.sampler, args.variance_type, args.timestep_spacing)
    pipeline.scheduler = choice.scheduler
    steps, class_label = _checked_options(pipeline, args)
    apply_unet_speed(pipeline, speed)
    _warm_up(pipeline, speed, args.num_images, args.guidance_scale)  # a grid is one pipeline call
    grid = sample_grid(
        pipeline,
        description=choice.description,
        num_images=args.num_images,
        num_inference_steps=steps,
        seed=args.seed,
        class_label=class_label,
        guidance_scale=args.guidance_scale,
    )
    save_png_atomically(grid, output)
    print(f"wrote {args.num_images} samples to {output}")
    return 0
