"""Sigma_theta of p_theta(x_{t-1} | x_t): one object per ``variance_type``, for the step and for the bound.

Ho et al. 2020 (section 3.2) fix Sigma_t = sigma_t^2 I with sigma_t^2 = beta-tilde_t ("small") or beta_t
("large"); Nichol & Dhariwal 2021 (eq. 15) let the network output it. Each variance type is evaluated on a
chain (the full T-step one, or a respaced one, whose tables give the effective betas) into a
:class:`ChainVariance`. That one object gives both p_theta's variance and log-variance at per-sample
timesteps (``p_variance``, used by ``p_mean_variance`` and the bound) and the sampler's noise scale of
every step (``noise_scales``), so each formula is written once, here.

A new variance type is one new object with ``name``, ``learned`` and ``on_chain(chain, timesteps)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Protocol

import numpy as np
import torch

from .analytic import analytic_step_variances
from .diffusion_tables import DiffusionTables, extract

# The sampler's noise scale sigma of one step: a Python float for a fixed type (the step multiplies by a
# scalar, with no call), a function of the network's variance channels for a learned one.
NoiseScale = float | Callable[[torch.Tensor], torch.Tensor]
# chain -> two float64 columns indexed like the chain's tables.
Columns = Callable[[DiffusionTables], tuple[torch.Tensor, torch.Tensor]]


class ChainVariance(Protocol):
    """A variance type evaluated on one chain."""

    def p_variance(
        self, values: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(variance, log-variance) of p_theta at per-sample chain indices ``t`` (B,), broadcastable over
        ``like``; ``values`` are the network's variance channels (None for a fixed type)."""
        ...

    def noise_scales(self) -> list[NoiseScale]:
        """The sampler's noise scale sigma = sqrt(variance) of each chain index, in index order: a float
        for a fixed type, a function of the variance channels for a learned one."""
        ...


class VarianceType(Protocol):
    """One choice of Sigma_theta: whether the network outputs it (doubling its channels), and how."""

    name: str
    learned: bool

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> ChainVariance:
        """This type on ``chain``, whose index k is timestep ``timesteps[k]`` of the full chain."""
        ...


def _exp_affine(slope: float, intercept: float, values: torch.Tensor) -> torch.Tensor:
    return torch.mul(values, slope).add_(intercept).exp_()


@dataclass(frozen=True)
class FixedChainVariance:
    """Sigma_t = variance[t] I, the same for every input."""

    variance: torch.Tensor
    log_variance: torch.Tensor

    def p_variance(
        self, values: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return extract(self.variance, t, like), extract(self.log_variance, t, like)

    def noise_scales(self) -> list[NoiseScale]:
        return self.variance.sqrt().tolist()


@dataclass(frozen=True)
class LearnedChainVariance:
    """log Sigma_t = slope[t] * v + intercept[t] elementwise, v the network's variance channels."""

    slope: torch.Tensor
    intercept: torch.Tensor

    def p_variance(
        self, values: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_variance = values * extract(self.slope, t, like) + extract(self.intercept, t, like)
        return torch.exp(log_variance), log_variance

    def noise_scales(self) -> list[NoiseScale]:
        # sigma = exp(log Sigma / 2): the halving folded into the step's two constants.
        return [
            partial(_exp_affine, 0.5 * a, 0.5 * b)
            for a, b in zip(self.slope.tolist(), self.intercept.tolist())
        ]


@dataclass(frozen=True)
class FixedVariance:
    """A fixed Sigma_t: ``columns(chain)`` gives its (variance, log-variance) per chain index."""

    name: str
    columns: Columns
    learned: ClassVar[bool] = False

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> FixedChainVariance:
        return FixedChainVariance(*self.columns(chain))


@dataclass(frozen=True)
class LearnedVariance:
    """A Sigma_t the network outputs: ``log_variance_map(chain)`` gives the (slope, intercept) per chain
    index of the affine map from its variance channels to log Sigma."""

    name: str
    log_variance_map: Columns
    learned: ClassVar[bool] = True

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> LearnedChainVariance:
        return LearnedChainVariance(*self.log_variance_map(chain))


@dataclass(frozen=True, eq=False)
class AnalyticVariance:
    """Analytic-DPM's optimal variance (Bao et al. 2022, Theorem 1, clipped by Theorem 2) of every step of
    the chain, from the network's Gamma_n (``eps_second_moment``, indexed by the full chain's timesteps).

    The decoder's variance is the clipped E Var[x_0 | x_{t_1}]; ``last_step_pixels`` (None: off) caps the
    last noise-adding step at that many 8-bit bins (:func:`.analytic.analytic_step_variances`)."""

    eps_second_moment: np.ndarray
    last_step_pixels: float | None = None
    name: ClassVar[str] = "analytic"
    learned: ClassVar[bool] = False

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> FixedChainVariance:
        count = chain.num_timesteps
        descending = analytic_step_variances(
            chain.alphas_cumprod.cpu().numpy(),
            self.eps_second_moment[timesteps.cpu().numpy()],
            np.arange(count - 1, -1, -1),
            last_step_pixels=self.last_step_pixels,
        )
        # A Gamma_n >= 1 clips E Var[x_0 | x_n] to 0, the decoder's variance with it: floored so that its log
        # stays finite.
        variance = torch.from_numpy(np.maximum(descending[::-1], _ANALYTIC_MIN_VARIANCE).copy())
        variance = variance.to(device=chain.betas.device, dtype=chain.betas.dtype)
        return FixedChainVariance(variance, variance.log())


_ANALYTIC_MIN_VARIANCE = 1e-20


def beta_tilde(chain: DiffusionTables) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma_t^2 = beta-tilde_t (Ho et al. eq. 7), its log clipped at t = 0 to beta-tilde_2."""
    return chain.posterior_variance, chain.posterior_log_variance_clipped


def beta(chain: DiffusionTables) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma_t^2 = beta_t (Ho et al. section 3.2), except beta-tilde_2 at t = 0 as in Ho et al.'s and
    improved-diffusion's code, so that L_0 is not judged with a tiny variance."""
    log_variance = torch.cat([chain.posterior_log_variance_clipped[:1], chain.log_betas[1:]])
    return torch.cat([log_variance[:1].exp(), chain.betas[1:]]), log_variance


def log_variance_is_output(chain: DiffusionTables) -> tuple[torch.Tensor, torch.Tensor]:
    """log Sigma = v: the network outputs the log-variance itself (improved-diffusion's LEARNED)."""
    return torch.ones_like(chain.betas), torch.zeros_like(chain.betas)


def log_variance_interpolated(chain: DiffusionTables) -> tuple[torch.Tensor, torch.Tensor]:
    """Nichol & Dhariwal eq. 15: log Sigma = f log beta_t + (1 - f) log beta-tilde_t with f = (v + 1) / 2,
    written as the affine map v * (log beta - log beta-tilde) / 2 + (log beta + log beta-tilde) / 2."""
    low, high = chain.posterior_log_variance_clipped, chain.log_betas
    return 0.5 * (high - low), 0.5 * (high + low)


VARIANCE_TYPES: dict[str, VarianceType] = {
    "fixed_small": FixedVariance("fixed_small", beta_tilde),
    "fixed_small_log": FixedVariance("fixed_small_log", beta_tilde),
    "fixed_large": FixedVariance("fixed_large", beta),
    "fixed_large_log": FixedVariance("fixed_large_log", beta),
    "learned": LearnedVariance("learned", log_variance_is_output),
    "learned_range": LearnedVariance("learned_range", log_variance_interpolated),
}
# The variance types whose network outputs twice the sample's channels.
LEARNED_VARIANCE_TYPES: tuple[str, ...] = tuple(
    name for name, variance in VARIANCE_TYPES.items() if variance.learned
)


VARIANCE_TYPE_NAMES: tuple[str, ...] = (*VARIANCE_TYPES, AnalyticVariance.name)


def resolve_variance_type(
    variance_type: str,
    eps_second_moment: np.ndarray | None = None,
    last_step_pixels: float | None = None,
) -> VarianceType:
    """The object of a ``variance_type`` name; a ValueError lists the allowed names. "analytic" is built
    from the model's ``eps_second_moment`` (checked by :func:`.analytic.check_eps_second_moment`)."""
    if variance_type == AnalyticVariance.name:
        if eps_second_moment is None:
            raise ValueError(
                "variance_type 'analytic' needs eps_second_moment; run hf-ddpm calibrate"
            )
        return AnalyticVariance(np.asarray(eps_second_moment, dtype=np.float64), last_step_pixels)
    try:
        return VARIANCE_TYPES[variance_type]
    except KeyError:
        raise ValueError(
            f"Unknown variance_type {variance_type!r}; allowed values: {', '.join(VARIANCE_TYPE_NAMES)}"
        ) from None


# The variance types whose per-pixel second moment comes from a covariance head (SN / NPR, Bao et al. 2022).
HEAD_VARIANCE_TYPES: tuple[str, ...] = ("sn", "npr")
