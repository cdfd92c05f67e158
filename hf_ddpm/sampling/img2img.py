"""``hf-ddpm img2img``: redraw an image with a trained DDPM from part-way up the forward process (SDEdit)."""

from __future__ import annotations

import argparse

from hf_ddpm.core.pipeline_img2img import HFDDPMImg2ImgPipeline

from .edit_files import (
    add_common_arguments,
    check_output_path,
    class_kwargs,
    generators,
    pipeline_default,
    read_image,
    write_row,
)
from .sample import load_for_sampling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, HFDDPMImg2ImgPipeline)
    default = pipeline_default(HFDDPMImg2ImgPipeline, "strength")
    parser.add_argument(
        "--strength",
        type=float,
        default=default,
        help=f"in (0, 1]: how far into the forward process the image goes; 1 keeps almost nothing "
        f"(default: {default})",
    )


def run(args: argparse.Namespace) -> int:
    output = check_output_path(args.output)
    pipe = HFDDPMImg2ImgPipeline.from_pipe(load_for_sampling(args.model)).to(args.device)
    image = read_image(args.image, "--image", pipe)
    images = pipe(
        image=image,
        strength=args.strength,
        num_inference_steps=args.num_inference_steps,
        generator=generators(args.seed, args.num_images),
        output_type="np",
        **class_kwargs(args.class_label, args.guidance_scale),
    ).images
    write_row(images, output)
    print(f"wrote {len(images)} edited image(s) to {output}")
    return 0
