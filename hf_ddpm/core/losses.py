"""Training objectives: L_simple (Ho et al. 2020, eq. 14), L_vlb and L_hybrid (Nichol & Dhariwal 2021, eq. 16).

Each returns one value per batch element so that a caller can apply importance weights and feed the loss
history of ``LossSecondMomentResampler``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion_tables import extract
from .forward_process import q_sample
from .reverse_process import ReverseProcess, split_model_output
from .vlb import vlb_terms_bpd

HYBRID_LAMBDA = 0.001


def snr(process: ReverseProcess, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), in float64."""
    ab = process.tables.alphas_cumprod.to(t.device)[t]
    return ab / (1.0 - ab)


def min_snr_weight(process: ReverseProcess, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023): min(SNR, gamma) relative to the prediction type's own
    implicit weighting of the x_0 error (SNR for epsilon, 1 for x_0, SNR + 1 for v)."""
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    s = snr(process, t)
    return torch.minimum(s, torch.full_like(s, gamma)) / process.parameterization.snr_scale(s)


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def simple_loss(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """L_simple: || target - prediction ||^2 averaged over dims, with the target of the prediction type
    (eps for epsilon, x_0 for sample, v for v_prediction). A learned variance's channels are ignored."""
    prediction, _ = split_model_output(model_output, x0, process.variance)
    a = extract(process.tables.sqrt_alphas_cumprod, t, x0)
    s = extract(process.tables.sqrt_one_minus_alphas_cumprod, t, x0)
    loss = _mse(prediction, process.parameterization.target(x0, noise, a, s))
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(process, t, min_snr_gamma).to(loss.dtype)
    return loss


def vlb_loss(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    num_bins: int = 256,
) -> torch.Tensor:
    """T * L_t in bits/dim: an unbiased one-sample estimate of sum_t L_t when t is uniform."""
    return (
        process.tables.num_timesteps
        * vlb_terms_bpd(process, model_output, x0, x_t, t, num_bins=num_bins).float()
    )


def hybrid_loss(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    min_snr_gamma: float | None = None,
    num_bins: int = 256,
) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb, lambda = 0.001 (Nichol & Dhariwal, section 3.1).

    L_vlb sees the predicted mean through a stop-gradient, so it trains only the variance channels and
    L_simple stays the sole signal for the mean."""
    if not process.variance.learned:
        raise ValueError(
            f"loss_type 'hybrid' trains a learned variance; variance_type {process.variance.name!r} is fixed. "
            "Use variance_type 'learned_range' or 'learned', or loss_type 'simple' or 'vlb'."
        )
    prediction, values = split_model_output(model_output, x0, process.variance)
    frozen = torch.cat([prediction.detach(), values], dim=1)
    return simple_loss(
        process, model_output, x0, noise, t, min_snr_gamma
    ) + HYBRID_LAMBDA * vlb_loss(process, frozen, x0, x_t, t, num_bins)


def _simple(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor | None,
    t: torch.Tensor,
    min_snr_gamma: float | None,
    num_bins: int,
) -> torch.Tensor:
    return simple_loss(process, model_output, x0, noise, t, min_snr_gamma)


def _vlb(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor | None,
    t: torch.Tensor,
    min_snr_gamma: float | None,
    num_bins: int,
) -> torch.Tensor:
    x_t = q_sample(process.tables, x0, t, noise) if x_t is None else x_t
    return vlb_loss(process, model_output, x0, x_t, t, num_bins)


def _hybrid(
    process: ReverseProcess,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor | None,
    t: torch.Tensor,
    min_snr_gamma: float | None,
    num_bins: int,
) -> torch.Tensor:
    x_t = q_sample(process.tables, x0, t, noise) if x_t is None else x_t
    return hybrid_loss(process, model_output, x0, noise, x_t, t, min_snr_gamma, num_bins)


# name -> fn(process, model_output, x0, noise, x_t or None, t, min_snr_gamma, num_bins) -> (B,)
LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "simple": _simple,
    "vlb": _vlb,
    "hybrid": _hybrid,
}
LOSS_TYPES = tuple(LOSS_FUNCTIONS)


def resolve_loss_type(loss_type: str) -> Callable[..., torch.Tensor]:
    """The loss function of a ``--loss`` name; a ValueError lists the allowed names."""
    try:
        return LOSS_FUNCTIONS[loss_type]
    except KeyError:
        raise ValueError(
            f"Unknown loss_type {loss_type!r}; allowed values: {', '.join(LOSS_TYPES)}"
        ) from None
