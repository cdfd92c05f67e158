"""``hf-ddpm inpaint``: fill the white region of a mask in an image with a trained DDPM (RePaint)."""

from __future__ import annotations

import argparse

from hf_ddpm.core.pipeline_inpaint import HFDDPMInpaintPipeline

from .edit_files import add_common_arguments, draw_edits, open_edit, pipeline_default, read_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, HFDDPMInpaintPipeline)
    parser.add_argument(
        "--mask",
        required=True,
        help="mask image: white where new content goes, black to keep; resized and cropped as "
        "--image is",
    )
    for flag, name, what in (
        ("--jump-length", "jump_length", "steps of each RePaint resampling jump"),
        ("--jump-n-sample", "jump_n_sample", "times each stretch is denoised; 1: no resampling"),
    ):
        default = pipeline_default(HFDDPMInpaintPipeline, name)
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default: {default})")


def run(args: argparse.Namespace) -> int:
    pipe, image, output = open_edit(args, HFDDPMInpaintPipeline)
    return draw_edits(
        pipe,
        args,
        output,
        "inpainted",
        image=image,
        mask_image=read_image(args.mask, "--mask", pipe, mask=True),
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
    )
