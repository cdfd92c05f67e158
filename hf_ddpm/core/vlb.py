"""The variational bound on -log p(x_0) in bits/dim (Ho et al. 2020, eq. 5; Table 1's NLL column).

L = L_T + sum_{t>1} L_{t-1} + L_0, with
- L_T     = KL(q(x_T | x_0) || N(0, I))                          the prior term,
- L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  closed-form Gaussian KLs (the "rate"),
- L_0     = -log p_theta(x_0 | x_1)                               the discretized decoder, eq. 13 (the "distortion").
Every term is averaged over dimensions and divided by log 2, so the total is in bits/dim.
"""

from __future__ import annotations

import math

import torch

from .forward_process import q_mean_variance, q_posterior_mean_variance
from .gaussian import discretized_gaussian_log_likelihood, normal_kl
from .reverse_process import ReverseProcess, p_mean_variance

_LOG2 = math.log(2.0)


def _mean_over_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def vlb_terms_bpd(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    num_bins: int = 256,
) -> torch.Tensor:
    """L_t in bits/dim for each batch element: the KL term for t > 0, the decoder -log p(x_0 | x_1) for t = 0."""
    true_mean, _, true_log_variance = q_posterior_mean_variance(process.tables, x0, x_t, t)
    p = p_mean_variance(process, model_output, x_t, t)
    kl = _mean_over_dims(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / _LOG2
    decoder_nll = (
        -_mean_over_dims(
            discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance, num_bins=num_bins)
        )
        / _LOG2
    )
    return torch.where(t.to(kl.device) == 0, decoder_nll, kl)


def prior_bpd(process: ReverseProcess, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim: constant in the network, small for a good schedule."""
    tables = process.tables
    t = torch.full((x0.shape[0],), tables.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean, _, log_variance = q_mean_variance(tables, x0, t)
    return _mean_over_dims(normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2
