"""``hf-ddpm img2img``: redraw an image with a trained DDPM from part-way up the forward process (SDEdit)."""

from __future__ import annotations

import argparse

from hf_ddpm.core.pipeline_img2img import HFDDPMImg2ImgPipeline

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
    default = pipeline_default(HFDDPMImg2ImgPipeline, "strength")
    parser.add_argument(
        "--strength",
        type=float,
        default=default,
        help=f"in (0, 1]: how far into the forward process the image goes; 1 keeps almost nothing "
        f"(default: {default})",
    )


def run(args: argparse.Namespace) -> int:
    picture = open_image(args.image, "--image")
    pipe, chain, output = open_edit(args, HFDDPMImg2ImgPipeline)
    image = model_input(picture, args.image, "--image", pipe)
    return draw_edits(pipe, chain, args, output, "edited", image=image, strength=args.strength)
