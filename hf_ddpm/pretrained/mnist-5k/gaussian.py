"""Gaussian building blocks of the DDPM bound: KL, likelihoods and reparameterisation.

All functions are elementwise over tensors and return nats unless stated otherwise.
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2.0 * math.pi)


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.

    The closed form used for every L_t term of Ho et al. 2020, eq. 5:
    ``0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 * exp(-logvar2) - 1)``.
    Log-variances (not variances) keep the t -> 0 terms finite.
    """
    like = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor)), None)
    dtype, device = (like.dtype, like.device) if like is not None else (torch.float64, None)
    logvar1, logvar2 = (torch.as_tensor(v, dtype=dtype, device=device) for v in (logvar1, logvar2))
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x), the standard normal CDF, accurate in both tails (unlike Ho et al.'s tanh approximation)."""
    return torch.special.ndtr(x)


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2), elementwise, in nats: the continuous likelihood of the VAE decoder."""
    return -0.5 * _LOG_2PI - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor | float, num_bins: int = 256
) -> torch.Tensor:
    """log p(x | mean, scale) for data on ``num_bins`` evenly spaced levels in [-1, 1]: the L_0 decoder.

    Ho et al. 2020, eq. 13: each level owns the Gaussian mass of its bin, of width ``2 / (num_bins - 1)``;
    the edge bins extend to -inf and +inf so the masses sum to one. ``num_bins=256`` is 8-bit data,
    ``num_bins=17`` the 0..16 levels of scikit-learn's 8x8 digits.
    """
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    half_bin = 1.0 / (num_bins - 1)
    # Bin masses are differences of CDFs; float64 and the mirrored difference in the upper tail keep
    # them accurate where both CDFs are close to 0 or to 1.
    centered = (x - mean).double()
    inv_std = torch.exp(-torch.as_tensor(log_scale, dtype=torch.float64, device=centered.device))
    upper = inv_std * (centered + half_bin)
    lower = inv_std * (centered - half_bin)
    mass = torch.where(
        lower > 0,
        standard_normal_cdf(-lower) - standard_normal_cdf(-upper),
        standard_normal_cdf(upper) - standard_normal_cdf(lower),
    )
    # Beyond float64's range the mass underflows to 0; the density times the bin width is then the limit.
    log_density_times_width = (
        -0.5 * _LOG_2PI + torch.log(inv_std * 2.0 * half_bin) - 0.5 * (centered * inv_std) ** 2
    )
    log_mass = torch.where(
        mass > 0,
        torch.log(mass.clamp(min=torch.finfo(torch.float64).tiny)),
        log_density_times_width,
    )
    edge = 1.0 - half_bin
    log_p = torch.where(
        x < -edge,
        torch.special.log_ndtr(upper),
        torch.where(x > edge, torch.special.log_ndtr(-lower), log_mass),
    )
    return log_p.to(torch.promote_types(x.dtype, mean.dtype))


def reparameterize(
    mean: torch.Tensor, log_variance: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """z = mean + exp(log_variance / 2) * noise, noise ~ N(0, I): a sample of N(mean, var) that is
    differentiable in mean and variance (Kingma & Welling 2014). q_sample is this with the forward process's
    mean and variance."""
    return mean + torch.exp(0.5 * log_variance) * noise
