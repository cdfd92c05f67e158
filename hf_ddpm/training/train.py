"""``hf-ddpm train``: train a DDPM on your images with accelerate, and never lose work.

Python API: :class:`TrainConfig` (its options and command line live in ``train_config.py``) and
:func:`train`. The defaults follow Ho et al. (2020):
batch 128 and Adam 2e-4 with a 5,000-step linear warm-up (both scaled down to a small run: the batch to
the data, the warm-up to 10% of ``--max-steps``), gradient-norm clip 1, EMA 0.9999, T = 1000 linear betas,
L_simple, and the 35.7M ``ddpm-cifar10`` UNet.

Multi-GPU or multi-node: ``accelerate launch --multi_gpu --num_processes N -m hf_ddpm.cli train ...``
(``--batch-size`` is per process). On CPU, several processes run with
``torchrun --nproc_per_node N -m hf_ddpm.cli train ...``.

The pieces, one module each: ``setup.py`` (data, accelerator, resume source, model, EMA, optimiser),
``step.py`` (one optimizer step), ``run_checkpoint.py`` (what a checkpoint holds, and resuming from it),
``reporting.py`` (losses, sample grids, the card). This module runs them in order.

Exact resume. Everything random in a step is a pure function of ``(seed, rank, micro-batch index)``
(``determinism.py``), so a checkpoint only needs the step and the number of micro-batches seen, besides
the weights and optimiser state, to continue with the very same batches and noise as an uninterrupted run.

Checkpoints on the Hub. ``--push-to-hub`` uploads the final pipeline (without checkpoints and logs) at the
end. ``--hub-strategy checkpoint`` also uploads each checkpoint while training runs, to ``last-checkpoint/``
(replacing the previous one), and ``every_save`` to its own ``checkpoint-N/``; uploads run in the
background on the main process, one at a time and in order, and a failed one is a warning, never a stop
(``hub_checkpoints.HubCheckpointUploader``). The final push waits for them. On a new machine,
``--resume-from-checkpoint hub`` downloads that checkpoint into ``--output-dir``, checks it against its
manifest, and resumes exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .reporting import (
    LossLog,
    RunTimeEstimate,
    SampleGrids,
    TrainingDivergedError,
    card_description,
    grid_sampling,
    startup_summary,
)
from .run_checkpoint import (
    check_output_dir,
    check_resume_options,
    clear_output_dir,
    load_run_checkpoint,
    read_run_state,
    save_run_checkpoint,
)
from .setup import (
    TrainingSetup,
    build_setup,
    load_training_data,
    make_accelerator,
    resolve_resume_source,
)
from .step import TrainingStep
from .train_config import DATA_RECORD, TrainConfig, config_from_args

# The CLI finds each subcommand's add_arguments and run in its module (cli.py).
from .train_config import add_arguments as add_arguments

if TYPE_CHECKING:
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    from .hub_checkpoints import HubCheckpointUploader

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (on the main process; other ranks get the same step and loss)."""

    output_dir: Path
    step: int
    final_loss: float
    hub_url: str | None = None
    push_error: str | None = None
    checkpoint_push_errors: list[str] = field(default_factory=list)


class _Trainer:
    """One training run over a built :class:`TrainingSetup`, resumed from ``resume_path`` if given."""

    def __init__(self, setup: TrainingSetup, resume_path: Path | None) -> None:
        self.setup = setup
        self.progress = TrainingStep(setup)
        self.losses = LossLog(setup)
        self.grids = SampleGrids(setup)
        self.resume_path = resume_path
        # Built in run(), on the main process, when --hub-strategy uploads checkpoints.
        self.uploader: HubCheckpointUploader | None = None

    def _start(self) -> None:
        """Resume, write train_config.json, start the checkpoint uploader and the trackers."""
        from hf_ddpm.data.image_datasets import TRAIN_RECORD

        setup, config = self.setup, self.setup.config
        acc = setup.accelerator
        if self.resume_path is not None:
            load_run_checkpoint(setup, self.progress, self.resume_path)
        if acc.is_main_process:
            logger.info("%s", startup_summary(setup, self.progress.step))
            setup.output_dir.mkdir(parents=True, exist_ok=True)
            if config.overwrite_output_dir:
                clear_output_dir(setup.output_dir)
            record = {**config.to_dict(), DATA_RECORD: setup.data.record()}
            (setup.output_dir / TRAIN_RECORD).write_text(
                json.dumps(record, indent=2) + "\n", encoding="utf-8"
            )
            if config.push_to_hub and config.hub_strategy != "end":
                from .hub_checkpoints import HubCheckpointUploader

                self.uploader = HubCheckpointUploader(
                    setup.output_dir,
                    config.hub_model_id,
                    config.hub_strategy,
                    private=config.hub_private,
                    token=config.hub_token,
                )
        if config.logger != "none":
            hparams = {k: v for k, v in config.to_dict().items() if v is not None}
            acc.init_trackers("hf-ddpm", config=hparams)

    def run(self) -> TrainResult:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from hf_ddpm.data.image_datasets import collate

        setup, progress = self.setup, self.progress
        acc, config = setup.accelerator, setup.config
        self._start()
        setup.batch_sampler.start = progress.batches_seen
        loader = DataLoader(
            setup.train_data,
            batch_sampler=setup.batch_sampler,
            collate_fn=collate,
            num_workers=config.dataloader_num_workers,
            pin_memory=acc.device.type == "cuda",
        )
        batches = iter(loader)
        bar = tqdm(
            total=config.max_steps,
            initial=progress.step,
            desc="train",
            disable=not acc.is_local_main_process,
        )
        clock = RunTimeEstimate(setup, progress.step) if acc.is_main_process else None
        while progress.step < config.max_steps:
            outcome = progress.optimizer_step(batches)
            self.losses.add(outcome)
            bar.update(1)
            step = outcome.step
            if clock is not None:
                clock.after_step(step)
            checkpoint_due = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
            sample_due = bool(config.sample_every) and step % config.sample_every == 0
            # A diverged loss must be seen before anything is written from the weights it produced.
            if step % config.log_every == 0 or checkpoint_due or sample_due:
                self.losses.read(bar)
            if checkpoint_due:
                save_run_checkpoint(setup, progress, self.uploader)
            if sample_due:
                self.grids.log(step)
        self.losses.read(bar)
        bar.close()
        if not (setup.output_dir / f"checkpoint-{progress.step}").exists():
            save_run_checkpoint(setup, progress, self.uploader)
        result = TrainResult(setup.output_dir, progress.step, self.losses.final_loss())
        acc.wait_for_everyone()
        acc.end_training()
        # Saving the pipeline and pushing it (after any queued checkpoint uploads) involve no other
        # process: they come after the last collective, so a long upload cannot time out the other
        # ranks waiting at a barrier.
        if acc.is_main_process:
            self._save_final(result)
        return result

    def _save_final(self, result: TrainResult) -> None:
        from hf_ddpm.core.pipeline import HFDDPMPipeline
        from hf_ddpm.data.bundled_datasets import BUNDLED_DATASETS

        setup, config = self.setup, self.setup.config
        setup.ema.copy_to(setup.ema_unet)
        # With label dropout the null label was trained: the saved pipeline samples p(x) without labels.
        null_label = setup.null_label if config.class_dropout > 0 else None
        pipeline = HFDDPMPipeline(
            unet=setup.ema_unet,
            scheduler=setup.scheduler,
            null_class_label=null_label,
            class_names=setup.data.class_names,
        )
        if config.calibrate:
            self._calibrate(pipeline)
        if config.covariance_head is not None:
            pipeline = self._fit_covariance_head(pipeline)
        # The final grid samples as `hf-ddpm sample` will: analytic where the model is calibrated.
        grid = self.grids.grid(grid_sampling(setup, pipeline.scheduler)) if config.grid else None
        hub_dataset = config.train_data_dir is None and config.dataset not in BUNDLED_DATASETS
        pipeline.save_pretrained(
            setup.output_dir,
            repo_id=config.hub_model_id,
            datasets=[config.dataset] if hub_dataset else None,
            tags=[
                "unconditional-image-generation"
                if setup.null_label is None
                else "class-conditional"
            ],
            description=card_description(setup, result.step, self.losses),
            sample_grid=grid,
        )
        if config.push_to_hub:
            from hf_ddpm.core.pushing import HubPushError, push_folder_to_hub

            from .checkpointing import TMP_PREFIX
            from .hub_checkpoints import HUB_STAGING_PREFIX

            if self.uploader is not None:
                # The final commit comes after every checkpoint commit, so the repo ends on the pipeline.
                result.checkpoint_push_errors = list(self.uploader.wait())
            try:
                result.hub_url = push_folder_to_hub(
                    setup.output_dir,
                    config.hub_model_id,
                    private=config.hub_private,
                    token=config.hub_token,
                    commit_message=f"hf-ddpm train: step {result.step}",
                    # Checkpoints hold optimizer state (hundreds of MB for ddpm-cifar10) and logs grow.
                    ignore_patterns=[
                        "checkpoint-*",
                        "covariance-head/*",
                        f"{TMP_PREFIX}*",
                        f"{HUB_STAGING_PREFIX}*",
                        "logs/*",
                    ],
                )
            except HubPushError as error:
                # Reported once, by the caller: run() prints it and exits 1.
                result.push_error = str(error)

    def _calibrate(self, pipeline: HFDDPMPipeline) -> None:
        """Give ``pipeline.scheduler`` Analytic-DPM's ``eps_second_moment`` (``hf-ddpm calibrate``'s
        statistic) from the first ``--calibrate-images`` training images, as the training transform gives
        them, so the saved and pushed model samples well in few steps."""
        import torch

        from hf_ddpm.data.image_datasets import collate
        from hf_ddpm.evaluation.calibrate import calibrate_pipeline

        setup, config = self.setup, self.setup.config
        if setup.null_label is not None and config.class_dropout == 0:
            logger.info(
                "calibration skipped: a class-conditional model trained without --class-dropout has no "
                "model of p(x) (its null label) to calibrate"
            )
            return
        count = min(config.calibrate_images, len(setup.train_data))
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
        device = setup.accelerator.device
        calibrate_pipeline(
            pipeline, images, generator=torch.Generator(device).manual_seed(config.seed)
        )

    def _fit_covariance_head(self, pipeline: HFDDPMPipeline) -> HFDDPMPipeline:
        """``pipeline`` with an SN / NPR covariance head fitted on the EMA UNet (``hf-ddpm fit-covariance``,
        ``--covariance-head-steps`` steps, the run's batch size and seed, all training images) and its
        scheduler's variance type set to that kind. Its checkpoints go to ``covariance-head/`` in the
        output folder, and a rerun of the same command continues the fit from the latest of them."""
        from hf_ddpm.data.image_datasets import collate

        from .fit_covariance import FitOptions, fit_covariance_head, with_head

        setup, config = self.setup, self.setup.config
        options = FitOptions(
            kind=config.covariance_head,
            max_steps=config.covariance_head_steps,
            batch_size=min(config.batch_size, len(setup.train_data)),
            seed=config.seed,
        )
        logger.info("fitting the %s covariance head: %d steps", options.kind, options.max_steps)
        images = collate([setup.train_data[i] for i in range(len(setup.train_data))])
        result = fit_covariance_head(
            pipeline,
            images["pixel_values"],
            options,
            checkpoint_dir=setup.output_dir / "covariance-head",
            resume_from="latest",
        )
        return with_head(pipeline, result.head, options.kind)


def prepare_training(config: TrainConfig) -> tuple[TrainingSetup, Path | None]:
    """Everything before the first step, in order, each an explicit step; returns the built setup and
    the checkpoint to resume from (``None`` for a fresh start).

    Validate the options; refuse an output folder that holds another run's checkpoints (unless resuming
    or overwriting); read the data (every image of a folder checked) before anything is written; build
    the accelerator; find the checkpoint to resume from (downloading it for ``--resume-from-checkpoint
    hub``); fill in the defaults that scale with the run (batch size, warm-up), logging a note for each
    one scaled down; on resume, refuse options that break exactness (unless ``--allow-config-change``);
    build the model and optimiser.

    Raises:
        ValueError / FileNotFoundError: bad options or data.
    """
    config.validate()
    check_output_dir(config)
    data = load_training_data(config)
    accelerator = make_accelerator(config)
    resume_path = resolve_resume_source(config, accelerator)
    saved = None if resume_path is None else read_run_state(resume_path)
    config, notes = config.with_scaled_defaults(
        len(data), accelerator.num_processes, None if saved is None else saved["config"]
    )
    for note in notes:
        logger.info("note: %s", note)
    if saved is not None:
        check_resume_options(resume_path, saved, config, accelerator.num_processes, data)
    return build_setup(config, accelerator, data), resume_path


def train(config: TrainConfig) -> TrainResult:
    """Train a DDPM as ``config`` says (:func:`prepare_training`, then the loop); see the module
    docstring for the guarantees.

    Raises:
        ValueError / FileNotFoundError: bad options or data (raised before any training step).
        TrainingDivergedError: the loss became NaN or infinite.
    """
    setup, resume_path = prepare_training(config)
    return _Trainer(setup, resume_path).run()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hf-ddpm train``: 0 on success, 1 if training diverged, the final push failed or the
    checkpoint to resume from is unusable or unreachable, 2 for bad options or data. Failed checkpoint
    uploads (``--hub-strategy``) are printed as warnings and do not change the status. Bad options or
    data are raised, and cli.py reports them."""
    from .checkpointing import CorruptCheckpointError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(config_from_args(args))
    # A checkpoint to resume from that fails its manifest check, or a Hub that cannot be reached for
    # --resume-from-checkpoint hub: nothing was trained, and the message says which.
    except (TrainingDivergedError, CorruptCheckpointError, ConnectionError) as error:
        print(f"hf-ddpm train: {error}", file=sys.stderr)
        return 1
    for error in result.checkpoint_push_errors:
        print(f"hf-ddpm train: warning: {error}", file=sys.stderr)
    if result.push_error:
        print(f"hf-ddpm train: {result.push_error}", file=sys.stderr)
        return 1
    print(f"hf-ddpm train: done at step {result.step}; pipeline saved in {result.output_dir}")
    if result.hub_url:
        print(f"hf-ddpm train: pushed to {result.hub_url}")
    return 0
