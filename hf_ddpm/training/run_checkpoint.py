"""A run's checkpoint: what a training run saves into ``checkpoint-N``, and how it resumes from one.

The folder format (atomic, manifest-checked, no pickle) is ``checkpointing.py``'s. A checkpoint holds the
model, the EMA, the optimizer, LR schedule, timestep-sampler history, AMP scaler and the
python/numpy/torch RNG states, plus the step, the micro-batches seen and the run's options, which is
everything an exact resume needs (``determinism.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpointing import (
    STATE,
    flatten_state,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    unflatten_state,
)
from .determinism import rng_state, set_rng_state
from .setup import TrainingSetup
from .step import TrainingStep

if TYPE_CHECKING:
    from .hub_checkpoints import HubCheckpointUploader

logger = logging.getLogger(__name__)


def _json_round_trip(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with saved state."""
    return json.loads(json.dumps(value))


def save_run_checkpoint(
    setup: TrainingSetup, progress: TrainingStep, uploader: HubCheckpointUploader | None
) -> Path | None:
    """Write ``checkpoint-{step}`` on the main process (then hand it to ``uploader`` and prune old ones);
    every process waits for it. Returns the folder on the main process."""
    acc, config = setup.accelerator, setup.config
    path = None
    if acc.is_main_process:
        training_state = {
            "optimizer": setup.optimizer.state_dict(),
            "lr_scheduler": setup.lr_scheduler.state_dict(),
            "timestep_sampler": setup.timestep_sampler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "rng": rng_state(),
            "ema": {k: v for k, v in setup.ema.state_dict().items() if k != "shadow"},
        }
        skeleton, tensors = flatten_state(training_state)
        state = {
            "step": progress.step,
            "batches_seen": progress.batches_seen,
            "global_batch": setup.batch_sampler.global_batch,
            "unet_config": _json_round_trip(setup.unet_config),
            "config": config.to_dict(),
            "training_state": skeleton,
        }
        groups = {
            "model": setup.unwrapped.state_dict(),
            "ema": setup.ema.shadow,
            "training_state": tensors,
        }
        path = save_checkpoint(setup.output_dir, progress.step, groups, state)
        if uploader is not None:
            # Before pruning: the upload works on hard links, so pruning cannot pull files from under it.
            uploader.submit(path, progress.step)
        prune_checkpoints(setup.output_dir, config.checkpoints_total_limit)
        logger.info("saved %s", path)
    acc.wait_for_everyone()
    return path


def saved_options(path: Path) -> dict[str, Any]:
    """The options (``TrainConfig.to_dict``) the run that wrote checkpoint ``path`` was trained with."""
    state = json.loads((Path(path) / STATE).read_text(encoding="utf-8"))
    return dict(state["config"])


def load_run_checkpoint(setup: TrainingSetup, progress: TrainingStep, path: Path) -> None:
    """Restore every piece of state :func:`save_run_checkpoint` wrote, and the counters of ``progress``.

    Raises:
        ValueError: the checkpoint holds a UNet of another shape.
    """
    tensors, state = load_checkpoint(path)
    if state["unet_config"] != _json_round_trip(setup.unet_config):
        raise ValueError(
            f"checkpoint {path} holds a UNet with a different config; resume with the same "
            "--model-preset/--unet-config, resolution, data channels, classes and variance type"
        )
    if state["global_batch"] != setup.batch_sampler.global_batch:
        logger.warning(
            "the global batch changed from %d to %d: resuming, but not bit-for-bit",
            state["global_batch"],
            setup.batch_sampler.global_batch,
        )
    training_state = unflatten_state(state["training_state"], tensors["training_state"])
    setup.unwrapped.load_state_dict(tensors["model"])
    setup.ema.load_state_dict({**training_state["ema"], "shadow": tensors["ema"]})
    setup.optimizer.load_state_dict(training_state["optimizer"])
    setup.lr_scheduler.load_state_dict(training_state["lr_scheduler"])
    setup.timestep_sampler.load_state_dict(training_state["timestep_sampler"])
    scaler = setup.accelerator.scaler
    if scaler is not None and training_state["scaler"] is not None:
        scaler.load_state_dict(training_state["scaler"])
    set_rng_state(training_state["rng"])
    progress.step = int(state["step"])
    progress.batches_seen = int(state["batches_seen"])
    logger.info("resumed from %s at step %d", path, progress.step)
