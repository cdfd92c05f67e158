"""Setting up a training run: its data, accelerator, resume source, model, EMA and optimiser.

:func:`hf_ddpm.training.train.train` calls these in order, each an explicit step: the data is read (and
every image checked) first, before anything is written; a checkpoint on the Hub is downloaded by
:func:`resolve_resume_source`, never inside a constructor; :func:`build_setup` then builds the
:class:`TrainingSetup` that the step, checkpoints and reports share.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hf_ddpm.sampling.sharding import multi_process_without_accelerator

from .determinism import INIT, EpochBatchSampler, derive_seed
from .train_config import RESUME_FROM_HUB, TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

    from hf_ddpm.core.scheduling import HFDDPMScheduler
    from hf_ddpm.data.image_datasets import ImageDataset

    from .ema import EMA
    from .timestep_sampler import UniformSampler

logger = logging.getLogger(__name__)


def load_training_data(config: TrainConfig) -> ImageDataset:
    """The run's images, every file of an image folder opened once (``hf_ddpm.data.ingest``).

    Raises:
        ValueError / FileNotFoundError: the data cannot be used; the message names the option.
    """
    from hf_ddpm.data.image_datasets import load_image_dataset

    return load_image_dataset(
        config.dataset,
        train_data_dir=config.train_data_dir,
        split=config.split,
        image_column=config.image_column,
        class_column=config.class_column,
        channels=config.channels,
        skip_bad_images=config.skip_bad_images,
        class_from_folders=config.class_from_folders,
    )


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The run's ``Accelerator``: devices, processes, mixed precision, accumulation and trackers.

    ``--mixed-precision fp16`` where accelerate cannot use it (a CPU) is a logged warning.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=multi_process_without_accelerator(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dynamo_backend="inductor" if config.compile else "no",
    )
    if config.mixed_precision == "fp16" and not accelerator.native_amp:
        # accelerate then leaves autocast and the loss scaler off without a word.
        logger.warning(
            "--mixed-precision fp16 does nothing on %s: training runs in float32 (bf16 works on CPU)",
            accelerator.device.type,
        )
    return accelerator


def resolve_resume_source(config: TrainConfig, accelerator: Accelerator) -> Path | None:
    """The verified checkpoint folder ``--resume-from-checkpoint`` names, or ``None`` for a fresh start.

    ``hub`` downloads the checkpoint pushed to ``--hub-model-id`` into ``--output-dir`` first.
    """
    from .checkpointing import TRAINING_GROUPS, resolve_resume

    resume = config.resume_from_checkpoint
    if resume == RESUME_FROM_HUB:
        path = _download_hub_checkpoint(config, accelerator)
        where = f"the Hub repo {config.hub_model_id}"
    else:
        path = resolve_resume(config.output_dir, resume, TRAINING_GROUPS)
        where = f"--output-dir {config.output_dir}"
    if resume is not None and path is None:
        logger.info(
            "note: --resume-from-checkpoint %s: %s holds no checkpoint yet, so this run starts fresh",
            resume,
            where,
        )
    return path


def _download_hub_checkpoint(config: TrainConfig, accelerator: Accelerator) -> Path | None:
    """The main process downloads the checkpoint pushed to ``--hub-model-id`` into the output folder;
    every process gets its path (or the error)."""
    from accelerate.utils import broadcast_object_list

    from .hub_checkpoints import download_hub_checkpoint

    found: list[str | None] = [None, None]  # [checkpoint path, error message]
    error: Exception | None = None
    if accelerator.is_main_process:
        try:
            path = download_hub_checkpoint(
                config.output_dir, config.hub_model_id, token=config.hub_token
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


def linear_warmup(warmup_steps: int) -> Callable[[int], float]:
    """The LR factor of step ``s`` (0-based): ``min(1, (s + 1) / warmup_steps)``, 1 without warm-up."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0

    return factor


@dataclass
class TrainingSetup:
    """What a run is built from, shared by the step, the checkpoints and the reports.

    Attributes:
        model, optimizer: as ``accelerator.prepare`` returned them.
        ema_unet: a separate UNet that holds the EMA weights for sampling and saving (main process only).
        null_label: label ``num_classes``, the null class of classifier-free guidance, or ``None``.
        update_sampler: whether the timestep sampler learns from the losses (importance-sampled L_vlb).
    """

    config: TrainConfig
    accelerator: Accelerator
    data: ImageDataset
    scheduler: HFDDPMScheduler
    unet_config: dict[str, Any]
    null_label: int | None
    batch_sampler: EpochBatchSampler
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA
    ema_unet: torch.nn.Module | None
    timestep_sampler: UniformSampler
    update_sampler: bool

    @functools.cached_property
    def train_data(self) -> Any:
        """The data as the loop's batches read it (:func:`hf_ddpm.data.image_datasets.preprocess`),
        built on first use: a setup driven with batches of its own never reads its images."""
        from hf_ddpm.data.image_datasets import preprocess

        return preprocess(self.data, self.config.resolution)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


def build_setup(config: TrainConfig, accelerator: Accelerator, data: ImageDataset) -> TrainingSetup:
    """Scheduler, UNet (seeded from ``(seed, INIT)``), EMA, Adam, warm-up and timestep sampler for
    ``data``, placed by ``accelerator``.

    ``config`` must have its scaled defaults filled in (:meth:`TrainConfig.with_scaled_defaults`);
    ``hf_ddpm.training.train.prepare_training`` runs the whole sequence.
    """
    if config.batch_size is None or config.lr_warmup_steps is None:
        raise ValueError(
            "build_setup needs --batch-size and --lr-warmup-steps filled in: pass the config "
            "through TrainConfig.with_scaled_defaults first"
        )
    from hf_ddpm.core.class_layout import null_label_of, num_class_embeds_for
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    from .ema import EMA
    from .timestep_sampler import LossSecondMomentResampler, UniformSampler
    from .unet_presets import build_unet, unet_config

    acc = accelerator
    scheduler = HFDDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        variance_type=config.variance_type,
        # Ho's 1e-4..0.02 is tuned for T = 1000; for other T it is rescaled by 1000 / T so that x_T is
        # still pure noise (diffusers leaves alpha_bar_T = 0.36 at T = 100).
        scale_linear_betas_by_timesteps=config.num_train_timesteps != 1000,
    )
    # The data's classes, then the null label of classifier-free guidance (HFDDPMPipeline's layout).
    num_class_embeds = None if data.num_classes is None else num_class_embeds_for(data.num_classes)
    null_label = null_label_of(num_class_embeds)
    unet_cfg = unet_config(
        config.model_preset,
        config.unet_config,
        resolution=config.resolution,
        in_channels=data.channels,
        out_channels=scheduler.model_output_channels(data.channels),
        num_class_embeds=num_class_embeds,
    )
    batch_sampler = EpochBatchSampler(
        len(data), config.batch_size, acc.num_processes, acc.process_index, config.seed, 0
    )
    torch.manual_seed(derive_seed(config.seed, INIT))
    unet = build_unet(unet_cfg)
    on_cuda = acc.device.type == "cuda"
    # On the device before the EMA copies it, so shadow weights and sampling copy live there too.
    unet = unet.to(acc.device)
    if on_cuda:
        unet = unet.to(memory_format=torch.channels_last)
    ema = EMA(unet, config.ema_decay)
    ema_unet = copy.deepcopy(unet) if acc.is_main_process else None
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.learning_rate, fused=on_cuda or None)
    # Stepped by hand once per optimizer step (an accelerate-prepared LR scheduler would step once
    # per process).
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup(config.lr_warmup_steps)
    )
    timestep_sampler = (
        LossSecondMomentResampler(config.num_train_timesteps)
        if config.loss == "vlb"
        else UniformSampler(config.num_train_timesteps)
    )
    model, optimizer = acc.prepare(unet, optimizer)
    return TrainingSetup(
        config=config,
        accelerator=acc,
        data=data,
        scheduler=scheduler,
        unet_config=unet_cfg,
        null_label=null_label,
        batch_sampler=batch_sampler,
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        ema=ema,
        ema_unet=ema_unet,
        timestep_sampler=timestep_sampler,
        update_sampler=config.loss == "vlb",
    )
