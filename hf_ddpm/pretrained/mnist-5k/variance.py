"""Sigma_theta of p_theta(x_{t-1} | x_t): one object per ``variance_type``, for the step and for the bound.

Ho et al. 2020 (section 3.2) fix Sigma_t = sigma_t^2 I with sigma_t^2 = beta-tilde_t ("small") or beta_t
("large"); Nichol & Dhariwal 2021 (eq. 15) let the network output it. Each variance type is evaluated on a
chain (the full T-step one, or a respaced one, whose tables give the effective betas) into a
:class:`ChainVariance`. That one object gives both p_theta's variance and log-variance at per-sample
timesteps (``p_variance``, used by ``p_mean_variance`` and the bound) and the sampler's noise scale of
every step (``noise_scales``), so each formula is written once, here.

A new variance type is one new object with ``name``, ``learned``, ``head`` and ``on_chain(chain, timesteps)``.

The optimal variances (Analytic-DPM's scalar one, SN's and NPR's per pixel, :mod:`.covariance`) also serve
DDIM: their ``on_steps(alphas_cumprod, timesteps, eta, final_alpha_cumprod)`` evaluates them on a chain
whose steps are DDIM's of that eta (eta = 1 is DDPM, which ``on_chain`` is).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Protocol

import numpy as np
import torch

from .analytic import analytic_step_variances, last_step_max_variance
from .covariance import (
    npr_eps_error_moment,
    optimal_step_variance,
    sn_eps_error_moment,
    step_variance_coefficients,
    x0_covariance,
)
from .diffusion_tables import DiffusionTables, extract

# The sampler's noise scale sigma of one step: a Python float for a fixed type (the step multiplies by a
# scalar, with no call), a function of the network's variance channels for a learned one (for a head's
# type, of the eps error moment that ``split_model_output`` derives from eps and the head's channels).
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
    """One choice of Sigma_theta: whether the network outputs it (doubling its channels), whether a
    covariance head does (``head``: the model output is eps then the head's channels), and how."""

    name: str
    learned: bool
    head: bool

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
    head: ClassVar[bool] = False

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> FixedChainVariance:
        return FixedChainVariance(*self.columns(chain))


@dataclass(frozen=True)
class LearnedVariance:
    """A Sigma_t the network outputs: ``log_variance_map(chain)`` gives the (slope, intercept) per chain
    index of the affine map from its variance channels to log Sigma."""

    name: str
    log_variance_map: Columns
    learned: ClassVar[bool] = True
    head: ClassVar[bool] = False

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> LearnedChainVariance:
        return LearnedChainVariance(*self.log_variance_map(chain))


@dataclass(frozen=True)
class PixelChainVariance:
    """sigma^2 = floor[k] + gain[k]^2 Cov[x_0 | x_t] per pixel (:func:`.covariance.optimal_step_variance`),
    Cov from the eps error moment v by :func:`.covariance.x0_covariance` with ``noise_to_signal[k]``,
    capped at ``cap[k]`` (infinite except at the last noise-adding step when that is clipped)."""

    floor: torch.Tensor
    gain: torch.Tensor
    noise_to_signal: torch.Tensor
    cap: torch.Tensor

    def p_variance(
        self, values: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        covariance = x0_covariance(extract(self.noise_to_signal, t, like), values)
        variance = optimal_step_variance(
            extract(self.floor, t, like), extract(self.gain, t, like), covariance
        )
        variance = torch.minimum(variance, extract(self.cap, t, like))
        # A pixel whose Cov clips to 0 has a decoder variance of 0: floored so that its log stays finite.
        return variance, variance.clamp_min(_MIN_VARIANCE).log()

    def noise_scales(self) -> list[NoiseScale]:
        return [
            partial(_pixel_noise_scale, *row)
            for row in zip(
                self.floor.tolist(),
                self.gain.tolist(),
                self.noise_to_signal.tolist(),
                self.cap.tolist(),
            )
        ]


def _pixel_noise_scale(
    floor: float, gain: float, noise_to_signal: float, cap: float, values: torch.Tensor
) -> torch.Tensor:
    variance = optimal_step_variance(floor, gain, x0_covariance(noise_to_signal, values))
    return variance.clamp_(max=cap).sqrt_()


def _ddim_chain(
    alphas_cumprod: torch.Tensor, eta: float, final_alpha_cumprod: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor, gain) of each step of a chain with cumulative products ``alphas_cumprod`` (ascending; index
    k steps to k - 1, index 0 to the data, whose alpha-bar is ``final_alpha_cumprod``)."""
    ab_t = alphas_cumprod.double()
    ab_s = torch.cat([ab_t.new_full((1,), final_alpha_cumprod), ab_t[:-1]])
    return step_variance_coefficients(ab_t, ab_s, eta)


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
    head: ClassVar[bool] = False

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> FixedChainVariance:
        variance = self.on_steps(chain.alphas_cumprod, timesteps).variance
        variance = variance.to(device=chain.betas.device, dtype=chain.betas.dtype)
        return FixedChainVariance(variance, variance.log())

    def on_steps(
        self,
        alphas_cumprod: torch.Tensor,
        timesteps: torch.Tensor,
        eta: float = 1.0,
        final_alpha_cumprod: float = 1.0,
    ) -> FixedChainVariance:
        """Analytic-DDIM's variance of each step of the chain (eta = 1: DDPM's), on the CPU in float64."""
        count = len(alphas_cumprod)
        descending = analytic_step_variances(
            alphas_cumprod.cpu().double().numpy(),
            self.eps_second_moment[timesteps.cpu().numpy()],
            np.arange(count - 1, -1, -1),
            last_step_pixels=self.last_step_pixels,
            eta=eta,
            final_alpha_cumprod=final_alpha_cumprod,
        )
        # A Gamma_n >= 1 clips E Var[x_0 | x_n] to 0, the decoder's variance with it: floored so that its log
        # stays finite.
        variance = torch.from_numpy(np.maximum(descending[::-1], _MIN_VARIANCE).copy())
        return FixedChainVariance(variance, variance.log())


@dataclass(frozen=True)
class HeadVariance:
    """A per-pixel optimal variance from a covariance head (Bao et al. ICML 2022): the model output is
    eps_theta then the head's channels, which ``eps_error_moment(eps, head)`` turns into an estimate of
    E[(eps - eps_theta)^2 | x_t]; ``last_step_pixels`` as :class:`AnalyticVariance`'s.

    ``decoder_variance`` (None: the step's own, Cov[x_0 | x_{t_1}]) is the fixed variance of the DDPM
    chain's decoder p(x_0 | x_{t_1}), as the authors' bound has it (``nelbo_dtdpm``: beta-tilde_1 of the
    full chain): near the data Cov[x_0 | x_t] is a small multiple of the head's output, which a head that
    predicts no error for a pixel clips to 0, and a decoder of variance 0 makes L_0 unbounded. It is
    the decoder of the bound alone: the last DDPM step returns its mean."""

    name: str
    eps_error_moment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    last_step_pixels: float | None = None
    decoder_variance: float | None = None
    learned: ClassVar[bool] = False
    head: ClassVar[bool] = True

    def on_chain(self, chain: DiffusionTables, timesteps: torch.Tensor) -> PixelChainVariance:
        steps = self.on_steps(chain.alphas_cumprod, timesteps)
        if self.decoder_variance is None:
            return steps
        floor, gain = steps.floor.clone(), steps.gain.clone()
        floor[0], gain[0] = self.decoder_variance, 0.0
        return dataclasses.replace(steps, floor=floor, gain=gain)

    def on_steps(
        self,
        alphas_cumprod: torch.Tensor,
        timesteps: torch.Tensor,
        eta: float = 1.0,
        final_alpha_cumprod: float = 1.0,
    ) -> PixelChainVariance:
        """SN's or NPR's variance of each step of the chain, DDIM's of ``eta`` (eta = 1: DDPM's)."""
        ab = alphas_cumprod.double()
        floor, gain = _ddim_chain(ab, eta, final_alpha_cumprod)
        cap = torch.full_like(ab, math.inf)
        if self.last_step_pixels is not None and len(ab) > 1:
            cap[1] = last_step_max_variance(self.last_step_pixels)
        return PixelChainVariance(floor, gain, (1.0 - ab) / ab, cap)


_MIN_VARIANCE = 1e-20


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


# The variance types of a covariance head (sampling only: the UNet is trained with another type).
HEAD_VARIANCES: dict[str, HeadVariance] = {
    "sn": HeadVariance("sn", sn_eps_error_moment),
    "npr": HeadVariance("npr", npr_eps_error_moment),
}
HEAD_VARIANCE_TYPES: tuple[str, ...] = tuple(HEAD_VARIANCES)


VARIANCE_TYPE_NAMES: tuple[str, ...] = (
    *VARIANCE_TYPES,
    AnalyticVariance.name,
    *HEAD_VARIANCE_TYPES,
)


def check_head_prediction_type(variance: VarianceType, prediction_type: str) -> None:
    """A covariance head's variance reads eps_theta from the model output: ValueError unless the network
    predicts epsilon."""
    if variance.head and prediction_type != "epsilon":
        raise ValueError(
            f"variance_type {variance.name!r} needs prediction_type 'epsilon' (its covariance head is "
            f"trained on eps_theta), got {prediction_type!r}"
        )


def resolve_variance_type(
    variance_type: str,
    eps_second_moment: np.ndarray | None = None,
    last_step_pixels: float | None = None,
    decoder_variance: float | None = None,
) -> VarianceType:
    """The object of a ``variance_type`` name; a ValueError lists the allowed names. "analytic" is built
    from the model's ``eps_second_moment`` (checked by :func:`.analytic.check_eps_second_moment`);
    ``last_step_pixels`` caps the last noise-adding step of the optimal ones (analytic, sn, npr), and
    ``decoder_variance`` is the head types' decoder variance (:class:`HeadVariance`)."""
    if variance_type == AnalyticVariance.name:
        if eps_second_moment is None:
            raise ValueError(
                "variance_type 'analytic' needs eps_second_moment; with hf_ddpm installed, run "
                "`hf-ddpm calibrate MODEL`"
            )
        return AnalyticVariance(np.asarray(eps_second_moment, dtype=np.float64), last_step_pixels)
    if variance_type in HEAD_VARIANCES:
        return dataclasses.replace(
            HEAD_VARIANCES[variance_type],
            last_step_pixels=last_step_pixels,
            decoder_variance=decoder_variance,
        )
    try:
        return VARIANCE_TYPES[variance_type]
    except KeyError:
        raise ValueError(
            f"Unknown variance_type {variance_type!r}; allowed values: {', '.join(VARIANCE_TYPE_NAMES)}"
        ) from None
