"""The ``hf-ddpm`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. They are imported
only when chosen, so ``hf-ddpm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# name -> (module, one-line help)
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_ddpm.training.train", "train a DDPM on your images (accelerate + datasets)"),
    "sample": (
        "hf_ddpm.sampling.sample",
        "generate images from a pipeline (the bundled model by default)",
    ),
    "evaluate": (
        "hf_ddpm.evaluation.evaluate",
        "NLL bound in bits/dim, FID and FD-DINOv2 of a pipeline",
    ),
    "space": ("hf_ddpm.hub.space", "create a Gradio Space on the Hub for a model"),
    "calibrate": (
        "hf_ddpm.evaluation.calibrate",
        "Gamma_n for Analytic-DPM's variance, into a model",
    ),
}


def _available() -> dict[str, tuple[str, str]]:
    from importlib.util import find_spec

    return {name: spec for name, spec in _SUBCOMMANDS.items() if find_spec(spec[0]) is not None}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    subcommands = _available()
    parser = argparse.ArgumentParser(
        prog="hf-ddpm", description="DDPM for the Hugging Face ecosystem."
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(subcommands) + "}")
    chosen = argv[0] if argv and argv[0] in subcommands else None
    for name, (module, help_text) in subcommands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(import_module(subcommands[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
