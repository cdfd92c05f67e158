"""Faster UNet calls for sampling: autocast to bfloat16 or float16, channels_last, torch.compile.

The UNet takes all of a sampling run's time (docs/benchmarks.md), so these act on the UNet alone: its
``forward`` runs under autocast, its weights take the channels_last layout, and ``torch.compile`` wraps its
call. The chain itself (x_t, the scheduler's mean and noise) stays in float32, as in training: the pipeline
casts the UNet's output back to float32 before each step.

Nothing here is part of a saved model: a pipeline loaded elsewhere runs in float32 as saved.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "UNET_DTYPES",
    "UNetSpeed",
    "apply_unet_speed",
    "compile_warm_up",
    "unet_dtype",
    "unet_image_shape",
]

logger = logging.getLogger(__name__)

UNET_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class UNetSpeed:
    """How the UNet runs: ``dtype`` of its autocast (``--dtype``; float32 is none), ``compile``
    (``--compile``) and ``channels_last`` (``--channels-last``; also on with any other option, where it is
    measured faster: docs/benchmarks.md). The defaults run the UNet as saved, so images equal a plain
    pipeline's bit for bit; channels_last alone changes float rounding only (measured: 1 pixel in 16,384
    off by one 8-bit level after 10 steps of the bundled model)."""

    dtype: str = "float32"
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in UNET_DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(UNET_DTYPES)}, got {self.dtype!r}")

    @property
    def uses_channels_last(self) -> bool:
        return self.channels_last or self.compile or self.dtype != "float32"

    def describe(self) -> str:
        """The options in words, for the log and for a sample folder's settings."""
        parts = [self.dtype if self.dtype == "float32" else f"{self.dtype} autocast"]
        if self.uses_channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append("torch.compile")
        return ", ".join(parts)


def unet_image_shape(unet: Any) -> tuple[int, int, int]:
    """(height, width, channels) of the images ``unet`` makes, from its config."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return int(height), int(width), int(unet.config.in_channels)


def _check_device(speed: UNetSpeed, device: torch.device) -> None:
    if speed.dtype == "float16" and device.type == "cpu":
        raise ValueError(
            "--dtype float16 is not supported on CPU (torch's CPU autocast runs float16 convolutions "
            "slowly or not at all); use --dtype bfloat16 or float32 there"
        )


def _autocast_forward(forward: Any, device_type: str, dtype: str) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=UNET_DTYPES[dtype]):
            return forward(*args, **kwargs)

    run.autocast_dtype = dtype  # type: ignore[attr-defined]  # read back by unet_dtype
    return run


def unet_dtype(unet: Any) -> str:
    """The dtype ``unet``'s convolutions run in, as ``--dtype`` names it: the autocast dtype that
    :func:`apply_unet_speed` gave it, else its weights' dtype. Read from the UNet itself, so that what a
    sample folder records is what drew its images."""
    autocast = getattr(unet.forward, "autocast_dtype", None)
    return autocast or str(unet.dtype).removeprefix("torch.")


def apply_unet_speed(pipeline: Any, speed: UNetSpeed, warmup_batch_size: int | None = None) -> None:
    """Set ``pipeline.unet`` to run as ``speed`` says, in place.

    With ``compile`` and a ``warmup_batch_size``, :func:`compile_warm_up` runs here, so the run's own
    batches, and its progress bar, do not pay for compilation; without one the caller warms up later.

    Raises:
        ValueError: an unknown dtype, or float16 on a CPU; the message names ``--dtype``.
    """
    unet = pipeline.unet
    device = unet.device
    _check_device(speed, device)
    if speed.uses_channels_last:
        unet.to(memory_format=torch.channels_last)
    if speed.dtype != "float32":
        unet.forward = _autocast_forward(unet.forward, device.type, speed.dtype)
    if not speed.compile:
        return
    unet.compile()
    if warmup_batch_size is not None:
        compile_warm_up(pipeline, warmup_batch_size)


def compile_warm_up(pipeline: Any, batch_size: int) -> None:
    """One call of a UNet that :func:`apply_unet_speed` compiled, on ``batch_size`` images (the batch the
    run will use): it compiles it, and its time is logged once."""
    unet = pipeline.unet
    device = unet.device
    height, width, channels = unet_image_shape(unet)
    x = torch.zeros(batch_size, channels, height, width, device=device)
    t = torch.tensor(0, dtype=torch.long, device=device)
    labels = None
    if getattr(unet.config, "num_class_embeds", None):
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        unet(x, t, class_labels=labels)
    logger.info(
        "torch.compile warm-up of the UNet: %.1f s (once; a batch of another size compiles again)",
        time.perf_counter() - start,
    )
