"""The reverse (generative) process p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t)).

Ho et al. 2020 (eq. 1, section 3.2) fix Sigma to sigma_t^2 I with sigma_t^2 = beta_t ("large") or
beta-tilde_t ("small"); Nichol & Dhariwal 2021 (eq. 15) learn it as an interpolation in log space between the
two. The mean is the posterior mean of eq. 7 with the network's prediction of x_0 plugged in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .diffusion_tables import DiffusionTables, extract
from .forward_process import q_posterior_mean_variance
from .parameterization import Parameterization

# (tables, model variance values or None, t, like) -> (variance, log_variance)
VarianceFn = Callable[
    [DiffusionTables, torch.Tensor | None, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]


@dataclass(frozen=True)
class VarianceType:
    """One choice of Sigma_theta: whether the network outputs it (doubling its channels), and how."""

    name: str
    learned: bool
    variance: VarianceFn
    # Whether the sampler's noise scale is beta_t (large) rather than beta-tilde_t (small); learned types
    # compute theirs per element.
    large: bool = False


def _fixed_small(
    tables: DiffusionTables, _: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
):
    return extract(tables.posterior_variance, t, like), extract(
        tables.posterior_log_variance_clipped, t, like
    )


def _fixed_large(
    tables: DiffusionTables, _: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
):
    log_variance = extract(tables.log_variance_large, t, like)
    return torch.exp(log_variance), log_variance


def _learned(
    tables: DiffusionTables, values: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
):
    # The network outputs log Sigma directly (improved-diffusion's LEARNED).
    return torch.exp(values), values


def _learned_range(
    tables: DiffusionTables, values: torch.Tensor | None, t: torch.Tensor, like: torch.Tensor
):
    # Nichol & Dhariwal eq. 15: log Sigma = v log beta_t + (1 - v) log beta-tilde_t, with v = (output + 1) / 2.
    min_log = extract(tables.posterior_log_variance_clipped, t, like)
    max_log = extract(tables.log_betas, t, like)
    frac = (values + 1.0) / 2.0
    log_variance = frac * max_log + (1.0 - frac) * min_log
    return torch.exp(log_variance), log_variance


VARIANCE_TYPES: dict[str, VarianceType] = {
    "fixed_small": VarianceType("fixed_small", False, _fixed_small),
    "fixed_small_log": VarianceType("fixed_small_log", False, _fixed_small),
    "fixed_large": VarianceType("fixed_large", False, _fixed_large, large=True),
    "fixed_large_log": VarianceType("fixed_large_log", False, _fixed_large, large=True),
    "learned": VarianceType("learned", True, _learned),
    "learned_range": VarianceType("learned_range", True, _learned_range),
}


def resolve_variance_type(variance_type: str) -> VarianceType:
    try:
        return VARIANCE_TYPES[variance_type]
    except KeyError:
        raise ValueError(
            f"Unknown variance_type {variance_type!r}; allowed values: {', '.join(VARIANCE_TYPES)}"
        ) from None


def split_model_output(
    model_output: torch.Tensor, sample: torch.Tensor, variance: VarianceType
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, variance values), checking that the channels fit the variance type."""
    channels = sample.shape[1]
    expected = 2 * channels if variance.learned else channels
    if (
        model_output.shape[0] != sample.shape[0]
        or model_output.shape[2:] != sample.shape[2:]
        or (model_output.shape[1] != expected)
    ):
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has shape {tuple(sample.shape)}; "
            f"variance_type {variance.name!r} needs {expected} output channels "
            f"({'twice' if variance.learned else 'the same as'} the sample's {channels})"
        )
    if variance.learned:
        prediction, values = torch.split(model_output, channels, dim=1)
        return prediction, values
    return model_output, None


class PMeanVariance(NamedTuple):
    """p_theta(x_{t-1} | x_t): mean, variance, log-variance, and the x_0 prediction behind the mean."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass(frozen=True)
class ReverseProcess:
    """Everything p_theta needs besides the network: the chain's tables, what the network predicts, how
    Sigma is chosen, and what is done to the predicted x_0 (clipping or thresholding, or nothing)."""

    tables: DiffusionTables
    parameterization: Parameterization
    variance: VarianceType
    process_x0: Callable[[torch.Tensor], torch.Tensor] | None = None


def p_mean_variance(
    process: ReverseProcess, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> PMeanVariance:
    """mu_theta and Sigma_theta at per-sample timesteps ``t`` (B,): eq. 7's posterior mean evaluated at the
    predicted x_0, and the variance of ``process.variance``."""
    tables = process.tables
    prediction, values = split_model_output(model_output, x_t, process.variance)
    a = extract(tables.sqrt_alphas_cumprod, t, x_t)
    s = extract(tables.sqrt_one_minus_alphas_cumprod, t, x_t)
    pred_x0 = process.parameterization.to_x0(prediction, x_t, a, s)
    if process.process_x0 is not None:
        pred_x0 = process.process_x0(pred_x0)
    mean, _, _ = q_posterior_mean_variance(tables, pred_x0, x_t, t)
    var, log_var = process.variance.variance(tables, values, t, x_t)
    return PMeanVariance(mean, var, log_var, pred_x0)
