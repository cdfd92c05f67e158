"""The ``hf-ddpm`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. They are imported
only when chosen, so ``hf-ddpm --help`` stays fast.

What every subcommand shares lives here, once:

- **Errors.** A user error (bad flag value, missing file or model, an option the machine cannot honour)
  is raised as ``ValueError``, ``FileNotFoundError``, ``NotADirectoryError`` or ``ImportError`` (a
  missing optional package), or comes from argparse; :func:`main` prints it as one line,
  ``hf-ddpm <command>: error: <message>``, and returns 2. A failure of the Hub or the network is printed
  the same way and returns 1, as does a file that could not be written (a full disk). Anything else is
  a bug and keeps its traceback. ``HF_DDPM_DEBUG=1`` shows the traceback of every error.
- **Shared flags** (:data:`SHARED_FLAGS`): the model (``MODEL`` or ``--model MODEL``, either form),
  ``--device`` (checked before any model is loaded: CUDA or MPS asked for on a machine without it is a
  user error), ``--seed``, ``--threads N`` (torch's intra-op thread count, set before any work), the
  sampling flags (``--sampler``; and ``--variance-type``, ``--timestep-spacing`` of the chain, the edit
  commands' too, with choices from the registries), ``--num-inference-steps``, ``--class-label``, ``--guidance-scale``, and the UNet's speed
  (``--dtype``, ``--compile``, ``--channels-last``, :mod:`hf_ddpm.sampling.unet_speed`), the folder a
  command rewrites a model into (``--output``) and the Hub upload (``--push-to-hub``, ``--hub-model-id``,
  ``--hub-token``). Each subcommand names
  the groups it takes in :data:`SUBCOMMANDS`; ``--num-inference-steps`` defaults to
  :func:`hf_ddpm.sampling.samplers.default_sampling_steps` of the model unless its ``steps_default`` says
  otherwise.
- **Help**: every option's default is shown once, after its description, and ``None`` defaults are not.
- **Logs**: huggingface_hub's HTTP client (httpx or httpx2, and their httpcore) logs at WARNING, not one
  line per request.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from typing import NoReturn

DEBUG_ENV = "HF_DDPM_DEBUG"
# Exceptions that mean "the input or the machine is not what the command needs", not a bug in hf_ddpm.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    ImportError,
)
# huggingface_hub's HTTP client logs every request at INFO: httpx, or httpx2 in huggingface_hub >= 2.
_QUIET_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2")


# Flag groups a subcommand can take, each declared once below (see :data:`SHARED_FLAGS`).
MODEL, DEVICE, SEED, THREADS, SAMPLING, CHAIN, STEPS, CLASS, SPEED, HUB, REWRITE = (
    "model",
    "device",
    "seed",
    "threads",
    "sampling",
    "chain",
    "steps",
    "class",
    "speed",
    "hub",
    "rewrite",
)
_SAMPLE = (MODEL, DEVICE, SEED, THREADS, SAMPLING, CHAIN, STEPS, CLASS, SPEED)
# RePaint and SDEdit run the DDPM chain: its variance and spacing, not another sampler.
_EDIT = (MODEL, DEVICE, SEED, THREADS, CHAIN, STEPS, CLASS, SPEED)


@dataclass(frozen=True)
class Subcommand:
    """One ``hf-ddpm`` subcommand: its module, one-line help, and the shared flag groups it takes.

    ``model_required``: the command needs a model (given as ``MODEL`` or ``--model MODEL``); otherwise
    it defaults to the bundled one.
    """

    module: str
    help: str
    shared: tuple[str, ...] = ()
    model_required: bool = False
    steps_default: str | None = (
        None  # in words, where --num-inference-steps' default is not the usual
    )
    # What the command writes into a model (REWRITE: --output, and --push-to-hub's upload), or, for
    # one that only reports on it (HUB alone), what --push-to-hub does.
    writes: str = ""
    # What REWRITE's --output must be, where not any folder (one that holds files is refused).
    output_rule: str = ""


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand(
        "hf_ddpm.training.train",
        "train a DDPM on your images (accelerate + datasets)",
        shared=(THREADS,),
    ),
    "sample": Subcommand(
        "hf_ddpm.sampling.sample",
        "generate images from a pipeline (the bundled model by default)",
        shared=_SAMPLE,
    ),
    "evaluate": Subcommand(
        "hf_ddpm.evaluation.evaluate",
        "NLL bound in bits/dim, FID and FD-DINOv2 of a pipeline",
        shared=(MODEL, DEVICE, SEED, THREADS, SAMPLING, CHAIN, STEPS, SPEED, HUB),
        model_required=True,
        steps_default="T, all training steps; they are also the K-step chain whose bound the nll "
        "metric reports",
        writes="add the metrics to the Hub model card",
    ),
    "inpaint": Subcommand(
        "hf_ddpm.sampling.inpaint",
        "fill the white region of a mask in an image (RePaint)",
        shared=_EDIT,
    ),
    "img2img": Subcommand(
        "hf_ddpm.sampling.img2img",
        "redraw an image from part-way up the noise (SDEdit)",
        shared=_EDIT,
    ),
    "space": Subcommand(
        "hf_ddpm.hub.space",
        "create a Gradio Space on the Hub for a model",
        shared=(MODEL,),
        model_required=True,
    ),
    "calibrate": Subcommand(
        "hf_ddpm.evaluation.calibrate",
        "Gamma_n for Analytic-DPM's variance, into a model",
        shared=(MODEL, DEVICE, SEED, THREADS, REWRITE, HUB),
        model_required=True,
        writes="the calibrated pipeline",
        output_rule="a new or empty folder, which gets a copy of the model",
    ),
    "fit-covariance": Subcommand(
        "hf_ddpm.training.fit_covariance",
        "fit SN-DDPM's or NPR-DDPM's per-pixel covariance head on a frozen model",
        shared=(MODEL, DEVICE, SEED, THREADS, REWRITE, HUB),
        model_required=True,
        writes="the pipeline with its fitted head",
    ),
}


class UsageError(Exception):
    """A command line argparse rejects; :func:`main` prints it as one line and returns 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help once: not for ``None``, flags that default to off, or
    help that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = (action.help or "").replace(" (default: None)", "")
        if (
            "(default" in help_text
            or not action.option_strings
            or action.nargs == 0  # on/off flags: off unless given
            or action.default is None
            or action.default is argparse.SUPPRESS
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are raised (as :class:`UsageError`) instead of printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in its message


def _add_model(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    what = (
        "Hub repo id or local pipeline folder"
        if subcommand.model_required
        else "Hub repo id or local pipeline folder (default: the bundled mnist-5k model)"
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help=f"{what}; or give --model")
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help=f"{what}")


def _add_device(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    parser.add_argument(
        "--device",
        help="torch device: cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)",
    )


def _add_seed(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    from hf_ddpm.sampling.samplers import SEED_RANGE

    def seed(text: str) -> int:
        value = int(text)
        if value not in SEED_RANGE:
            raise ValueError(text)
        return value

    seed.__name__ = f"seed in 0..{SEED_RANGE.stop - 1}"  # argparse names the type in its message
    parser.add_argument(
        "--seed",
        type=seed,
        default=0,
        help=f"seed of the command's random draws, 0..{SEED_RANGE.stop - 1}",
    )


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's intra-op thread count, which :func:`set_threads` sets before any work.
    Every command's (the ``threads`` group), and the Space's (spaces_app/app.py)."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="torch intra-op threads (default: torch's own choice, one per core). On a busy or "
        "shared machine fewer threads can be much faster; see the README's speed section",
    )


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: leave torch's own choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _add_threads(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    add_threads_flag(parser)


def _add_steps(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    from hf_ddpm.sampling.samplers import default_sampling_steps_in_words

    default = subcommand.steps_default or default_sampling_steps_in_words()
    parser.add_argument(
        "--num-inference-steps",
        type=int,  # checked against the model's T once it is loaded
        metavar="K",
        help="sampling steps, 1..T, respaced as in Nichol & Dhariwal 2021; fewer are faster "
        f"(default: {default})",
    )


def _add_sampling(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    from hf_ddpm.sampling.samplers import DDPM_SAMPLER, SAMPLERS

    parser.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default=DDPM_SAMPLER,
        help="; ".join(f"{name}: {sampler.help}" for name, sampler in SAMPLERS.items()),
    )


def _add_chain(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    """The variance and spacing of the chain: of any --sampler where the command takes one, else of the
    DDPM sampler (the edit commands)."""
    from hf_ddpm.sampling.samplers import (
        DDPM_SAMPLER,
        SAMPLERS,
        timestep_spacing_choices,
        variance_type_choices,
    )

    default_variance = (
        "analytic when the model carries eps_second_moment, from hf-ddpm calibrate or train; else "
        "the model's own"
    )
    if SAMPLING in subcommand.shared:
        variance_types, spacings = variance_type_choices(), timestep_spacing_choices()
        with_variance = " or ".join(name for name, s in SAMPLERS.items() if s.variance_types)
        of_variance = f" of --sampler {with_variance}"
        optimal = " or ".join(n for n, s in SAMPLERS.items() if "optimal" in s.timestep_spacings)
        needs = f"eps_second_moment and --sampler {optimal}"
    else:
        chain = SAMPLERS[DDPM_SAMPLER]
        variance_types, spacings = chain.variance_types, chain.timestep_spacings
        of_variance, needs = " of the DDPM chain", "eps_second_moment"
        default_variance += ", as in hf-ddpm sample"
    parser.add_argument(
        "--variance-type",
        choices=variance_types,
        help=f"reverse-process variance{of_variance} (default: {default_variance})",
    )
    parser.add_argument(
        "--timestep-spacing",
        choices=spacings,
        help=f"how the steps are chosen among the T (default: the model's; optimal needs {needs})",
    )


def _add_class(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    parser.add_argument(
        "--class-label",
        metavar="CLASS",
        help="class to draw: its name, as the model records it (hf-ddpm train --class-from-folders "
        "keeps the folder names), or its number 0..num_classes-1 (class-conditional models; default: "
        + ("every class in turn)" if SAMPLING in subcommand.shared else "the model's null label)"),
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance weight, >= 0 (class-conditional models; 1 is no guidance)",
    )


def _add_speed(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    from hf_ddpm.sampling.unet_speed import UNET_DTYPES

    parser.add_argument(
        "--dtype",
        choices=list(UNET_DTYPES),
        default="float32",
        help="the UNet's autocast dtype; the chain stays in float32 (float16 needs a GPU)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (its warm-up is logged once; pays off over many batches)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last UNet weights (measured faster on CPU and GPU; changes float rounding "
        "only). On with --compile or a --dtype other than float32",
    )


def _add_rewrite(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    parser.add_argument(
        "--output",
        default=None,
        help=f"folder to write {subcommand.writes} to"
        + (f": {subcommand.output_rule}" if subcommand.output_rule else "")
        + " (default: MODEL itself, if a local folder)",
    )


def _add_hub(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    rewrites = REWRITE in subcommand.shared
    parser.add_argument(
        "--push-to-hub",
        action="store_true",
        help=f"upload {subcommand.writes} to the Hub" if rewrites else subcommand.writes,
    )
    parser.add_argument(
        "--hub-model-id",
        default=None,
        help=f"repo to {'push to' if rewrites else 'update'} (default: MODEL, if a repo id)",
    )
    parser.add_argument("--hub-token", default=None, help="Hub token (default: the logged-in one)")


SHARED_FLAGS: dict[str, Callable[[argparse.ArgumentParser, Subcommand], None]] = {
    MODEL: _add_model,
    DEVICE: _add_device,
    SEED: _add_seed,
    THREADS: _add_threads,
    SAMPLING: _add_sampling,
    CHAIN: _add_chain,
    STEPS: _add_steps,
    CLASS: _add_class,
    SPEED: _add_speed,
    REWRITE: _add_rewrite,
    HUB: _add_hub,
}


def _add_shared_arguments(parser: argparse.ArgumentParser, subcommand: Subcommand) -> None:
    for group in subcommand.shared:
        SHARED_FLAGS[group](parser, subcommand)


def _resolve_model(args: argparse.Namespace, prog: str, subcommand: Subcommand) -> None:
    """``MODEL`` and ``--model MODEL`` are one option: either form, not two different values."""
    if MODEL not in subcommand.shared:
        return
    positional, option = args.model, args.model_option
    del args.model_option
    if positional is not None and option is not None and positional != option:
        raise UsageError(
            prog, f"the model is given twice, as {positional!r} and --model {option!r}: give one"
        )
    args.model = option if option is not None else positional
    if args.model is None and subcommand.model_required:
        raise UsageError(
            prog, f"a model is required: `{prog} MODEL ...` or `{prog} --model MODEL ...`"
        )


def check_device(device: str | None) -> None:
    """Raise ``ValueError`` when ``device`` is not a torch device this machine has, naming ``--device``."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)"
        ) from error
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"--device {device} asks for CUDA, but this machine has none (torch.cuda.is_available() "
                f"is False for torch {torch.__version__}); use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} CUDA device(s), 0..{count - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--device {device}: MPS is not available on this machine; use --device cpu"
        )


def _prepare(args: argparse.Namespace) -> None:
    """What every command needs before its own work: quiet HTTP logs, the thread count, a usable device."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    check_device(getattr(args, "device", None))
    set_threads(getattr(args, "threads", None))


def _external_errors() -> tuple[type[BaseException], ...]:
    from hf_ddpm.core.pushing import HubPushError, network_errors
    from hf_ddpm.sampling.sample_folder import SampleWriteError

    return (HubPushError, SampleWriteError, *network_errors())


def _report(prog: str, error: BaseException, status: int) -> int:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        raise error
    message = str(error) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    available = {
        name: spec for name, spec in SUBCOMMANDS.items() if find_spec(spec.module) is not None
    }
    parser = ArgumentParser(
        prog="hf-ddpm",
        description="DDPM for the Hugging Face ecosystem.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(available) + "}")
    chosen = argv[0] if argv and argv[0] in available else None
    for name, spec in available.items():
        p = sub.add_parser(
            name, help=spec.help, description=spec.help, formatter_class=HelpFormatter
        )
        if name == chosen:
            import_module(spec.module).add_arguments(p)
            _add_shared_arguments(p, spec)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-ddpm``; returns the exit status: 0 done, 2 a user error, 1 a Hub or network failure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(argv)
    prog = parser.prog
    try:
        args, unknown = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        prog = f"hf-ddpm {args.command}"
        if unknown:
            # said by the subcommand, whose options they were meant to be
            raise UsageError(
                prog, f"unrecognized arguments: {' '.join(unknown)} (see `{prog} --help`)"
            )
        subcommand = SUBCOMMANDS[args.command]
        _resolve_model(args, prog, subcommand)
        _prepare(args)
        return int(import_module(subcommand.module).run(args) or 0)
    except UsageError as error:
        return _report(error.prog, error, 2)
    except USER_ERRORS as error:
        return _report(prog, error, 2)
    except _external_errors() as error:
        return _report(prog, error, 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
