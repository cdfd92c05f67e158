"""``hf-ddpm train``: train a DDPM on your images with accelerate, and never lose work.

Python API: :class:`TrainConfig` (its options and command line live in ``train_config.py``) and
:func:`train`. The defaults follow Ho et al. (2020):
Adam 2e-4 with a 5,000-step linear warm-up, gradient-norm clip 1, EMA 0.9999, T = 1000 linear betas,
L_simple, and the 35.7M ``ddpm-cifar10`` UNet.

Multi-GPU or multi-node: ``accelerate launch --multi_gpu --num_processes N -m hf_ddpm.cli train ...``
(``--batch-size`` is per process). On CPU, several processes run with
``torchrun --nproc_per_node N -m hf_ddpm.cli train ...``.

Exact resume. Everything random in a step is a pure function of ``(seed, rank, micro-batch index)``: the
noise, timesteps, flips and label dropout come from generators seeded that way, and the global torch seed
(dropout) is reset the same way before each forward pass. The data order of epoch ``e`` is a permutation
drawn from ``(seed, e)``. A checkpoint therefore only needs the step and the number of micro-batches seen
to continue with the very same batches and noise as an uninterrupted run. It also stores the model, EMA,
optimizer, LR schedule, timestep-sampler history, AMP scaler and the python/numpy/torch RNG states.

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
import copy
import json
import logging
import math
import os
import random
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hf_ddpm.data.image_datasets import random_horizontal_flip, to_device
from hf_ddpm.data.image_grid import image_grid

from .train_config import DATA_RECORD, RESUME_FROM_HUB, TrainConfig, config_from_args

# The CLI finds each subcommand's add_arguments and run in its module (cli.py).
from .train_config import add_arguments as add_arguments

if TYPE_CHECKING:
    from .hub_checkpoints import HubCheckpointUploader

logger = logging.getLogger(__name__)

# Stream tags for _derive_seed: each random quantity gets its own independent stream.
_DATA_ORDER, _NOISE, _AUX, _DROPOUT, _INIT = 1, 2, 3, 4, 5


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (on the main process; other ranks get the same step and loss)."""

    output_dir: Path
    step: int
    final_loss: float
    hub_url: str | None = None
    push_error: str | None = None
    checkpoint_push_errors: list[str] = field(default_factory=list)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on all ``keys`` and is independent across them (numpy SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class _EpochBatchSampler:
    """Infinite per-rank batches: epoch ``e`` visits ``randperm(n, seed=(seed, e))`` in global batches of
    ``batch_size * num_processes`` (the last partial one dropped); rank ``r`` takes slice ``r`` of each.

    ``start`` is the number of micro-batches already consumed, so a resumed run continues mid-epoch.
    """

    def __init__(
        self, num_items: int, batch_size: int, num_processes: int, rank: int, seed: int, start: int
    ) -> None:
        self.num_items, self.batch_size, self.rank, self.seed = num_items, batch_size, rank, seed
        self.global_batch = batch_size * num_processes
        self.batches_per_epoch = num_items // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_items} images, fewer than one global batch of "
                f"{self.global_batch} (--batch-size {batch_size} x {num_processes} processes)"
            )
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        epoch, index = divmod(self.start, self.batches_per_epoch)
        while True:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, _DATA_ORDER, epoch))
            order = torch.randperm(self.num_items, generator=generator)
            for b in range(index, self.batches_per_epoch):
                begin = b * self.global_batch + self.rank * self.batch_size
                yield order[begin : begin + self.batch_size].tolist()
            epoch, index = epoch + 1, 0


def _multi_process_without_accelerator() -> bool:
    """True under a multi-process launch (torchrun sets WORLD_SIZE) on a machine without GPU/XPU/MPS.

    accelerate only picks its gloo MULTI_CPU mode when told ``cpu=True``; otherwise every process
    silently trains alone on its own copy.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def _warmup(warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0

    return factor


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        # uint32 has no safetensors dtype in every version: store the key as int64.
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": np_state["state"]["key"].astype(np.int64)},
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"]).astype(np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


class _Trainer:
    """One training run; built once from a validated config, then :meth:`run`."""

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from hf_ddpm.core.scheduling import HFDDPMScheduler
        from hf_ddpm.data.image_datasets import load_image_dataset, preprocess

        from .checkpointing import resolve_resume
        from .ema import EMA
        from .timestep_sampler import LossSecondMomentResampler, UniformSampler
        from .unet_presets import build_unet, unet_config

        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            cpu=_multi_process_without_accelerator(),
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.logger == "none" else config.logger,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            dynamo_backend="inductor" if config.compile else "no",
        )
        acc = self.accelerator
        self.resume_path = (
            self._download_hub_checkpoint()
            if config.resume_from_checkpoint == RESUME_FROM_HUB
            else resolve_resume(self.output_dir, config.resume_from_checkpoint)
        )
        self.scheduler = HFDDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            variance_type=config.variance_type,
            # Ho's 1e-4..0.02 is tuned for T = 1000; for other T it is rescaled by 1000 / T so that x_T is
            # still pure noise (diffusers leaves alpha_bar_T = 0.36 at T = 100).
            scale_linear_betas_by_timesteps=config.num_train_timesteps != 1000,
        )
        self.data = load_image_dataset(
            config.dataset,
            train_data_dir=config.train_data_dir,
            split=config.split,
            image_column=config.image_column,
            class_column=config.class_column,
            channels=config.channels,
            skip_bad_images=config.skip_bad_images,
        )
        # Label num_classes is the null class of classifier-free guidance (HFDDPMPipeline's convention).
        self.null_label = self.data.num_classes
        self.unet_config = unet_config(
            config.model_preset,
            config.unet_config,
            resolution=config.resolution,
            in_channels=self.data.channels,
            out_channels=self.scheduler.model_output_channels(self.data.channels),
            num_class_embeds=None if self.null_label is None else self.null_label + 1,
        )
        self.batch_sampler = _EpochBatchSampler(
            len(self.data), config.batch_size, acc.num_processes, acc.process_index, config.seed, 0
        )
        torch.manual_seed(_derive_seed(config.seed, _INIT))
        unet = build_unet(self.unet_config)
        on_cuda = acc.device.type == "cuda"
        # On the device before the EMA copies it, so shadow weights and sampling copy live there too.
        unet = unet.to(acc.device)
        if on_cuda:
            unet = unet.to(memory_format=torch.channels_last)
        self.ema = EMA(unet, config.ema_decay)
        # A separate module that holds the EMA weights for sampling and saving.
        self.ema_unet = copy.deepcopy(unet) if acc.is_main_process else None
        optimizer = torch.optim.Adam(
            unet.parameters(), lr=config.learning_rate, fused=on_cuda or None
        )
        # Stepped by hand once per optimizer step (an accelerate-prepared LR scheduler would step once
        # per process).
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup(config.lr_warmup_steps)
        )
        self.timestep_sampler = (
            LossSecondMomentResampler(config.num_train_timesteps)
            if config.loss == "vlb"
            else UniformSampler(config.num_train_timesteps)
        )
        self.update_sampler = config.loss == "vlb"
        self.model, self.optimizer = acc.prepare(unet, optimizer)
        self.step = 0
        self.batches_seen = 0
        self.train_data = preprocess(self.data, config.resolution)
        self.recent_losses: deque[float] = deque(maxlen=100)
        # Built in run(), on the main process, when --hub-strategy uploads checkpoints.
        self.uploader: HubCheckpointUploader | None = None

    def _data_record(self) -> dict[str, Any]:
        data = self.data
        return {
            "source": data.name,
            "images": len(data),
            "channels": data.channels,
            "skipped_images": list(data.skipped),
        }

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self) -> None:
        from .checkpointing import flatten_state, prune_checkpoints, save_checkpoint

        acc = self.accelerator
        if acc.is_main_process:
            training_state = {
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "timestep_sampler": self.timestep_sampler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "rng": _rng_state(),
                "ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow"},
            }
            skeleton, tensors = flatten_state(training_state)
            state = {
                "step": self.step,
                "batches_seen": self.batches_seen,
                "global_batch": self.batch_sampler.global_batch,
                "unet_config": json.loads(json.dumps(self.unet_config)),
                "config": self.config.to_dict(),
                "training_state": skeleton,
            }
            groups = {
                "model": self.unwrapped.state_dict(),
                "ema": self.ema.shadow,
                "training_state": tensors,
            }
            path = save_checkpoint(self.output_dir, self.step, groups, state)
            if self.uploader is not None:
                # Before pruning: the upload works on hard links, so pruning cannot pull files from under it.
                self.uploader.submit(path, self.step)
            prune_checkpoints(self.output_dir, self.config.checkpoints_total_limit)
            logger.info("saved %s", path)
        acc.wait_for_everyone()

    def _download_hub_checkpoint(self) -> Path | None:
        """``--resume-from-checkpoint hub``: the main process downloads the checkpoint pushed to
        ``--hub-model-id`` into the output folder; every process gets its path (or the error)."""
        from accelerate.utils import broadcast_object_list

        from .hub_checkpoints import download_hub_checkpoint

        config, acc = self.config, self.accelerator
        found: list[str | None] = [None, None]  # [checkpoint path, error message]
        error: Exception | None = None
        if acc.is_main_process:
            try:
                path = download_hub_checkpoint(
                    self.output_dir, config.hub_model_id, token=config.hub_token
                )
                found[0] = None if path is None else str(path)
            # Whatever it is, the other ranks must hear of it rather than wait at the broadcast.
            except Exception as raised:
                error = raised
                found[1] = f"{type(raised).__name__}: {raised}"
        broadcast_object_list(found)
        if error is not None:
            raise error
        if found[1] is not None:
            raise RuntimeError(f"the main process could not resume from the Hub: {found[1]}")
        return None if found[0] is None else Path(found[0])

    def _load_checkpoint(self, path: Path) -> None:
        from .checkpointing import load_checkpoint, unflatten_state

        tensors, state = load_checkpoint(path)
        if state["unet_config"] != json.loads(json.dumps(self.unet_config)):
            raise ValueError(
                f"checkpoint {path} holds a UNet with a different config; resume with the same "
                "--model-preset/--unet-config, resolution, data channels, classes and variance type"
            )
        if state["global_batch"] != self.batch_sampler.global_batch:
            logger.warning(
                "the global batch changed from %d to %d: resuming, but not bit-for-bit",
                state["global_batch"],
                self.batch_sampler.global_batch,
            )
        training_state = unflatten_state(state["training_state"], tensors["training_state"])
        self.unwrapped.load_state_dict(tensors["model"])
        self.ema.load_state_dict({**training_state["ema"], "shadow": tensors["ema"]})
        self.optimizer.load_state_dict(training_state["optimizer"])
        self.lr_scheduler.load_state_dict(training_state["lr_scheduler"])
        self.timestep_sampler.load_state_dict(training_state["timestep_sampler"])
        if self.accelerator.scaler is not None and training_state["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(training_state["scaler"])
        _set_rng_state(training_state["rng"])
        self.step = int(state["step"])
        self.batches_seen = int(state["batches_seen"])
        logger.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------------------------- training

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward and backward on one micro-batch; returns the loss averaged over all processes, as a
        device tensor: reading it would wait for the GPU, so ``run`` reads losses in batches."""
        acc, config = self.accelerator, self.config
        device = acc.device
        keys = (config.seed, acc.process_index, self.batches_seen)
        aux = torch.Generator().manual_seed(_derive_seed(*keys, _AUX))
        noise_gen = torch.Generator(device).manual_seed(_derive_seed(*keys, _NOISE))
        torch.manual_seed(_derive_seed(*keys, _DROPOUT))
        x0 = batch["pixel_values"].to(device, non_blocking=True)
        if config.random_flip:
            x0 = random_horizontal_flip(x0, aux)
        labels = None
        if self.null_label is not None:
            drop = torch.rand(x0.shape[0], generator=aux) < config.class_dropout
            labels = to_device(torch.where(drop, self.null_label, batch["label"]), device)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device, dtype=x0.dtype)
        # t is drawn on the host (the same t on every device type), then copied without a sync.
        t, weights = self.timestep_sampler.sample(x0.shape[0], generator=aux)
        t, weights = to_device(t, device), to_device(weights, device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        with acc.accumulate(self.model):
            output = self.model(x_t, t, class_labels=labels).sample.float()
            per_sample = self.scheduler.training_loss(
                output,
                x0,
                noise,
                t,
                loss_type=config.loss,
                min_snr_gamma=config.min_snr_gamma,
                x_t=x_t,
                num_bins=self.data.num_bins,
            )
            loss = (per_sample * weights).mean()
            # Averaged over ranks so that every rank sees the same value and stops at the same step.
            mean_loss = acc.reduce(loss.detach(), reduction="mean")
            if self.update_sampler:
                self.timestep_sampler.update(acc.gather(t), acc.gather(per_sample.detach()))
            acc.backward(loss)
            if acc.sync_gradients:
                self.grad_norm = acc.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.batches_seen += 1
        return mean_loss

    def _read_losses(
        self, unread: list[tuple[int, float, torch.Tensor, torch.Tensor]], progress: Any
    ) -> None:
        """Read the losses and gradient norms of the steps since the last read in one device-to-host
        copy, log them, and stop at the first non-finite loss. Empties ``unread``."""
        if not unread:
            return
        values = torch.stack(
            [
                torch.stack([loss.float(), norm.float().to(loss.device)])
                for _, _, loss, norm in unread
            ]
        ).tolist()
        steps = [(step, lr) for step, lr, _, _ in unread]
        unread.clear()
        for (step, lr), (loss, grad_norm) in zip(steps, values):
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss} at step {step}; training stopped. "
                    f"{self._last_good_message()} Lower --learning-rate, try --mixed-precision no, or "
                    "check the data, then resume with --resume-from-checkpoint latest."
                )
            self.recent_losses.append(loss)
            self.accelerator.log({"loss": loss, "lr": lr, "grad_norm": grad_norm}, step=step)
        progress.set_postfix(loss=f"{values[-1][0]:.4f}")

    def _last_good_message(self) -> str:
        from .checkpointing import latest_checkpoint

        last = latest_checkpoint(self.output_dir)
        return f"The last good checkpoint is {last}." if last else "No checkpoint was written yet."

    def _sample_grid(self) -> Any:
        from hf_ddpm.core.pipeline import HFDDPMPipeline

        self.ema.copy_to(self.ema_unet)
        self.ema_unet.eval()
        pipeline = HFDDPMPipeline(unet=self.ema_unet, scheduler=self.scheduler)
        pipeline.set_progress_bar_config(disable=True)
        n = self.config.num_samples
        labels = None if self.null_label is None else [i % self.null_label for i in range(n)]
        generator = torch.Generator(self.accelerator.device).manual_seed(self.config.seed)
        images = pipeline(
            batch_size=n,
            generator=generator,
            num_inference_steps=self.config.sample_steps or self.config.num_train_timesteps,
            output_type="np",
            class_labels=labels,
        ).images
        return image_grid(images)

    def _log_samples(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            grid = self._sample_grid()
            samples_dir = self.output_dir / "samples"
            samples_dir.mkdir(parents=True, exist_ok=True)
            grid.save(samples_dir / f"step-{self.step:07d}.png")
            if self.config.logger == "tensorboard":
                image = np.asarray(grid.convert("RGB"))[None]
                acc.get_tracker("tensorboard").log_images(
                    {"samples": image}, step=self.step, dataformats="NHWC"
                )
        acc.wait_for_everyone()

    def run(self) -> TrainResult:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from hf_ddpm.data.image_datasets import collate

        acc, config = self.accelerator, self.config
        if self.resume_path is not None:
            self._load_checkpoint(self.resume_path)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = {**config.to_dict(), DATA_RECORD: self._data_record()}
            (self.output_dir / "train_config.json").write_text(
                json.dumps(record, indent=2) + "\n", encoding="utf-8"
            )
            if config.push_to_hub and config.hub_strategy != "end":
                from .hub_checkpoints import HubCheckpointUploader

                self.uploader = HubCheckpointUploader(
                    self.output_dir,
                    config.hub_model_id,
                    config.hub_strategy,
                    private=config.hub_private,
                    token=config.hub_token,
                )
        if config.logger != "none":
            hparams = {k: v for k, v in config.to_dict().items() if v is not None}
            acc.init_trackers("hf-ddpm", config=hparams)
        self.batch_sampler.start = self.batches_seen
        loader = DataLoader(
            self.train_data,
            batch_sampler=self.batch_sampler,
            collate_fn=collate,
            num_workers=config.dataloader_num_workers,
            pin_memory=acc.device.type == "cuda",
        )
        batches = iter(loader)
        progress = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="train",
            disable=not acc.is_local_main_process,
        )
        self.grad_norm = torch.zeros((), device=acc.device)
        unread: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        while self.step < config.max_steps:
            step_loss = self._micro_step(next(batches))
            for _ in range(config.gradient_accumulation_steps - 1):
                step_loss = step_loss + self._micro_step(next(batches))
            step_loss = step_loss / config.gradient_accumulation_steps
            # The LR factor for step s is applied to the update of step s, hence stepped after it.
            lr = self.lr_scheduler.get_last_lr()[0]
            self.lr_scheduler.step()
            self.ema.update(self.unwrapped)
            self.step += 1
            unread.append((self.step, lr, step_loss, torch.as_tensor(self.grad_norm)))
            progress.update(1)
            checkpoint_due = (
                bool(config.checkpoint_every) and self.step % config.checkpoint_every == 0
            )
            sample_due = bool(config.sample_every) and self.step % config.sample_every == 0
            # A diverged loss must be seen before anything is written from the weights it produced.
            if self.step % config.log_every == 0 or checkpoint_due or sample_due:
                self._read_losses(unread, progress)
            if checkpoint_due:
                self._save_checkpoint()
            if sample_due:
                self._log_samples()
        self._read_losses(unread, progress)
        progress.close()
        if not (self.output_dir / f"checkpoint-{self.step}").exists():
            self._save_checkpoint()
        result = TrainResult(
            self.output_dir, self.step, float(np.mean(self.recent_losses or [math.nan]))
        )
        acc.wait_for_everyone()
        acc.end_training()
        # Saving the pipeline and pushing it (after any queued checkpoint uploads) involve no other
        # process: they come after the last collective, so a long upload cannot time out the other
        # ranks waiting at a barrier.
        if acc.is_main_process:
            self._save_final(result)
        return result

    # ---------------------------------------------------------------------------------- final output

    def _card_description(self, result: TrainResult) -> str:
        config, data = self.config, self.data
        classes = f", {data.num_classes} classes" if data.num_classes else ""
        lines = [
            "A denoising diffusion probabilistic model (Ho, Jain & Abbeel 2020) trained with hf_ddpm "
            "and sampled by ancestral sampling. The weights are the exponential moving average.",
            "",
            "## Training",
            "",
            f"- Command: `{config.command()}`",
            f"- Data: {data.name} (split {config.split!r}, {len(data)} images, {data.channels} "
            f"channel(s){classes}), {config.resolution}x{config.resolution}",
            f"- Steps: {result.step} at batch {config.batch_size} x {self.accelerator.num_processes} "
            f"process(es) x {config.gradient_accumulation_steps} accumulation",
            f"- Objective: L_{config.loss}, {config.prediction_type} prediction, "
            f"{config.variance_type} variance, {config.beta_schedule} betas, T={config.num_train_timesteps}",
            f"- Final loss (mean of the last {len(self.recent_losses)} steps): {result.final_loss:.5f}",
            f"- Optimiser: Adam {config.learning_rate:g}, {config.lr_warmup_steps}-step warm-up, "
            f"grad clip {config.max_grad_norm:g}, EMA {config.ema_decay:g}",
        ]
        if self.null_label is not None:
            lines.append(
                f"- Class-conditional: label {self.null_label} is the null class for classifier-free "
                f"guidance (label dropout {config.class_dropout:g})"
            )
        return "\n".join(lines)

    def _save_final(self, result: TrainResult) -> None:
        from hf_ddpm.core.pipeline import HFDDPMPipeline
        from hf_ddpm.data.image_datasets import BUNDLED_DATASETS

        config = self.config
        grid = self._sample_grid()  # also copies the EMA weights into ema_unet
        pipeline = HFDDPMPipeline(unet=self.ema_unet, scheduler=self.scheduler)
        hub_dataset = config.train_data_dir is None and config.dataset not in BUNDLED_DATASETS
        pipeline.save_pretrained(
            self.output_dir,
            repo_id=config.hub_model_id,
            datasets=[config.dataset] if hub_dataset else None,
            tags=[
                "unconditional-image-generation" if self.null_label is None else "class-conditional"
            ],
            description=self._card_description(result),
            sample_grid=grid,
        )
        if config.push_to_hub:
            from hf_ddpm.core.hub_layout import HubPushError, push_folder_to_hub

            from .checkpointing import TMP_PREFIX
            from .hub_checkpoints import HUB_STAGING_PREFIX

            if self.uploader is not None:
                # The final commit comes after every checkpoint commit, so the repo ends on the pipeline.
                result.checkpoint_push_errors = list(self.uploader.wait())
            try:
                result.hub_url = push_folder_to_hub(
                    self.output_dir,
                    config.hub_model_id,
                    private=config.hub_private,
                    token=config.hub_token,
                    commit_message=f"hf-ddpm train: step {result.step}",
                    # Checkpoints hold optimizer state (hundreds of MB for ddpm-cifar10) and logs grow.
                    ignore_patterns=[
                        "checkpoint-*",
                        f"{TMP_PREFIX}*",
                        f"{HUB_STAGING_PREFIX}*",
                        "logs/*",
                    ],
                )
            except HubPushError as error:
                result.push_error = str(error)
                logger.error("%s", error)


def train(config: TrainConfig) -> TrainResult:
    """Train a DDPM as ``config`` says; see the module docstring for the guarantees.

    Raises:
        ValueError / FileNotFoundError: bad options or data (raised before any training step).
        TrainingDivergedError: the loss became NaN or infinite.
    """
    config.validate()
    return _Trainer(config).run()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hf-ddpm train``: 0 on success, 1 if training diverged, the final push failed or the
    checkpoint to resume from is unusable or unreachable, 2 for bad options or data. Failed checkpoint
    uploads (``--hub-strategy``) are printed as warnings and do not change the status."""
    from .checkpointing import CorruptCheckpointError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        result = train(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-ddpm train: error: {error}", file=sys.stderr)
        return 2
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
