"""The reverse (generative) process p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t)).

The mean is the posterior mean of eq. 7 (Ho et al. 2020) with the network's prediction of x_0 plugged in;
Sigma_theta is the variance type's (:mod:`.variance`: fixed beta-tilde_t or beta_t, or learned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .diffusion_tables import DiffusionTables, extract
from .forward_process import q_posterior_mean_variance
from .parameterization import Parameterization, x0_from_prediction
from .variance import ChainVariance, VarianceType


def split_model_output(
    model_output: torch.Tensor, sample: torch.Tensor, variance: VarianceType
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, variance values), checking that the channels fit the variance type. For a learned
    type the values are the network's second C channels; for a covariance head's type (SN, NPR) they are
    its estimate of E[(eps - eps_theta)^2 | x_t], from eps_theta and the head's C channels."""
    channels = sample.shape[1]
    doubled = variance.learned or variance.head
    expected = 2 * channels if doubled else channels
    if (
        model_output.shape[0] != sample.shape[0]
        or model_output.shape[2:] != sample.shape[2:]
        or (model_output.shape[1] != expected)
    ):
        if variance.head:
            how = f"the UNet's {channels} (eps), then the covariance head's {channels}"
        else:
            how = f"{'twice' if doubled else 'the same as'} the sample's {channels}"
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has shape {tuple(sample.shape)}; "
            f"variance_type {variance.name!r} needs {expected} output channels ({how})"
        )
    if not doubled:
        return model_output, None
    prediction, values = torch.split(model_output, channels, dim=1)
    if variance.head:
        return prediction, variance.eps_error_moment(prediction, values)
    return prediction, values


class PMeanVariance(NamedTuple):
    """p_theta(x_{t-1} | x_t): mean, variance, log-variance, and the x_0 prediction behind the mean."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass(frozen=True)
class ReverseProcess:
    """Everything p_theta needs besides the network: the chain's tables, what the network predicts, how
    Sigma is chosen, and what is done to the predicted x_0 (clipping or thresholding, or nothing).

    Build it with :meth:`on_chain`, which evaluates the parameterization and the variance type on the
    tables once: ``x0_coefficients`` (c_xt, c_out) and ``chain_variance`` per timestep."""

    tables: DiffusionTables
    parameterization: Parameterization
    variance: VarianceType
    x0_coefficients: tuple[torch.Tensor, torch.Tensor]
    chain_variance: ChainVariance
    process_x0: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def on_chain(
        cls,
        tables: DiffusionTables,
        parameterization: Parameterization,
        variance: VarianceType,
        process_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> ReverseProcess:
        """p_theta on the chain of ``tables``, whose index k is the full chain's timestep ``timesteps[k]``
        (by default the full chain itself: index t is timestep t)."""
        if timesteps is None:
            timesteps = torch.arange(tables.num_timesteps, device=tables.betas.device)
        return cls(
            tables,
            parameterization,
            variance,
            parameterization.x0_coefficients(
                tables.sqrt_alphas_cumprod, tables.sqrt_one_minus_alphas_cumprod
            ),
            variance.on_chain(tables, timesteps),
            process_x0,
        )


def p_mean_variance(
    process: ReverseProcess, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> PMeanVariance:
    """mu_theta and Sigma_theta at per-sample timesteps ``t`` (B,): eq. 7's posterior mean evaluated at the
    predicted x_0, and the variance of ``process.chain_variance``."""
    prediction, values = split_model_output(model_output, x_t, process.variance)
    c_xt, c_out = (extract(c, t, x_t) for c in process.x0_coefficients)
    pred_x0 = x0_from_prediction(prediction, x_t, c_xt, c_out)
    if process.process_x0 is not None:
        pred_x0 = process.process_x0(pred_x0)
    mean, _, _ = q_posterior_mean_variance(process.tables, pred_x0, x_t, t)
    var, log_var = process.chain_variance.p_variance(values, t, x_t)
    return PMeanVariance(mean, var, log_var, pred_x0)
