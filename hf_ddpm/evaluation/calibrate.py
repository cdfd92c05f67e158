"""``hf-ddpm calibrate``: the per-timestep statistic Analytic-DPM's variance needs, written into the model.

Gamma_n = E ||eps_theta(x_n, n)||^2 / d over training images x_0 and x_n ~ q(x_n | x_0) (Bao et al. 2022,
Theorem 1), one number per timestep, estimated by Monte Carlo and stored as the scheduler's
``eps_second_moment``. With it, ``variance_type="analytic"`` and ``timestep_spacing="optimal"`` work.

- :func:`eps_second_moment` estimates Gamma for any ``model(x_t, t)`` and scheduler;
- :func:`calibrate_pipeline` does it for a pipeline (a class-conditional CFG model with its null label, the
  model of p(x)) and puts the result into ``pipeline.scheduler``;
- :func:`write_eps_second_moment` stores it in a saved folder's scheduler config, atomically;
- :func:`add_arguments` / :func:`run` are the subcommand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_ddpm.core.class_layout import null_label_of
from hf_ddpm.core.model_card import MODEL_CARD, card_reference, refresh_card_facts, retarget_card
from hf_ddpm.core.parameterization import resolve_parameterization, x0_from_prediction
from hf_ddpm.core.saving import MODEL_INDEX, partial_path, write_atomically

from .bound import measure_noised_rows, unconditional_model

# The authors found M = 10 images per timestep within 0.002 bits/dim of the full training set on CIFAR-10
# (Appendix G.2). On the bundled MNIST model the optimal 10-step trajectory chosen from 32 images is within
# 0.003 bits/dim of the one from 64, from 8 images within 0.04 (docs/analytic-dpm.md); 64 costs 64 T calls.
DEFAULT_NUM_IMAGES = 64
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"


# From this many images on, the drawn noise serves as a control variate (its standard error needs M > 3,
# _control_variate_mean); with fewer, the plain mean.
CONTROL_VARIATE_FROM = 4


@dataclass
class EpsSecondMoment:
    """Gamma_n for n = 0..T-1 (``values``), the standard error of each over the images (``stderr``, NaN
    from one image), how many images they average, and at how many timesteps the estimate fell outside
    below 0 and was set to 0 (``clipped``, :func:`clip_negative_estimates`)."""

    values: np.ndarray
    stderr: np.ndarray
    num_images: int
    clipped: int = 0

    def clipping_note(self) -> str | None:
        """Why values were clipped, for the log; ``None`` if none were."""
        if not self.clipped:
            return None
        return (
            f"{self.clipped} of {len(self.values)} Gamma_n estimates from {self.num_images} image(s) fell "
            "below 0, which no second moment can (the control variate overshoots with few images), and "
            "were set to 0; more images narrow the noise"
        )


def _alphas_cumprod(scheduler: Any) -> torch.Tensor:
    """alpha-bar_n from the scheduler's float32 betas, in float64: 1 - alpha-bar near n = 0 keeps its digits."""
    return torch.cumprod(1 - scheduler.betas.double(), 0)


def _epsilon(
    scheduler: Any, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The network's epsilon whatever it predicts: x_0 from the prediction, then eps = (x_t - a x_0) / s
    (Ho et al. eq. 4); the variance channels of a learned-variance network are dropped."""
    output = output[:, : x_t.shape[1]]
    ab = _alphas_cumprod(scheduler)[t.cpu()].to(x_t.device)
    a = ab.sqrt().view(-1, *([1] * (x_t.ndim - 1)))
    s = (1 - ab).sqrt().view_as(a)
    if scheduler.config.prediction_type == "epsilon":
        return output.double()
    c_xt, c_out = resolve_parameterization(scheduler.config.prediction_type).x0_coefficients(a, s)
    x0 = x0_from_prediction(output.double(), x_t.double(), c_xt, c_out)
    return (x_t.double() - a * x0) / s


@torch.no_grad()
def eps_second_moment(
    model: Callable[..., Any],
    scheduler: Any,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    max_batch_size: int = 256,
    progress: bool = True,
) -> EpsSecondMoment:
    """Gamma_n = E ||eps_theta(x_n, n)||^2 / d for every timestep n, over ``images`` (M, C, H, W) in [-1, 1].

    Every image is noised once per timestep; one network call covers several timesteps and images, up to
    ``max_batch_size`` inputs, as :func:`hf_ddpm.variational_bound` batches its terms. ``model(x_t, t)``
    may predict epsilon, x_0 or v (the scheduler's ``prediction_type``); it is converted to epsilon. The
    drawn noise serves as a control variate (:func:`_control_variate_mean`).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty (M, C, H, W) batch, got shape {tuple(images.shape)}"
        )
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    num_timesteps = scheduler.config.num_train_timesteps
    count = images.shape[0]
    steps = torch.arange(num_timesteps, device=images.device)
    bar = tqdm(
        total=num_timesteps * count, desc="calibrating Gamma", disable=not progress, leave=False
    )

    def moments(
        out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        # Per row: ||eps_theta||^2 / d, and ||eps||^2 / d of the noise that made x_t.
        bar.update(len(t))
        eps = _epsilon(scheduler, out, x_t, t)
        return torch.stack(
            [eps.pow(2).flatten(1).mean(1), noise.double().pow(2).flatten(1).mean(1)], 1
        )

    with bar:
        rows = measure_noised_rows(
            model,
            scheduler,
            images,
            image_index=torch.arange(count, device=images.device).repeat(num_timesteps),
            timesteps=steps.repeat_interleave(count),
            rows_per_call=max_batch_size,
            measure=moments,
            generator=generator,
        )
    predicted, drawn = rows.view(num_timesteps, count, 2).permute(2, 1, 0).cpu().numpy()
    return _control_variate_mean(predicted, drawn)


def _control_variate_mean(predicted: np.ndarray, drawn: np.ndarray) -> EpsSecondMoment:
    """The mean of ``predicted`` (images x timesteps) with ``drawn`` as control variate: E ||eps||^2 / d = 1
    exactly, and where the network is good eps_theta is close to eps, so subtracting c (||eps||^2 / d - 1),
    c = Cov / Var per timestep, removes most of the chi-square noise of ||eps_theta||^2 / d (about
    sqrt(2 / d) per image) and keeps the estimate unbiased up to O(1 / M) from estimating c.

    The standard error is the regression estimator's: Var = sigma_res^2 / M * (M - 2) / (M - 3) (the
    second factor for the fitted c), with sigma_res^2 = SSR / (M - 2), so SE^2 = SSR / (M (M - 3)). Below
    ``CONTROL_VARIATE_FROM`` images that is undefined (two points fit any c exactly, leaving residuals
    of 0 up to rounding), so the plain mean is taken, with its standard error from ddof = 1 (NaN from
    one image)."""
    count = predicted.shape[0]
    if count < CONTROL_VARIATE_FROM:
        stderr = (
            predicted.std(0, ddof=1) / math.sqrt(count)
            if count > 1
            else np.full(predicted.shape[1], np.nan)
        )
        return EpsSecondMoment(predicted.mean(0), stderr, count)
    centred = drawn - drawn.mean(0)
    variance = (centred**2).mean(0)
    c = np.divide(
        (centred * (predicted - predicted.mean(0))).mean(0),
        variance,
        out=np.zeros_like(variance),
        where=variance > 0,
    )
    adjusted = predicted - c * (drawn - 1.0)
    residuals = ((adjusted - adjusted.mean(0)) ** 2).sum(0)
    return EpsSecondMoment(adjusted.mean(0), np.sqrt(residuals / (count * (count - 3))), count)


def clip_negative_estimates(gamma: np.ndarray) -> np.ndarray:
    """``gamma`` with its estimates below 0 set to 0. Gamma_n is a second moment, so never negative, but the
    control-variate estimate of few images can overshoot below 0 when c is far off; the scheduler refuses
    such a moment. At 0 the analytic variance takes E Var[x_0 | x_n] at its largest, beta-bar_n /
    alpha-bar_n (or Theorem 2's 1), the cautious end. Values above 1, or below Theorem 2's lower bound, are
    kept: they are the statistic of an imperfect network, and the sampler clips E Var itself
    (``core.analytic.expected_x0_variance``)."""
    return np.maximum(np.asarray(gamma, dtype=np.float64), 0.0)


def calibrate_pipeline(
    pipeline: Any,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    max_batch_size: int = 256,
    progress: bool = True,
) -> EpsSecondMoment:
    """Estimate Gamma for ``pipeline`` (``unet`` + an ``HFDDPMScheduler``) on training ``images`` and set
    ``pipeline.scheduler`` to the same scheduler carrying it as ``eps_second_moment`` (its variance type
    is unchanged). A class-conditional CFG model is calibrated with its null label: the analytic
    variance is then that of the unconditional model p(x), which guided sampling uses too. Estimates
    below 0 are set to 0 (:func:`clip_negative_estimates`; ``clipped`` counts them)."""
    size = pipeline.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    channels = pipeline.unet.config.in_channels
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, size, size):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not fit the model, which takes "
            f"(M, {channels}, {size}, {size})"
        )
    if "eps_second_moment" not in pipeline.scheduler.config:
        raise ValueError(
            f"calibration needs an HFDDPMScheduler, not {type(pipeline.scheduler).__name__}; load "
            "the pipeline with hf_ddpm.HFDDPMPipeline.from_pretrained"
        )
    null_label = getattr(pipeline.config, "null_class_label", None)
    num_class_embeds = getattr(pipeline.unet.config, "num_class_embeds", None)
    if num_class_embeds and null_label is None:
        raise ValueError(
            "this class-conditional model records no null label (null_class_label in model_index.json), "
            "so it has no model of p(x) to calibrate: the analytic variance needs the unconditional "
            "network of classifier-free guidance. If it was trained with label dropout and its null label "
            f"is {null_label_of(num_class_embeds)} (hf-ddpm train's layout), set pipe.register_to_config("
            f"null_class_label={null_label_of(num_class_embeds)}), save it, and calibrate again"
        )
    device = pipeline.unet.device
    result = eps_second_moment(
        unconditional_model(pipeline.unet, null_label),
        pipeline.scheduler,
        images.to(device),
        generator=generator,
        max_batch_size=max_batch_size,
        progress=progress,
    )
    values = clip_negative_estimates(result.values)
    result = EpsSecondMoment(
        values, result.stderr, result.num_images, int(np.sum(values != result.values))
    )
    pipeline.scheduler = type(pipeline.scheduler).from_config(
        pipeline.scheduler.config, eps_second_moment=values.tolist()
    )
    return result


def write_eps_second_moment(
    folder: str | os.PathLike, values: np.ndarray | list[float], set_default: bool = False
) -> Path:
    """Write ``eps_second_moment`` into ``folder``'s scheduler/scheduler_config.json (and
    ``variance_type="analytic"`` with ``set_default``) atomically (:func:`.saving.write_atomically`), so an
    interrupted write leaves the old config whole. Returns the config's path."""
    path = Path(folder) / SCHEDULER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {SCHEDULER_CONFIG} in {folder}: not a saved pipeline folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("num_train_timesteps", len(values)) != len(values):
        raise ValueError(
            f"{len(values)} moments for a scheduler of num_train_timesteps="
            f"{config['num_train_timesteps']}"
        )
    config["eps_second_moment"] = [float(v) for v in values]
    if set_default:
        config["variance_type"] = "analytic"
    write_atomically(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def _restate_card(folder: Path, reference: str | None = None) -> None:
    """Make the card of the calibrated ``folder`` (if it has one) state its scheduler config as it now
    is (``refresh_card_facts``: ``--set-default`` changes the variance type) and, for a copy, name the
    copy (``reference``, as ``card_reference`` gives it) rather than the model it was copied from."""
    card = Path(folder) / MODEL_CARD
    if not card.is_file():
        return
    text = refresh_card_facts(card.read_text(encoding="utf-8"), Path(folder))
    write_atomically(card, text if reference is None else retarget_card(text, reference))


def _write_calibrated_copy(
    source: Path, output: Path, values: np.ndarray, set_default: bool
) -> Path:
    """``hf-ddpm calibrate --output``: what an upload of ``source`` holds (``uploaded_files``: no
    checkpoints, no logs) with the calibration written in, as the new folder ``output``. It is made in a
    hidden folder beside ``output`` and renamed into place whole, so a failure (a full disk) leaves no
    half folder there. Returns the written scheduler config's path.

    Raises:
        OSError: a copy or write failed, as ``OSError(errno, strerror, output)`` (its ``filename`` is
            ``output``, not the hidden folder's file); nothing is left behind.
    """
    from hf_ddpm.core.pushing import uploaded_files

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(output)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for name in uploaded_files(source):
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, partial / name)
        write_eps_second_moment(partial, values, set_default=set_default)
        _restate_card(partial, card_reference(output))
        partial.rename(output)  # onto nothing, or an empty folder
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if error.errno is None:
            raise
        # Named by --output, not by the file of the hidden folder that failed.
        strerror = error.strerror or os.strerror(error.errno)
        raise OSError(error.errno, strerror, str(output)) from error
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return output / SCHEDULER_CONFIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hf-ddpm calibrate`` options."""
    from hf_ddpm.data.held_out import add_data_arguments

    add_data_arguments(parser, "train", "split to calibrate on")
    parser.add_argument(
        "--num-images",
        type=int,
        default=DEFAULT_NUM_IMAGES,
        metavar="M",
        help=f"training images, each noised at every timestep (default: {DEFAULT_NUM_IMAGES}; "
        "Bao et al. find 10 nearly enough)",
    )
    parser.add_argument(
        "--set-default",
        action="store_true",
        help='also make variance_type "analytic" the saved default',
    )
    parser.add_argument("--batch-size", type=int, default=256, help="network inputs per call")


def run(args: argparse.Namespace) -> int:
    """Run ``hf-ddpm calibrate``. Bad input is raised before the long loop, and cli.py reports it as one
    line with exit status 2."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.pushing import push_folder_to_hub
    from hf_ddpm.data.held_out import load_reference
    from hf_ddpm.hub.loading import resolve_pipeline_folder

    from .data_options import resolve_data_flags

    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    local = Path(args.model).is_dir()
    repo_id = args.hub_model_id or (None if local else args.model)
    if args.push_to_hub and repo_id is None:
        raise ValueError("--push-to-hub with a local folder needs --hub-model-id")
    if args.output is None and not local:
        raise ValueError(f"{args.model} is a Hub repo: pass --output FOLDER to write to")
    source = resolve_pipeline_folder(args.model)
    output = Path(args.output) if args.output else source
    copying = output.resolve() != source.resolve()
    if copying and output.exists() and (not output.is_dir() or any(output.iterdir())):
        held = "is a file" if not output.is_dir() else "already exists and holds files"
        in_place = (
            f", or calibrate the model there in place with `hf-ddpm calibrate {output}`"
            if (output / MODEL_INDEX).is_file()
            else ""
        )
        raise ValueError(f"--output {output} {held}; give a new or empty folder{in_place}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = HFDDPMPipeline.from_pretrained(source).to(device)
    resolve_data_flags(args, "calibrate")
    size = pipeline.unet.config.sample_size
    reference = load_reference(
        size if isinstance(size, int) else size[0],
        args.dataset,
        args.train_data_dir,
        args.split,
        args.image_column,
        args.num_images,
        skip_bad_images=args.skip_bad_images,
    )
    generator = torch.Generator(device).manual_seed(args.seed)
    result = calibrate_pipeline(
        pipeline, reference.images, generator=generator, max_batch_size=args.batch_size
    )
    if copying:
        path = _write_calibrated_copy(source, output, result.values, args.set_default)
    else:
        path = write_eps_second_moment(output, result.values, set_default=args.set_default)
        _restate_card(output)
    if result.num_images > 1:
        worst = int(np.nanargmax(result.stderr))
        spread = f"largest standard error {result.stderr[worst]:.2g} at n={worst}"
    else:
        spread = "no standard error from one image"
    print(
        f"Gamma_n over {result.num_images} images of {reference.name!r} ({reference.split}) written to "
        f"{path}: from {result.values[0]:.4f} at n=0 to {result.values[-1]:.4f} at n="
        f"{len(result.values) - 1}; {spread}"
        + ("; variance_type is now 'analytic'" if args.set_default else "")
    )
    if result.clipping_note():
        print(f"note: {result.clipping_note()}")
    if args.push_to_hub:
        url = push_folder_to_hub(
            output,
            repo_id,
            token=args.hub_token,
            commit_message="Add eps_second_moment (hf-ddpm calibrate)",
        )
        print(f"pushed: {url}")
    return 0
