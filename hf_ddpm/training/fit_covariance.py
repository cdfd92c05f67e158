"""``hf-ddpm fit-covariance``: fit SN-DDPM's or NPR-DDPM's covariance head on a trained model's frozen UNet.

Bao et al. (ICML 2022, "Estimating the Optimal Covariance with Imperfect Mean") keep the noise-prediction
network fixed and train only a small head on its last feature map (:mod:`hf_ddpm.core.covariance_head`) to
predict, per pixel, E[eps^2 | x_t] (``--kind sn``) or E[(eps - eps_theta)^2 | x_t] (``--kind npr``), with
Adam at 1e-4 as in their configs. The result is the same pipeline with the head as its ``covariance_head``
component and the scheduler's ``variance_type`` set to the kind, so it samples with the head by default.

- The UNet gets no gradients (``requires_grad_(False)``); its features and eps_theta come from one call.
- Timesteps are uniform over the T training steps; a class-conditional model trained with label dropout
  is fitted under its null label (its model of p(x)), as ``hf-ddpm calibrate`` is.
- Exact resume: the data order of epoch e comes from ``(seed, e)`` and each step's timesteps and noise
  from ``(seed, step)`` (``training/determinism.py``), so a checkpoint (head, optimizer, step, losses;
  ``training/checkpointing.py``'s atomic, manifest-checked folders) is all a resumed run needs to
  continue bit for bit. The checkpoints and the loss log go to ``--output``'s ``covariance-head/``
  (``HEAD_CHECKPOINTS``), never beside a training run's own ``checkpoint-N`` folders, whose numbers they
  share and which the fit's pruning would delete.
- The fitted pipeline replaces ``--output``'s pipeline component by component, each renamed into place,
  in an order that keeps the folder loadable at every moment; a failed push leaves it whole.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hf_ddpm.core.covariance_head import HEAD_TARGETS, CovarianceHead, head_loss, unet_features
from hf_ddpm.core.model_card import (
    MODEL_CARD,
    SAMPLE_GRID,
    card_reference,
    refresh_card_facts,
    retarget_card,
)
from hf_ddpm.core.pushing import HEAD_CHECKPOINTS, push_folder_to_hub
from hf_ddpm.core.saving import MODEL_INDEX, pipeline_options, write_atomically
from hf_ddpm.core.variance import HEAD_VARIANCE_TYPES, LEARNED_VARIANCE_TYPES
from hf_ddpm.evaluation.bound import unconditional_label

from .checkpointing import (
    HEAD_FIT_GROUPS,
    flatten_state,
    load_checkpoint,
    prune_checkpoints,
    rename_into_place,
    resolve_resume,
    save_checkpoint,
    unflatten_state,
)
from .determinism import NOISE, EpochBatchSampler, derive_seed

COMMAND = "hf-ddpm fit-covariance"
DEFAULT_LEARNING_RATE = 1e-4  # Bao et al.'s configs (Adam, 1e-4)
LOSS_LOG = "fit_covariance_log.jsonl"
# The options a resumed fit must share with the checkpoint's for the result to be the uninterrupted one.
_RESUMED_OPTIONS = ("kind", "batch_size", "learning_rate", "seed")


@dataclass(frozen=True)
class FitOptions:
    """What ``hf-ddpm fit-covariance`` fits, and how (the flags of the same names)."""

    kind: str
    max_steps: int = 2000
    batch_size: int = 128
    learning_rate: float = DEFAULT_LEARNING_RATE
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 2

    def __post_init__(self) -> None:
        if self.kind not in HEAD_VARIANCE_TYPES:
            raise ValueError(
                f"{COMMAND}: --kind must be one of {', '.join(HEAD_VARIANCE_TYPES)}, got {self.kind!r}"
            )
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{COMMAND}: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not self.learning_rate > 0:
            raise ValueError(f"{COMMAND}: --learning-rate must be > 0, got {self.learning_rate}")


@dataclass
class FitResult:
    """The fitted head, the step it reached, and the mean loss of each logged window ``(step, loss)``."""

    head: CovarianceHead
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)


def check_fittable(pipeline: Any) -> None:
    """Raise a ValueError naming ``hf-ddpm fit-covariance`` unless ``pipeline`` has a UNet whose output is
    eps alone: a learned variance already predicts Sigma, and a head is fitted on eps_theta."""
    scheduler, unet = pipeline.scheduler, pipeline.unet
    variance_type = getattr(scheduler.config, "variance_type", None)
    if (
        variance_type in LEARNED_VARIANCE_TYPES
        or unet.config.out_channels != unet.config.in_channels
    ):
        raise ValueError(
            f"{COMMAND} fits a covariance head beside a UNet that predicts the mean only, but this model "
            f"learned its variance (variance_type {variance_type!r}, out_channels "
            f"{unet.config.out_channels} for {unet.config.in_channels} input channels): it needs no head"
        )
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise ValueError(
            f"{COMMAND} needs a UNet that predicts epsilon (SN and NPR read eps_theta), this one predicts "
            f"{prediction_type!r}"
        )


def _batches(images: torch.Tensor, options: FitOptions, start: int) -> Iterator[torch.Tensor]:
    order = EpochBatchSampler(len(images), options.batch_size, 1, 0, options.seed, start)
    for indices in order:
        yield images[indices]


def fit_covariance_head(
    pipeline: Any,
    images: torch.Tensor,
    options: FitOptions,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | None = None,
    progress: bool = True,
) -> FitResult:
    """Fit a fresh :class:`CovarianceHead` (or continue a checkpointed fit) on ``pipeline``'s frozen UNet,
    with training ``images`` (N, C, H, W) in [-1, 1].

    Args:
        checkpoint_dir: where ``checkpoint-N`` folders and the loss log go every
            ``options.checkpoint_every`` steps (and at the end), a folder of their own (a model folder's
            ``HEAD_CHECKPOINTS``): older checkpoints in it are pruned. None keeps none.
        resume_from: ``"latest"`` (a fresh start when there is none yet) or a checkpoint folder.
    """
    check_fittable(pipeline)
    unet, scheduler = pipeline.unet, pipeline.scheduler
    device = unet.device
    unet.requires_grad_(False).eval()
    label = unconditional_label(unet, getattr(pipeline.config, "null_class_label", None))
    head = CovarianceHead.for_unet(unet, kind=options.kind).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=options.learning_rate)
    target = HEAD_TARGETS[options.kind]
    num_timesteps = scheduler.config.num_train_timesteps
    step, losses, window = 0, [], []
    resume = (
        resolve_resume(checkpoint_dir, resume_from, HEAD_FIT_GROUPS)
        if checkpoint_dir is not None
        else None
    )
    if resume is not None:
        step, losses, window = _restore(resume, head, optimizer, options)
    images = images.to(device)
    bar = tqdm(
        total=options.max_steps, initial=step, desc=f"fit {options.kind} head", disable=not progress
    )
    batches = _batches(images, options, step)
    while step < options.max_steps:
        x0 = next(batches)
        generator = torch.Generator().manual_seed(derive_seed(options.seed, NOISE, step))
        t = torch.randint(0, num_timesteps, (len(x0),), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        x_t = scheduler.add_noise(x0, eps, t)
        kwargs = {} if label is None else {"class_labels": torch.full_like(t, label)}
        with torch.no_grad(), unet_features(unet) as features:
            eps_prediction = unet(x_t.to(unet.dtype), t, **kwargs).sample
        loss = head_loss(target, head(features[-1].to(head.dtype)), eps, eps_prediction).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window.append(loss.detach())
        bar.update(1)
        if step % options.log_every == 0 or step == options.max_steps:
            losses.append((step, float(torch.stack(window).mean())))
            window = []
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
            if checkpoint_dir is not None:
                _append_log(Path(checkpoint_dir), options.kind, *losses[-1])
        if checkpoint_dir is not None and (
            step % options.checkpoint_every == 0 or step == options.max_steps
        ):
            _save(Path(checkpoint_dir), step, head, optimizer, options, losses, window)
    bar.close()
    return FitResult(head.eval(), step, losses)


def _save(
    folder: Path,
    step: int,
    head: CovarianceHead,
    optimizer: torch.optim.Optimizer,
    options: FitOptions,
    losses: list[tuple[int, float]],
    window: list[torch.Tensor],
) -> None:
    skeleton, tensors = flatten_state(optimizer.state_dict())
    state = {
        "step": step,
        "options": asdict(options),
        "head_config": dict(head.config),
        "optimizer": skeleton,
        "losses": losses,
        # The losses since the last logged window, so a resumed run logs the same windows.
        "window": [loss.item() for loss in window],
    }
    # HEAD_FIT_GROUPS, each of which a resume requires.
    save_checkpoint(folder, step, {"head": head.state_dict(), "optimizer": tensors}, state)
    prune_checkpoints(folder, options.checkpoints_total_limit)


def _restore(
    path: Path, head: CovarianceHead, optimizer: torch.optim.Optimizer, options: FitOptions
) -> tuple[int, list[tuple[int, float]], list[torch.Tensor]]:
    tensors, state = load_checkpoint(path, HEAD_FIT_GROUPS)
    if "head_config" not in state:
        raise ValueError(f"{COMMAND}: {path} is not a fit-covariance checkpoint")
    saved = state["options"]
    changed = [name for name in _RESUMED_OPTIONS if saved.get(name) != getattr(options, name)]
    if changed:
        said = ", ".join(
            f"--{n.replace('_', '-')} {saved[n]} (now {getattr(options, n)})" for n in changed
        )
        raise ValueError(
            f"{COMMAND}: {path} was fitted with {said}; resume with the same options, or start afresh "
            "in another --output"
        )
    head.load_state_dict(tensors["head"])
    optimizer.load_state_dict(unflatten_state(state["optimizer"], tensors["optimizer"]))
    losses = [(int(s), float(v)) for s, v in state["losses"]]
    return int(state["step"]), losses, [torch.tensor(v) for v in state["window"]]


def _append_log(folder: Path, kind: str, step: int, loss: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOSS_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps({"kind": kind, "step": step, "loss": loss}) + "\n")


def with_head(pipeline: Any, head: CovarianceHead, kind: str) -> Any:
    """``pipeline`` (same class, UNet and options) with ``head`` and its scheduler's variance_type ``kind``."""
    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, variance_type=kind)
    components = {**pipeline.components, "scheduler": scheduler, "covariance_head": head}
    fitted = type(pipeline)(**components, **pipeline_options(pipeline))
    # Keep the folder it came from: a save carries its card, grids and training files.
    fitted.register_to_config(_name_or_path=getattr(pipeline.config, "_name_or_path", None))
    return fitted


def write_pipeline(pipeline: Any, output: str | os.PathLike) -> Path:
    """Save ``pipeline`` into ``output`` without ever leaving a half-written component there.

    The pipeline is saved to a temporary sibling folder; then each of its entries is renamed over the old
    one: the code and weights first, ``model_index.json`` (which declares the head) next, the scheduler
    (whose variance type asks for the head) last. At every moment the folder is a loadable pipeline, and
    entries it held besides the pipeline (checkpoints, logs) stay.

    The card carried from the source names ``output`` (as given) and states the new configs, the head
    among them (``refresh_card_facts``). The carried samples.png is dropped, in ``output`` too: it shows
    the variance the model sampled with before, and redrawing it would add a sampling run (the grid's
    images x T UNet calls) to every fit, which ``hf-ddpm sample`` does on request."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.fit-"))
    try:
        pipeline.save_pretrained(tmp)
        (tmp / SAMPLE_GRID).unlink(missing_ok=True)
        card = tmp / MODEL_CARD
        text = refresh_card_facts(card.read_text(encoding="utf-8"), tmp)
        write_atomically(card, retarget_card(text, card_reference(output)))
        last = [MODEL_INDEX, "scheduler"]
        entries = sorted(p.name for p in tmp.iterdir() if p.name not in last)
        for name in [*entries, *last]:
            source = tmp / name
            if source.is_dir():
                rename_into_place(source, output / name)
            else:
                os.replace(source, output / name)
        (output / SAMPLE_GRID).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``hf-ddpm fit-covariance`` options."""
    from hf_ddpm.data.held_out import add_data_arguments

    add_data_arguments(parser, "train", "split to fit on")
    parser.add_argument(
        "--kind",
        required=True,
        choices=HEAD_VARIANCE_TYPES,
        help="sn: the head predicts E[eps^2 | x_t]; npr: E[(eps - eps_theta)^2 | x_t] (the better "
        "bound, Bao et al. 2022)",
    )
    defaults = FitOptions(kind=HEAD_VARIANCE_TYPES[0])
    parser.add_argument(
        "--max-steps", type=int, default=defaults.max_steps, help="optimizer steps to fit for"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="training images per step"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="Adam's learning rate (Bao et al. use 1e-4)",
    )
    parser.add_argument(
        "--log-every", type=int, default=defaults.log_every, help="steps per line of the loss log"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=defaults.checkpoint_every,
        help=f"steps between checkpoints (in --output's {HEAD_CHECKPOINTS}/)",
    )
    parser.add_argument(
        "--max-train-images",
        type=int,
        default=None,
        help="use only the first N images of the split",
    )
    parser.add_argument(
        "--resume-from-checkpoint",
        default=None,
        help=f"'latest' (in --output's {HEAD_CHECKPOINTS}/; a fresh start if none) or a checkpoint-N "
        "folder",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``hf-ddpm fit-covariance``; bad input is raised before the first step (cli.py: one line, exit 2)."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.data.held_out import load_reference
    from hf_ddpm.evaluation.data_options import resolve_data_flags
    from hf_ddpm.hub.loading import resolve_pipeline_folder

    options = FitOptions(
        kind=args.kind,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
    )
    local = Path(args.model).is_dir()
    repo_id = args.hub_model_id or (None if local else args.model)
    if args.push_to_hub and repo_id is None:
        raise ValueError("--push-to-hub with a local folder needs --hub-model-id")
    if args.output is None and not local:
        raise ValueError(f"{args.model} is a Hub repo: pass --output FOLDER to write to")
    source = resolve_pipeline_folder(args.model)
    output = Path(args.output) if args.output else source
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = HFDDPMPipeline.from_pretrained(source).to(device)
    check_fittable(pipeline)
    resolve_data_flags(args, "fit-covariance")
    size = pipeline.unet.config.sample_size
    reference = load_reference(
        size if isinstance(size, int) else size[0],
        args.dataset,
        args.train_data_dir,
        args.split,
        args.image_column,
        args.max_train_images,
        skip_bad_images=args.skip_bad_images,
    )
    result = fit_covariance_head(
        pipeline,
        reference.images,
        options,
        checkpoint_dir=output / HEAD_CHECKPOINTS,
        resume_from=args.resume_from_checkpoint,
    )
    write_pipeline(with_head(pipeline, result.head, options.kind), output)
    final = f"; final loss {result.losses[-1][1]:.4f}" if result.losses else ""
    print(
        f"{options.kind} covariance head fitted for {result.step} steps on {len(reference.images)} images "
        f"of {reference.name!r} ({reference.split}){final}; written to {output} (variance_type "
        f"{options.kind!r}, loss log in {output / HEAD_CHECKPOINTS / LOSS_LOG})"
    )
    if args.push_to_hub:
        url = push_folder_to_hub(
            output,
            repo_id,
            token=args.hub_token,
            commit_message=f"Add an {options.kind} covariance head ({COMMAND})",
        )
        print(f"pushed: {url}")
    return 0
