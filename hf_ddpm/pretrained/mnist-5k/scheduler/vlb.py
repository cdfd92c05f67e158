"""The variational bound on -log p(x_0) in bits/dim (Ho et al. 2020, eq. 5; Table 1's NLL column).

L = L_T + sum_{t>1} L_{t-1} + L_0, with
- L_T     = KL(q(x_T | x_0) || N(0, I))                          the prior term,
- L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  closed-form Gaussian KLs (the "rate"),
- L_0     = -log p_theta(x_0 | x_1)                               the discretized decoder, eq. 13 (the "distortion").
Every term is averaged over dimensions and divided by log 2, so the total is in bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .diffusion_tables import extract
from .forward_process import q_posterior_mean_variance
from .gaussian import discretized_gaussian_log_likelihood, normal_kl
from .reverse_process import ReverseProcess, p_mean_variance

if TYPE_CHECKING:
    from collections.abc import Callable

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
    mean = extract(tables.sqrt_alphas_cumprod, t, x0) * x0
    log_variance = extract(tables.log_one_minus_alphas_cumprod, t, x0)
    return _mean_over_dims(normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2


@dataclass
class VariationalBound:
    """The bound per image: ``total_bpd`` (B,) = ``prior_bpd`` (B,) + ``terms_bpd`` (B, T).sum(1).

    ``terms_bpd[:, 0]`` is L_0 (distortion); ``terms_bpd[:, 1:].sum(1)`` is the rate of Ho et al. Table 4.
    """

    total_bpd: torch.Tensor
    terms_bpd: torch.Tensor
    prior_bpd: torch.Tensor

    @property
    def distortion_bpd(self) -> torch.Tensor:
        return self.terms_bpd[:, 0]

    @property
    def rate_bpd(self) -> torch.Tensor:
        return self.terms_bpd[:, 1:].sum(1)


def call_model(model: Callable[..., Any], x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``model(x_t, t)`` as a tensor: a diffusers UNet's ``.sample`` or the plain output."""
    out = model(x_t, t)
    return out.sample if hasattr(out, "sample") else out


@torch.no_grad()
def variational_bound(
    model: Callable[..., Any],
    scheduler: Any,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    num_bins: int = 256,
    max_batch_size: int = 256,
) -> VariationalBound:
    """The full T-term bound of Ho et al. eq. 5 for each image of ``x0`` (B, C, H, W) in [-1, 1].

    Each L_t uses its own draw x_t ~ q(x_t | x_0), as improved-diffusion's ``calc_bpd_loop`` does. The T
    terms are evaluated in chunks: one network call covers several timesteps for all B images, up to
    ``max_batch_size`` inputs, rather than T calls of batch B. ``model(x_t, t)`` gets t as a LongTensor (N,)
    and may return a tensor or an object with ``.sample`` (a diffusers UNet2DModel).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    batch = x0.shape[0]
    num_timesteps = scheduler.config.num_train_timesteps
    per_call = max(1, max_batch_size // batch)
    terms = torch.empty(batch, num_timesteps, dtype=torch.float64, device=x0.device)
    noise_device = generator.device if generator is not None else x0.device
    for start in range(0, num_timesteps, per_call):
        steps = torch.arange(start, min(start + per_call, num_timesteps), device=x0.device)
        t = steps.repeat_interleave(batch)
        x0_rep = x0.repeat(len(steps), *([1] * (x0.ndim - 1)))
        noise = torch.randn(
            x0_rep.shape, generator=generator, device=noise_device, dtype=x0.dtype
        ).to(x0.device)
        x_t = scheduler.add_noise(x0_rep, noise, t)
        out = call_model(model, x_t, t)
        values = scheduler.vlb_terms_bpd(out, x0_rep, x_t, t, num_bins=num_bins)
        terms[:, start : start + len(steps)] = values.view(len(steps), batch).T.to(torch.float64)
    prior = scheduler.prior_bpd(x0).to(torch.float64)
    return VariationalBound(total_bpd=prior + terms.sum(1), terms_bpd=terms, prior_bpd=prior)
