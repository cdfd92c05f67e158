"""What the sampling steps of HFDDPMScheduler and HFDDIMScheduler share: diffusers' step-index rule, the
noise draw, and the dtype rule.

- The index: diffusers' ``step_index`` / ``begin_index`` (as its multistep schedulers keep them). The first
  ``step`` after ``set_timesteps`` finds its timestep in ``timesteps`` (or starts at ``begin_index``), and
  every step advances by one. A sampler that steps out of order (RePaint's jumps) says where it is with
  ``set_begin_index``. A timestep on the accelerator is read back once, at that first step, as diffusers
  does; the steps after it never wait for the device.
- The noise: one standard normal per element of the sample, drawn as diffusers' schedulers draw it
  (``randn_tensor`` in the model output's dtype), so the same generator gives the same samples.
- The dtype: a half-precision step is computed in float32 and cast back.
- What is done to the predicted x_0: clipping, or Imagen's dynamic thresholding, or nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from diffusers.utils.torch_utils import randn_tensor

GeneratorArg = torch.Generator | list[torch.Generator] | None


class StepIndexMixin:
    """diffusers' step-index contract: ``step_index``, ``begin_index``, ``set_begin_index``; a scheduler
    calls :meth:`_reset_step_index` in ``set_timesteps`` and :meth:`_current_step_index` /
    :meth:`_advance_step_index` around each step."""

    timesteps: torch.Tensor
    _step_index: int | None = None
    _begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """The index in ``timesteps`` of the next step; None before the first."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index of the first step, when a pipeline set it (``set_begin_index``)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Make ``timesteps[begin_index]`` the next step (diffusers' image-to-image pipelines call this
        before their loop; a sampler that jumps back up the chain calls it before stepping again)."""
        self._begin_index = int(begin_index)
        self._step_index = None

    def index_for_timestep(self, timestep: int | torch.Tensor) -> int:
        """The index of ``timestep`` in ``timesteps``; ValueError if it is not on the schedule."""
        matches = (self.timesteps.cpu() == int(timestep)).nonzero()
        if len(matches) == 0:
            raise ValueError(
                f"timestep {int(timestep)} is not on the current schedule; call set_timesteps and use one of "
                f"scheduler.timesteps (first {self.timesteps[:5].tolist()}...)"
            )
        return int(matches[0])

    def _reset_step_index(self) -> None:
        self._step_index = None
        self._begin_index = None

    def _current_step_index(self, timestep: int | torch.Tensor) -> int:
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                self._step_index = self.index_for_timestep(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError(
                f"step called {self._step_index + 1} times on a schedule of {len(self.timesteps)} timesteps; "
                "call set_timesteps (or set_begin_index) to start again"
            )
        return self._step_index

    def _advance_step_index(self) -> None:
        self._step_index += 1


def standard_normal_noise(
    shape: torch.Size | tuple[int, ...],
    generator: GeneratorArg,
    like: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """z ~ N(0, I) of ``shape`` on ``like``'s device, drawn in ``like``'s dtype (the model output's, as
    diffusers draws it) and returned in ``dtype`` (the chain's)."""
    if generator is None or (
        type(generator) is torch.Generator and generator.device == like.device
    ):
        noise = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    else:
        # Lists of generators, and CPU generators for device samples: diffusers' own helper, for
        # identical draws.
        noise = randn_tensor(shape, generator=generator, device=like.device, dtype=like.dtype)
    # Each no-op .to() is a dispatcher round trip, a tenth of a step on small tensors.
    return noise if noise.dtype == dtype else noise.to(dtype)


def computes_upcast(dtype: torch.dtype) -> bool:
    """Whether a step on ``dtype`` is computed in float32 (half precision) rather than in place."""
    return dtype not in (torch.float32, torch.float64)


X0Processing = Callable[[torch.Tensor], torch.Tensor]


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): s = the ``ratio`` quantile of |x0| per sample,
    clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s."""
    flat = x0.flatten(1).float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)


def _clip(x0: torch.Tensor, limit: float) -> torch.Tensor:
    return x0.clamp(-limit, limit)


def _clip_in_place(x0: torch.Tensor, limit: float) -> torch.Tensor:
    return x0.clamp_(-limit, limit)


def x0_processing(
    clip_sample: bool,
    clip_sample_range: float,
    thresholding: bool,
    dynamic_thresholding_ratio: float,
    sample_max_value: float,
    in_place: bool = False,
) -> X0Processing | None:
    """The function applied to the predicted x_0 (diffusers' config keys): dynamic thresholding, else
    clipping to [-range, range], else None. ``in_place`` clips the caller's buffer (a step's own x_0)."""
    if thresholding:
        return partial(
            dynamic_threshold, ratio=dynamic_thresholding_ratio, max_value=sample_max_value
        )
    if clip_sample:
        return partial(_clip_in_place if in_place else _clip, limit=clip_sample_range)
    return None
