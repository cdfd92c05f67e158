"""What a training run tells its user: losses (and the NaN stop), sample grids, and the model card text."""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hf_ddpm.core.scheduling import HFDDPMScheduler
from hf_ddpm.data.image_grid import image_grid
from hf_ddpm.sampling.samplers import (
    default_sampling_steps,
    image_class_labels,
    sampling_variance_type,
)

from .checkpointing import TRAINING_GROUPS, latest_checkpoint
from .setup import TrainingSetup

if TYPE_CHECKING:
    from PIL import Image

    from .step import StepOutcome

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class LossLog:
    """Losses of the steps not yet read from the device; :meth:`read` reads them all in one copy.

    Attributes:
        recent: the last 100 losses read, for the card's final loss.
    """

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.unread: list[StepOutcome] = []
        self.recent: deque[float] = deque(maxlen=100)

    def add(self, outcome: StepOutcome) -> None:
        self.unread.append(outcome)

    def read(self, progress: Any) -> None:
        """Read the losses and gradient norms of the steps since the last read in one device-to-host
        copy, log them, and stop at the first non-finite loss."""
        if not self.unread:
            return
        values = torch.stack(
            [
                torch.stack([o.loss.float(), o.grad_norm.float().to(o.loss.device)])
                for o in self.unread
            ]
        ).tolist()
        steps = [(o.step, o.lr) for o in self.unread]
        self.unread.clear()
        for (step, lr), (loss, grad_norm) in zip(steps, values):
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss} at step {step}; training stopped. "
                    f"{self._last_good_message()} Lower --learning-rate, try --mixed-precision no, or "
                    "check the data, then resume with --resume-from-checkpoint latest."
                )
            self.recent.append(loss)
            self.setup.accelerator.log({"loss": loss, "lr": lr, "grad_norm": grad_norm}, step=step)
        progress.set_postfix(loss=f"{values[-1][0]:.4f}")

    def final_loss(self) -> float:
        return float(np.mean(self.recent or [math.nan]))

    def _last_good_message(self) -> str:
        last = latest_checkpoint(self.setup.output_dir, TRAINING_GROUPS)
        return f"The last good checkpoint is {last}." if last else "No checkpoint was written yet."


@dataclass(frozen=True)
class GridSampling:
    """How training draws its sample grids: the one place that picks their steps and reverse variance.

    Attributes:
        num_inference_steps: the respaced sampling steps.
        scheduler: the scheduler the grid's pipeline samples with.
        variance: what the log says about the reverse-process variance.
    """

    num_inference_steps: int
    scheduler: HFDDPMScheduler
    variance: str


def grid_sampling(setup: TrainingSetup, scheduler: HFDDPMScheduler | None = None) -> GridSampling:
    """``--sample-steps``, or ``default_sampling_steps(T)``, with ``scheduler`` (default: the
    trained one, as the grids during training use). A scheduler calibrated at the end of training samples
    with the variance its moments give (``sampling_variance_type``: analytic), as ``hf-ddpm sample`` does."""
    config = setup.config
    scheduler = scheduler or setup.scheduler
    steps = config.sample_steps or default_sampling_steps(config.num_train_timesteps)
    own, variance = scheduler.config.variance_type, sampling_variance_type(scheduler.config)
    if variance == own:
        return GridSampling(steps, scheduler, f"the scheduler's {own} variance")
    analytic = HFDDPMScheduler.from_config(scheduler.config, variance_type=variance)
    return GridSampling(
        steps, analytic, f"{variance} variance from the calibrated eps_second_moment"
    )


class SampleGrids:
    """The run's sample grids, drawn from the EMA weights (copied into ``setup.ema_unet``) on the main
    process, with a progress bar."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.sampling = grid_sampling(setup)

    def grid(self, sampling: GridSampling | None = None) -> Image.Image:
        """A grid of ``--num-samples`` images, drawn as ``sampling`` says (default: the run's grids')."""
        from hf_ddpm.core.pipeline import HFDDPMPipeline

        setup, sampling = self.setup, sampling or self.sampling
        config = setup.config
        setup.ema.copy_to(setup.ema_unet)
        setup.ema_unet.eval()
        pipeline = HFDDPMPipeline(unet=setup.ema_unet, scheduler=sampling.scheduler)
        n = config.num_samples
        logger.info(
            "sampling %d images, %d steps (%s; --sample-steps sets the steps)",
            n,
            sampling.num_inference_steps,
            sampling.variance,
        )
        pipeline.set_progress_bar_config(desc=f"sampling {n} images", leave=False)
        labels = image_class_labels(range(n), setup.data.num_classes)
        generator = torch.Generator(setup.accelerator.device).manual_seed(config.seed)
        images = pipeline(
            batch_size=n,
            generator=generator,
            num_inference_steps=sampling.num_inference_steps,
            output_type="np",
            class_labels=labels,
        ).images
        return image_grid(images)

    def log(self, step: int) -> None:
        """Save a grid as ``samples/step-N.png`` (and to TensorBoard) on the main process."""
        setup = self.setup
        acc = setup.accelerator
        if acc.is_main_process:
            grid = self.grid()
            samples_dir = setup.output_dir / "samples"
            samples_dir.mkdir(parents=True, exist_ok=True)
            grid.save(samples_dir / f"step-{step:07d}.png")
            if setup.config.logger == "tensorboard":
                image = np.asarray(grid.convert("RGB"))[None]
                acc.get_tracker("tensorboard").log_images(
                    {"samples": image}, step=step, dataformats="NHWC"
                )
        acc.wait_for_everyone()


def format_duration(seconds: float) -> str:
    """``seconds`` as a person reads a run's length: ``"40 s"``, ``"12 min"``, ``"3 h 20 min"``, ``"2.3 days"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min"
    return f"{seconds / 86400:.1f} days"


class RunTimeEstimate:
    """Times the first optimizer steps after the first one (which also pays for start-up: workers,
    allocator, kernels) and logs once how long the whole run will take at that pace, and its end: the
    calibration and a covariance head fit run the network forward M x T and steps x batch times, which
    can take longer than the training itself, estimated from the same measured steps.

    Attributes:
        steps: how many steps the estimate times.
        passes_per_step: a training step costs about this many forward passes of its images (the
            backward pass costs about two), so one image's forward pass costs about a step's time over
            this many times the images a process takes per step.
    """

    steps = 5
    passes_per_step = 3

    def __init__(self, setup: TrainingSetup, first_step: int) -> None:
        self.setup = setup
        self.start_step = first_step + 1
        self.started: float | None = None

    def _now(self) -> float:
        import time

        if self.setup.accelerator.device.type == "cuda":
            torch.cuda.synchronize()  # once per estimate: queued kernels count
        return time.perf_counter()

    def after_step(self, step: int) -> None:
        """Call after each optimizer step ``step`` (1-based); logs the estimate once."""
        max_steps = self.setup.config.max_steps
        if step == self.start_step and max_steps - step >= self.steps:
            self.started = self._now()
        elif self.started is not None and step == self.start_step + self.steps:
            per_step = (self._now() - self.started) / self.steps
            left = max_steps - step
            logger.info(
                "time: %.3g s per step over steps %d-%d, so the %d steps left take about %s (the whole "
                "run of %d steps about %s)%s; besides sample grids and checkpoints",
                per_step,
                self.start_step + 1,
                step,
                left,
                format_duration(per_step * left),
                max_steps,
                format_duration(per_step * max_steps),
                self._end_of_run(per_step),
            )
            self.started = None

    def _end_of_run(self, per_step: float) -> str:
        """``"; then <extra> about <time>, ..."`` for the extras that run the network many times."""
        from .end_of_run import end_of_run_network_work

        config = self.setup.config
        images_per_step = config.batch_size * config.gradient_accumulation_steps
        per_image = per_step / (self.passes_per_step * images_per_step)
        work = end_of_run_network_work(self.setup)
        if not work:
            return ""
        said = ", ".join(f"{what} about {format_duration(per_image * n)}" for what, n in work)
        return (
            f"; then {said} (a forward pass per image taken as 1/{self.passes_per_step} of a "
            "training step's time per image)"
        )


def startup_summary(setup: TrainingSetup, step: int) -> str:
    """One line that says what this run will do: device, images, parameters, batch, steps, warm-up."""
    config, acc, data = setup.config, setup.accelerator, setup.data
    parameters = sum(p.numel() for p in setup.unwrapped.parameters())
    per_process, processes = config.batch_size, acc.num_processes
    accumulation = config.gradient_accumulation_steps
    batch = f"batch {per_process} per process x {processes} process(es)"
    if accumulation > 1:
        batch += f" x {accumulation} accumulation"
    resuming = f" (resuming at step {step})" if step else ""
    precision = "" if acc.mixed_precision == "no" else f" {acc.mixed_precision}"
    classes = ""
    if data.num_classes:
        named = f": {', '.join(data.class_names)}" if data.class_names else ""
        classes = f", {data.num_classes} classes{named}"
    return (
        f"training on {acc.device}{precision}: {len(data)} images ({data.channels} channel(s), "
        f"{config.resolution}x{config.resolution}{classes}), {parameters:,} parameters, {batch} = "
        f"{per_process * processes * accumulation} images per step, {config.max_steps} steps"
        f"{resuming}, warm-up {config.lr_warmup_steps} steps"
    )


def card_description(setup: TrainingSetup, step: int, losses: LossLog) -> str:
    """The training section of the model card."""
    config, data = setup.config, setup.data
    classes = f", {data.num_classes} classes" if data.num_classes else ""
    if data.class_names:
        classes += f": {', '.join(data.class_names)}"
    lines = [
        "A denoising diffusion probabilistic model (Ho, Jain & Abbeel 2020) trained with hf_ddpm "
        "and sampled by ancestral sampling. The weights are the exponential moving average.",
        "",
        "## Training",
        "",
        f"- Command: `{config.command()}`",
        f"- Data: {data.name} (split {config.split!r}, {len(data)} images, {data.channels} "
        f"channel(s){classes}), {config.resolution}x{config.resolution}",
        f"- Steps: {step} at batch {config.batch_size} x {setup.accelerator.num_processes} "
        f"process(es) x {config.gradient_accumulation_steps} accumulation",
        f"- Objective: L_{config.loss}, {config.prediction_type} prediction, "
        f"{config.variance_type} variance, {config.beta_schedule} betas, T={config.num_train_timesteps}",
        f"- Final loss (mean of the last {len(losses.recent)} steps): {losses.final_loss():.5f}",
        f"- Optimiser: Adam {config.learning_rate:g}, {config.lr_warmup_steps}-step warm-up, "
        f"grad clip {config.max_grad_norm:g}, EMA {config.ema_decay:g}",
    ]
    if setup.null_label is not None:
        lines.append(
            f"- Class-conditional: label {setup.null_label} is the null class for classifier-free "
            f"guidance (label dropout {config.class_dropout:g})"
        )
    return "\n".join(lines)
