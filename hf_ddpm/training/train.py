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
``reporting.py`` (losses, sample grids, the card), ``preemption.py`` (SIGTERM / SIGINT),
``end_of_run.py`` (the final pipeline, then the extras: calibration, the grid, the push). This module runs
them in order.

Exit status of ``hf-ddpm train``: 0 done; 1 failed (the loss diverged, a checkpoint could not be written
or resumed from, the Hub could not be reached to resume); 2 bad options or data (before any step);
3 (``EXIT_PARTIAL``) trained and saved, but an end-of-run extra failed: each is one warning with the
command that redoes it; 75 (``EXIT_STOPPED``) stopped by SIGTERM or SIGINT after writing a checkpoint:
resume with ``--resume-from-checkpoint latest``.

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

from .end_of_run import EXIT_PARTIAL, finish_run
from .periodic_eval import PeriodicEvaluation
from .preemption import EXIT_STOPPED, StopSignals, ignore_stop_signals
from .reporting import (
    LossLog,
    RunTimeEstimate,
    SampleGrids,
    TrainingDivergedError,
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
    from .hub_checkpoints import HubCheckpointUploader

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (on the main process; other ranks get the same step and loss).

    Attributes:
        stopped_by: the signal that stopped the run after a checkpoint (``"SIGTERM"``), else ``None``.
        warnings: one line per end-of-run extra that failed or was skipped, with the command that redoes
            it (the run is then partial).
    """

    output_dir: Path
    step: int
    final_loss: float
    hub_url: str | None = None
    checkpoint_push_errors: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    warnings: list[str] = field(default_factory=list)


class _Trainer:
    """One training run over a built :class:`TrainingSetup`, resumed from ``resume_path`` if given."""

    def __init__(self, setup: TrainingSetup, resume_path: Path | None) -> None:
        self.setup = setup
        self.progress = TrainingStep(setup)
        self.losses = LossLog(setup)
        self.grids = SampleGrids(setup)
        self.evaluation = PeriodicEvaluation(setup)
        self.resume_path = resume_path
        # Built in run(), on the main process, when --hub-strategy uploads checkpoints.
        self.uploader: HubCheckpointUploader | None = None
        self.stop = StopSignals()

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
        with self.stop:
            return self._run()

    def _run(self) -> TrainResult:
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
            worker_init_fn=ignore_stop_signals,
        )
        batches = iter(loader)
        bar = tqdm(
            total=config.max_steps,
            initial=progress.step,
            desc="train",
            disable=not acc.is_local_main_process,
        )
        stopped_by = None
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
            read_due = step % config.log_every == 0 or checkpoint_due or sample_due
            # A diverged loss must be seen before anything is written from the weights it produced.
            if read_due:
                self.losses.read(bar)
            if checkpoint_due:
                save_run_checkpoint(setup, progress, self.uploader)
            if sample_due:
                self.grids.log(step)
            if self.evaluation.due(step):
                self.evaluation.run(step)
            stopped_by = self.stop.agreed(acc, read_due)
            if stopped_by is not None:
                break
        self.losses.read(bar)
        bar.close()
        if not (setup.output_dir / f"checkpoint-{progress.step}").exists():
            save_run_checkpoint(setup, progress, self.uploader)
        result = TrainResult(setup.output_dir, progress.step, self.losses.final_loss())
        acc.wait_for_everyone()
        acc.end_training()
        if stopped_by is not None:
            result.stopped_by = stopped_by
            if self.uploader is not None:
                logger.info(
                    "waiting for the checkpoint upload to finish (a second %s stops now; the "
                    "checkpoint stays in %s for --resume-from-checkpoint latest)",
                    stopped_by,
                    setup.output_dir,
                )
                result.checkpoint_push_errors = list(self.uploader.wait())
            return result
        # Saving the pipeline and its extras (the push after any queued checkpoint uploads) involve no
        # other process: they come after the last collective, so a long upload cannot time out the other
        # ranks waiting at a barrier.
        if acc.is_main_process:
            final, result.warnings = finish_run(
                setup,
                progress.step,
                self.losses,
                self.uploader,
                self.stop,
                last_evaluation=self.evaluation.last,
            )
            result.hub_url = final.hub_url
            result.checkpoint_push_errors = final.checkpoint_push_errors
        result.stopped_by = self.stop.received
        return result


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
    """Entry point of ``hf-ddpm train``; returns the exit status of the module docstring. Bad options or
    data are raised, and cli.py reports them (status 2). Failed checkpoint uploads (``--hub-strategy``)
    are printed as warnings and do not change the status."""
    from .checkpointing import CorruptCheckpointError, OutputWriteError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(config_from_args(args))
    # A checkpoint to resume from that fails its manifest check, or a Hub that cannot be reached for
    # --resume-from-checkpoint hub: nothing was trained, and the message says which.
    # A checkpoint or the pipeline that could not be written: the message names it and what is intact.
    except (
        TrainingDivergedError,
        CorruptCheckpointError,
        ConnectionError,
        OutputWriteError,
    ) as error:
        print(f"hf-ddpm train: {error}", file=sys.stderr)
        return 1
    for error in result.checkpoint_push_errors:
        print(f"hf-ddpm train: warning: {error}", file=sys.stderr)
    for warning in result.warnings:
        print(f"hf-ddpm train: warning: {warning}", file=sys.stderr)
    if result.stopped_by is not None:
        print(
            f"hf-ddpm train: stopped by {result.stopped_by} at step {result.step}; resume with "
            "--resume-from-checkpoint latest",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    print(f"hf-ddpm train: done at step {result.step}; pipeline saved in {result.output_dir}")
    if result.hub_url:
        print(f"hf-ddpm train: pushed to {result.hub_url}")
    return EXIT_PARTIAL if result.warnings else 0
