"""The end of a training run: the trained pipeline is saved first, then the extras, none of which can cost it.

:func:`finish_run` (main process, after the last collective) saves the EMA pipeline into ``--output-dir``
through a hidden temporary folder (:func:`save_final_pipeline`), so a failed write leaves no half
pipeline and keeps a previous one; a transient error is retried once, as for checkpoints. Then it runs each of :data:`EXTRAS` that the options ask for, in order.
An extra that fails (for any reason: the Hub is down, the disk is full, a bug) is one warning that names
the command which does it again, the next extra still runs, and ``hf-ddpm train`` exits with
``EXIT_PARTIAL``: the model is there, something around it is missing. A stop signal between extras skips
the remaining ones, each reported the same way. Adding an extra is one entry of :data:`EXTRAS`.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_ddpm.core.model_card import MODEL_CARD, SAMPLE_GRID, card_reference, retarget_card
from hf_ddpm.core.pushing import HEAD_CHECKPOINTS
from hf_ddpm.core.saving import MODEL_INDEX, write_atomically, write_model_card

from .checkpointing import TMP_PREFIX, OutputWriteError, checkpoint_path, retry_once_if_transient
from .reporting import LossLog, SampleGrids, card_description, grid_sampling
from .setup import TrainingSetup
from .train_config import TrainConfig

if TYPE_CHECKING:
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    from .fit_covariance import FitOptions
    from .hub_checkpoints import HubCheckpointUploader
    from .preemption import StopSignals

logger = logging.getLogger(__name__)

# Exit status of a run whose model is trained and saved but one of its extras failed (the warnings say
# which, and how to redo it).
EXIT_PARTIAL = 3
# The hidden folders the final pipeline is written into before it is moved into place; the checkpoint
# prefix, so that pruning and --overwrite-output-dir clean up after a crash.
_PIPELINE_TMP = f"{TMP_PREFIX}pipeline-"
_PIPELINE_OLD = f"{TMP_PREFIX}previous-pipeline-"


@dataclass
class FinalRun:
    """What the extras of a finished run share: the setup, the saved pipeline, its card's fields, and
    what they report back (the Hub commit URL, failed checkpoint uploads)."""

    setup: TrainingSetup
    pipeline: HFDDPMPipeline
    step: int
    card: dict[str, Any]
    uploader: HubCheckpointUploader | None = None
    # The last --eval-every evaluation's report, written into the card's model-index.
    last_evaluation: dict[str, Any] | None = None
    hub_url: str | None = None
    checkpoint_push_errors: list[str] = field(default_factory=list)

    @property
    def config(self) -> TrainConfig:
        return self.setup.config

    @property
    def output_dir(self) -> Path:
        return self.setup.output_dir


@dataclass(frozen=True)
class Extra:
    """One thing done after the pipeline is saved.

    Attributes:
        name: what the warning calls it.
        wanted: whether the options ask for it.
        run: does it (raises on failure).
        redo: the command that does it again on the saved folder.
    """

    name: str
    wanted: Callable[[TrainConfig], bool]
    run: Callable[[FinalRun], None]
    redo: Callable[[FinalRun], str]


def _data_flags(config: TrainConfig) -> list[str]:
    """The data options of ``hf-ddpm calibrate`` that read the images this run trained on."""
    if config.train_data_dir is not None:
        flags = ["--train-data-dir", config.train_data_dir]
    else:
        flags = ["--dataset", config.dataset, "--split", config.split]
        if config.image_column is not None:
            flags += ["--image-column", config.image_column]
    return flags + (["--skip-bad-images"] if config.skip_bad_images else [])


def _calibration_images(setup: TrainingSetup) -> int:
    """How many training images the end-of-run calibration noises at every timestep: the first
    ``--calibrate-images``, or 0 where it is skipped (a class-conditional model trained without label
    dropout has no model of p(x) to calibrate)."""
    if setup.null_label is not None and setup.config.class_dropout == 0:
        return 0
    return min(setup.config.calibrate_images, len(setup.data))


def end_of_run_network_work(setup: TrainingSetup) -> list[tuple[str, int]]:
    """The extras the options ask for that run the network many times, each as (what it is, in words;
    images through the UNet): the calibration (M x T) and the covariance head fit (its steps x its
    batch). For the start-up time estimate (``reporting.RunTimeEstimate``)."""
    config, work = setup.config, []
    count = _calibration_images(setup) if config.calibrate else 0
    if count:
        calls = count * config.num_train_timesteps
        work.append(
            (
                f"the calibration ({count} x {config.num_train_timesteps} = {calls:,} network calls)",
                calls,
            )
        )
    if config.covariance_head is not None:
        options = _head_fit_options(setup)
        work.append(
            (
                f"the {options.kind} covariance head fit ({options.max_steps} steps of "
                f"{options.batch_size} images)",
                options.max_steps * options.batch_size,
            )
        )
    return work


def _calibrate(run: FinalRun) -> None:
    """Give the saved scheduler Analytic-DPM's ``eps_second_moment`` (``hf-ddpm calibrate``'s statistic)
    from the first ``--calibrate-images`` training images, as the training transform gives them, so the
    saved and pushed model samples well in few steps."""
    import torch

    from hf_ddpm.data.image_datasets import collate
    from hf_ddpm.evaluation.calibrate import calibrate_pipeline, write_eps_second_moment

    setup, config = run.setup, run.config
    count = _calibration_images(setup)
    if count == 0:
        logger.info(
            "calibration skipped: a class-conditional model trained without --class-dropout has no "
            "model of p(x) (its null label) to calibrate"
        )
        return
    logger.info(
        "calibrating Analytic-DPM's eps_second_moment on %d training images: %d x %d = %d network "
        "calls (--no-calibrate skips it)",
        count,
        count,
        config.num_train_timesteps,
        count * config.num_train_timesteps,
    )
    images = collate([setup.train_data[i] for i in range(count)])["pixel_values"]
    setup.ema_unet.eval()
    generator = torch.Generator(setup.accelerator.device).manual_seed(config.seed)
    result = calibrate_pipeline(run.pipeline, images, generator=generator)
    if result.clipping_note():
        logger.warning("calibration: %s", result.clipping_note())
    write_eps_second_moment(run.output_dir, result.values)


def _calibrate_command(run: FinalRun) -> str:
    config = run.config
    return shlex.join(
        ["hf-ddpm", "calibrate", str(run.output_dir), "--num-images", str(config.calibrate_images)]
        + _data_flags(config)
        + ["--seed", str(config.seed)]
    )


def _head_fit_options(setup: TrainingSetup) -> FitOptions:
    """The head fit of ``--covariance-head``: ``--covariance-head-steps`` steps, the run's batch size
    (at most its image count) and seed; the fit, its redo command and the time estimate read these."""
    from .fit_covariance import FitOptions

    config = setup.config
    return FitOptions(
        kind=config.covariance_head,
        max_steps=config.covariance_head_steps,
        batch_size=min(config.batch_size, len(setup.data)),
        seed=config.seed,
    )


def _fit_head(run: FinalRun) -> None:
    """Fit an SN / NPR covariance head on the EMA UNet (``hf-ddpm fit-covariance`` with
    :func:`_head_fit_options`, all training images) and save the pipeline again with it and its
    scheduler's variance type set to that kind. Its checkpoints go to ``HEAD_CHECKPOINTS`` in the output
    folder, where ``hf-ddpm fit-covariance`` looks for them, so the redo command resumes an interrupted
    fit."""
    from hf_ddpm.data.image_datasets import collate

    from .fit_covariance import fit_covariance_head, with_head

    setup = run.setup
    options = _head_fit_options(setup)
    logger.info("fitting the %s covariance head: %d steps", options.kind, options.max_steps)
    images = collate([setup.train_data[i] for i in range(len(setup.train_data))])
    result = fit_covariance_head(
        run.pipeline,
        images["pixel_values"],
        options,
        checkpoint_dir=run.output_dir / HEAD_CHECKPOINTS,
        resume_from="latest",
    )
    run.pipeline = with_head(run.pipeline, result.head, options.kind)
    save_final_pipeline(run.pipeline, run.output_dir, run.card)


def _fit_head_command(run: FinalRun) -> str:
    """``hf-ddpm fit-covariance`` on the saved folder with the options a resumed fit must share (its
    ``--output`` is the folder, so it resumes from the fit's own checkpoints)."""
    options = _head_fit_options(run.setup)
    return shlex.join(
        ["hf-ddpm", "fit-covariance", str(run.output_dir), "--kind", options.kind]
        + ["--max-steps", str(options.max_steps), "--batch-size", str(options.batch_size)]
        + ["--learning-rate", repr(options.learning_rate)]
        + _data_flags(run.config)
        + ["--seed", str(options.seed), "--output", str(run.output_dir)]
        + ["--resume-from-checkpoint", "latest"]
    )


def _final_grid(run: FinalRun) -> None:
    """samples.png, drawn as ``hf-ddpm sample`` will (analytic where the model is calibrated), and the
    card redrawn to show it."""
    from hf_ddpm.data.image_grid import save_png_atomically

    grid = SampleGrids(run.setup).grid(grid_sampling(run.setup, run.pipeline.scheduler))
    save_png_atomically(grid, run.output_dir / SAMPLE_GRID)
    write_model_card(run.output_dir, **run.card)


def _sample_command(run: FinalRun) -> str:
    config = run.config
    flags = ["--num-images", str(config.num_samples), "--seed", str(config.seed)]
    if config.sample_steps is not None:
        flags += ["--num-inference-steps", str(config.sample_steps)]
    out = run.output_dir
    return shlex.join(["hf-ddpm", "sample", str(out), *flags, "--output", str(out / SAMPLE_GRID)])


def _card_metrics(run: FinalRun) -> None:
    """The last evaluation's figures in the model card's model-index, as ``hf-ddpm evaluate
    --push-to-hub`` writes them."""
    from hf_ddpm.hub.metrics_card import write_metrics_to_card

    if run.last_evaluation is not None:
        name = run.config.hub_model_id or run.output_dir.name
        write_metrics_to_card(run.output_dir, run.last_evaluation, name)


def _evaluate_command(run: FinalRun) -> str:
    config = run.config
    return shlex.join(
        ["hf-ddpm", "evaluate", str(run.output_dir), "--metrics", config.eval_metrics]
        + _data_flags(config)
        + ["--push-to-hub"] * config.push_to_hub
    )


def _push(run: FinalRun) -> None:
    """Upload the saved folder (``core.pushing.UPLOAD_EXCLUDED`` left out: no checkpoints, no logs) after
    any queued checkpoint uploads, so the repo ends on the pipeline."""
    from hf_ddpm.core.pushing import push_folder_to_hub

    config = run.config
    if run.uploader is not None:
        run.checkpoint_push_errors = list(run.uploader.wait())
    run.hub_url = push_folder_to_hub(
        run.output_dir,
        config.hub_model_id,
        private=config.hub_private,
        token=config.hub_token,
        commit_message=f"hf-ddpm train: step {run.step}",
    )


def _push_command(run: FinalRun) -> str:
    from hf_ddpm.core.pushing import upload_command

    return upload_command(run.output_dir, run.config.hub_model_id, private=run.config.hub_private)


# In order: the grid samples with the calibrated variance (or the head), the push uploads what the others
# wrote.
EXTRAS: tuple[Extra, ...] = (
    Extra("calibration", lambda c: c.calibrate, _calibrate, _calibrate_command),
    Extra(
        "the covariance head fit",
        lambda c: c.covariance_head is not None,
        _fit_head,
        _fit_head_command,
    ),
    Extra("the final sample grid", lambda c: c.grid, _final_grid, _sample_command),
    # After the grid, which writes the card anew.
    Extra(
        "the evaluation in the model card",
        lambda c: c.eval_every > 0,
        _card_metrics,
        _evaluate_command,
    ),
    Extra("the push to the Hub", lambda c: c.push_to_hub, _push, _push_command),
)


def save_final_pipeline(pipeline: HFDDPMPipeline, output_dir: Path, card: dict[str, Any]) -> None:
    """Save ``pipeline`` with its card into ``output_dir`` (which also holds checkpoints and logs) so
    that no failure leaves half a pipeline there: it is written into a hidden folder, then the previous
    pipeline's entries are moved aside (``model_index.json`` first, so the folder stops being a pipeline)
    and the new ones moved in (``model_index.json`` last). A failed write (a full disk) or a failed move
    removes the new files and puts the previous pipeline back by renames, then raises; only a file system
    that refuses every rename as well could leave the folder without ``model_index.json``."""
    tmp = output_dir / f"{_PIPELINE_TMP}{os.getpid()}"
    old = output_dir / f"{_PIPELINE_OLD}{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        pipeline.save_pretrained(tmp, **card)
        # The card is made from the new configs (classes, null label) but names the hidden folder.
        tmp_card = tmp / MODEL_CARD
        reference = card_reference(output_dir, card.get("repo_id"))
        write_atomically(tmp_card, retarget_card(tmp_card.read_text(encoding="utf-8"), reference))
        names = sorted((p.name for p in tmp.iterdir()), key=lambda name: name == MODEL_INDEX)
        old.mkdir()
        for name in [MODEL_INDEX, *names]:
            if (output_dir / name).exists() and name not in moved_aside:
                (output_dir / name).rename(old / name)
                moved_aside.append(name)
        for name in names:
            moved_in.append(name)
            (tmp / name).rename(output_dir / name)
    except BaseException:
        _put_back(output_dir, old, moved_in, moved_aside)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _put_back(output_dir: Path, old: Path, moved_in: list[str], moved_aside: list[str]) -> None:
    """Undo a partial :func:`save_final_pipeline`: what was moved in goes, what was moved aside comes back
    (``model_index.json`` last, so the folder is a pipeline again only once it is whole)."""
    for name in moved_in:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for name in sorted(moved_aside, key=lambda name: name == MODEL_INDEX):
        (old / name).rename(output_dir / name)
    shutil.rmtree(old, ignore_errors=True)


def final_pipeline(setup: TrainingSetup) -> HFDDPMPipeline:
    """The EMA weights as a pipeline; with label dropout the null label was trained, so it samples p(x)
    without labels."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    setup.ema.copy_to(setup.ema_unet)
    null_label = setup.null_label if setup.config.class_dropout > 0 else None
    return HFDDPMPipeline(
        unet=setup.ema_unet,
        scheduler=setup.scheduler,
        null_class_label=null_label,
        class_names=setup.data.class_names,
    )


def card_fields(setup: TrainingSetup, step: int, losses: LossLog) -> dict[str, Any]:
    """The model card's fields for ``save_pretrained`` / ``write_model_card``."""
    from hf_ddpm.data.bundled_datasets import BUNDLED_DATASETS

    config = setup.config
    hub_dataset = config.train_data_dir is None and config.dataset not in BUNDLED_DATASETS
    return {
        "repo_id": config.hub_model_id,
        "datasets": [config.dataset] if hub_dataset else None,
        "tags": [
            "unconditional-image-generation" if setup.null_label is None else "class-conditional"
        ],
        "description": card_description(setup, step, losses),
    }


def finish_run(
    setup: TrainingSetup,
    step: int,
    losses: LossLog,
    uploader: HubCheckpointUploader | None,
    stop: StopSignals,
    last_evaluation: dict[str, Any] | None = None,
) -> tuple[FinalRun, list[str]]:
    """Save the final pipeline (retried once after a transient error, as checkpoints are; a failure
    raises ``OutputWriteError``: there is no model), then run the wanted extras; returns the run and
    one warning per extra that failed or was skipped by a stop signal."""
    pipeline = final_pipeline(setup)
    card = card_fields(setup, step, losses)
    try:
        retry_once_if_transient(
            lambda: save_final_pipeline(pipeline, setup.output_dir, card), "the final pipeline"
        )
    except OSError as error:
        raise OutputWriteError(
            f"writing the final pipeline into {setup.output_dir} failed: {error}; the previous files "
            f"there are as they were, and {checkpoint_path(setup.output_dir, step)} holds the trained "
            "weights. Free space or fix the disk, then rerun with --resume-from-checkpoint latest: it "
            "saves the pipeline without training further"
        ) from error
    logger.info("saved the trained pipeline in %s", setup.output_dir)
    run = FinalRun(setup, pipeline, step, card, uploader, last_evaluation)
    warnings: list[str] = []
    for extra in EXTRAS:
        if not extra.wanted(setup.config):
            continue
        if stop.received is not None:
            warnings.append(
                f"{extra.name} skipped ({stop.received}); the trained model is saved in "
                f"{setup.output_dir}; do it with: {extra.redo(run)}"
            )
            continue
        try:
            extra.run(run)
        except Exception as error:
            logger.debug("%s failed", extra.name, exc_info=True)
            first_line = (str(error) or type(error).__name__).splitlines()[0]
            warnings.append(
                f"{extra.name} failed ({first_line}); the trained model is saved in "
                f"{setup.output_dir}; redo it with: {extra.redo(run)}"
            )
    return run, warnings
