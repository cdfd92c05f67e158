"""One training step: forward and backward on each micro-batch, then the LR schedule and the EMA.

Every random draw of a micro-batch comes from ``derive_seed(seed, rank, micro-batch index, stream)``
(``determinism.py``), so the step is a pure function of the weights, the optimiser state and the two
counters :class:`TrainingStep` keeps: ``step`` and ``batches_seen``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from hf_ddpm.data.image_datasets import random_horizontal_flip, to_device

from .determinism import AUX, DROPOUT, NOISE, derive_seed
from .setup import TrainingSetup


@dataclass
class StepOutcome:
    """One optimizer step's numbers, still on the device (reading them would wait for the GPU).

    Attributes:
        step: the step just taken (1-based).
        lr: the learning rate its update used.
        loss: the loss averaged over micro-batches and processes.
        grad_norm: the gradient norm before clipping.
    """

    step: int
    lr: float
    loss: torch.Tensor
    grad_norm: torch.Tensor


class TrainingStep:
    """The step of a run built from ``setup``; ``step`` and ``batches_seen`` count what it has done."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.step = 0
        self.batches_seen = 0
        self.grad_norm = torch.zeros((), device=setup.accelerator.device)

    def micro_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward and backward on one micro-batch; returns the loss averaged over all processes, as a
        device tensor: reading it would wait for the GPU, so losses are read in batches."""
        s = self.setup
        acc, config = s.accelerator, s.config
        device = acc.device
        keys = (config.seed, acc.process_index, self.batches_seen)
        aux = torch.Generator().manual_seed(derive_seed(*keys, AUX))
        noise_gen = torch.Generator(device).manual_seed(derive_seed(*keys, NOISE))
        torch.manual_seed(derive_seed(*keys, DROPOUT))
        x0 = batch["pixel_values"].to(device, non_blocking=True)
        if config.random_flip:
            x0 = random_horizontal_flip(x0, aux)
        labels = None
        if s.null_label is not None:
            drop = torch.rand(x0.shape[0], generator=aux) < config.class_dropout
            labels = to_device(torch.where(drop, s.null_label, batch["label"]), device)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device, dtype=x0.dtype)
        # t is drawn on the host (the same t on every device type), then copied without a sync.
        t, weights = s.timestep_sampler.sample(x0.shape[0], generator=aux)
        t, weights = to_device(t, device), to_device(weights, device)
        x_t = s.scheduler.add_noise(x0, noise, t)
        with acc.accumulate(s.model):
            output = s.model(x_t, t, class_labels=labels).sample.float()
            per_sample = s.scheduler.training_loss(
                output,
                x0,
                noise,
                t,
                loss_type=config.loss,
                min_snr_gamma=config.min_snr_gamma,
                x_t=x_t,
                num_bins=s.data.num_bins,
            )
            loss = (per_sample * weights).mean()
            # Averaged over ranks so that every rank sees the same value and stops at the same step.
            mean_loss = acc.reduce(loss.detach(), reduction="mean")
            if s.update_sampler:
                s.timestep_sampler.update(acc.gather(t), acc.gather(per_sample.detach()))
            acc.backward(loss)
            if acc.sync_gradients:
                self.grad_norm = acc.clip_grad_norm_(s.model.parameters(), config.max_grad_norm)
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
        self.batches_seen += 1
        return mean_loss

    def optimizer_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> StepOutcome:
        """``--gradient-accumulation-steps`` micro-batches from ``batches``, the LR schedule and the EMA."""
        s = self.setup
        accumulation = s.config.gradient_accumulation_steps
        step_loss = self.micro_step(next(batches))
        for _ in range(accumulation - 1):
            step_loss = step_loss + self.micro_step(next(batches))
        step_loss = step_loss / accumulation
        # The LR factor for step s is applied to the update of step s, hence stepped after it.
        lr = s.lr_scheduler.get_last_lr()[0]
        s.lr_scheduler.step()
        s.ema.update(s.unwrapped)
        self.step += 1
        return StepOutcome(self.step, lr, step_loss, torch.as_tensor(self.grad_norm))
