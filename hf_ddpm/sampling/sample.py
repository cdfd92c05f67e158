"""``hf-ddpm sample``: draw images from a pipeline and save them as one grid image."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from hf_ddpm.hub.bundled import bundled_model_path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="Hub repo id or local pipeline folder (default: the bundled mnist-5k model)",
    )
    parser.add_argument("--output", default="samples.png", help="grid image to write (PNG)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--class-label",
        type=int,
        default=None,
        help="class to draw (class-conditional models; default: every class in turn)",
    )
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


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
    """The pipeline named by ``model``, else the bundled one, else an untrained one (with a warning)."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    if model is None:
        bundled = bundled_model_path()
        if bundled is None:
            return _untrained_pipeline()
        model = str(bundled)
    return HFDDPMPipeline.from_pretrained(model)


def sample_grid(
    pipeline: Any,
    num_images: int = 16,
    num_inference_steps: int = 1000,
    seed: int = 0,
    class_label: int | None = None,
    guidance_scale: float = 1.0,
) -> Any:
    """``num_images`` samples as one near-square PIL grid."""
    from hf_ddpm.data.image_grid import image_grid

    if num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {num_images}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    kwargs: dict[str, Any] = {}
    num_class_embeds = getattr(pipeline.unet.config, "num_class_embeds", None)
    if num_class_embeds:
        # hf-ddpm train keeps the last embedding as the null label: the classes are 0..num_class_embeds-2.
        labels = [class_label] * num_images if class_label is not None else None
        labels = labels or [i % (num_class_embeds - 1) for i in range(num_images)]
        kwargs = {"class_labels": labels, "guidance_scale": guidance_scale}
    elif class_label is not None:
        raise ValueError(
            "--class-label needs a class-conditional model; this UNet has no class embedding"
        )
    images = pipeline(
        batch_size=num_images,
        generator=generator,
        num_inference_steps=num_inference_steps,
        output_type="np",
        **kwargs,
    ).images
    return image_grid(images)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise SystemExit(f"--output must be a .png file, got {output}")
    pipeline = load_for_sampling(args.model).to(args.device)
    grid = sample_grid(
        pipeline,
        num_images=args.num_images,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        class_label=args.class_label,
        guidance_scale=args.guidance_scale,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output)
    print(f"wrote {args.num_images} samples to {output}")
    return 0
