"""``hf-ddpm inpaint``: fill the white region of a mask in an image with a trained DDPM (RePaint)."""

from __future__ import annotations

import argparse

import torch

from hf_ddpm.core.edit_inputs import prepare_masks
from hf_ddpm.core.pipeline_inpaint import HFDDPMInpaintPipeline

from .edit_files import (
    add_common_arguments,
    draw_edits,
    model_input,
    open_edit,
    open_image,
    pipeline_default,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--mask",
        required=True,
        help="mask image of --image's size: white where new content goes, black to keep; resized "
        "and cropped as --image is",
    )
    for flag, name, what in (
        ("--jump-length", "jump_length", "steps of each RePaint resampling jump"),
        ("--jump-n-sample", "jump_n_sample", "times each stretch is denoised; 1: no resampling"),
    ):
        default = pipeline_default(HFDDPMInpaintPipeline, name)
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default: {default})")


def run(args: argparse.Namespace) -> int:
    picture, painted = open_image(args.image, "--image"), open_image(args.mask, "--mask")
    # Each is resized and cropped to the model's size by itself: only at one size do they still line up.
    if painted.size != picture.size:
        raise ValueError(
            f"--mask {args.mask} is {painted.width}x{painted.height} pixels, but --image {args.image} "
            f"is {picture.width}x{picture.height}: give a mask of the image's size"
        )
    pipe, chain, output = open_edit(args, HFDDPMInpaintPipeline)
    image = model_input(picture, args.image, "--image", pipe)
    mask = model_input(painted, args.mask, "--mask", pipe, mask=True)
    # The pipeline's own check of the mask, worded for the command line.
    height, width = mask.shape[:2]
    instead = "draw new images with `hf-ddpm sample`"
    prepare_masks(mask, height, width, torch.device("cpu"), f"--mask {args.mask}", instead)
    return draw_edits(
        pipe,
        chain,
        args,
        output,
        "inpainted",
        image=image,
        mask_image=mask,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
    )
