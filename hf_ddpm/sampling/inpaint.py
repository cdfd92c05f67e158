"""``hf-ddpm inpaint``: fill the white region of a mask in an image with a trained DDPM (RePaint)."""

from __future__ import annotations

import argparse

from hf_ddpm.core.pipeline_inpaint import HFDDPMInpaintPipeline

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
    add_common_arguments(parser, HFDDPMInpaintPipeline)
    parser.add_argument(
        "--mask", required=True, help="mask image: white where new content goes, black to keep"
    )
    for flag, name, what in (
        ("--jump-length", "jump_length", "steps of each RePaint resampling jump"),
        ("--jump-n-sample", "jump_n_sample", "times each stretch is denoised; 1: no resampling"),
    ):
        default = pipeline_default(HFDDPMInpaintPipeline, name)
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default: {default})")


def run(args: argparse.Namespace) -> int:
    output = check_output_path(args.output)
    pipe = HFDDPMInpaintPipeline.from_pipe(load_for_sampling(args.model)).to(args.device)
    image = read_image(args.image, "--image", pipe)
    mask = read_image(args.mask, "--mask", pipe, mask=True)
    images = pipe(
        image=image,
        mask_image=mask,
        num_inference_steps=args.num_inference_steps,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
        generator=generators(args.seed, args.num_images),
        output_type="np",
        **class_kwargs(args.class_label, args.guidance_scale),
    ).images
    write_row(images, output)
    print(f"wrote {len(images)} inpainted image(s) to {output}")
    return 0
