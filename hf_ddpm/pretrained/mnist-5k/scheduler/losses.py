"""Training objectives: L_simple (Ho et al. 2020, eq. 14), L_vlb and L_hybrid (Nichol & Dhariwal 2021, eq. 16).

Each returns one value per batch element so that a caller can apply importance weights and feed the loss
history of ``LossSecondMomentResampler``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .diffusion_tables import extract
from .forward_process import q_sample
from .reverse_process import ReverseProcess, split_model_output
from .variance import LEARNED_VARIANCE_TYPES
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


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    """What every loss reads, by name: the reverse process, the network's output at x_t, and the x_0,
    noise and timesteps t (B,) that made x_t = add_noise(x0, noise, t) (computed here when ``x_t`` is None)."""

    process: ReverseProcess
    model_output: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor | None = None
    min_snr_gamma: float | None = None
    num_bins: int = 256

    def noisy_sample(self) -> torch.Tensor:
        """x_t, from q(x_t | x_0) with this batch's noise unless it was given."""
        if self.x_t is not None:
            return self.x_t
        return q_sample(self.process.tables, self.x0, self.t, self.noise)


def simple_loss(inputs: LossInputs) -> torch.Tensor:
    """L_simple: || target - prediction ||^2 averaged over dims, with the target of the prediction type
    (eps for epsilon, x_0 for sample, v for v_prediction), Min-SNR-gamma weighted when ``min_snr_gamma``
    is set. A learned variance's channels are ignored."""
    process, x0, t = inputs.process, inputs.x0, inputs.t
    prediction, _ = split_model_output(inputs.model_output, x0, process.variance)
    a = extract(process.tables.sqrt_alphas_cumprod, t, x0)
    s = extract(process.tables.sqrt_one_minus_alphas_cumprod, t, x0)
    loss = _mse(prediction, process.parameterization.target(x0, inputs.noise, a, s))
    if inputs.min_snr_gamma is not None:
        loss = loss * min_snr_weight(process, t, inputs.min_snr_gamma).to(loss.dtype)
    return loss


def vlb_loss(inputs: LossInputs) -> torch.Tensor:
    """T * L_t in bits/dim: an unbiased one-sample estimate of sum_t L_t when t is uniform."""
    process = inputs.process
    terms = vlb_terms_bpd(
        process,
        inputs.model_output,
        inputs.x0,
        inputs.noisy_sample(),
        inputs.t,
        num_bins=inputs.num_bins,
    )
    return process.tables.num_timesteps * terms.float()


def check_loss_fits_variance(
    loss_type: str,
    variance_type: str,
    option_names: tuple[str, str] = ("loss_type", "variance_type"),
) -> None:
    """Raise ValueError when ``loss_type`` cannot train ``variance_type``: "hybrid" trains the variance
    channels, so it needs a learned variance. ``option_names`` are how the caller's user spells the two
    options (``("--loss", "--variance-type")`` on the command line)."""
    if loss_type == "hybrid" and variance_type not in LEARNED_VARIANCE_TYPES:
        loss_name, variance_name = option_names
        raise ValueError(
            f"{loss_name} hybrid trains a learned variance; {variance_name} {variance_type!r} is fixed. "
            f"Use {variance_name} one of {', '.join(LEARNED_VARIANCE_TYPES)}, or {loss_name} simple "
            "or vlb."
        )


def hybrid_loss(inputs: LossInputs) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb, lambda = 0.001 (Nichol & Dhariwal, section 3.1).

    L_vlb sees the predicted mean through a stop-gradient, so it trains only the variance channels and
    L_simple stays the sole signal for the mean."""
    variance = inputs.process.variance
    check_loss_fits_variance("hybrid", variance.name)
    prediction, values = split_model_output(inputs.model_output, inputs.x0, variance)
    frozen = dataclasses.replace(
        inputs,
        model_output=torch.cat([prediction.detach(), values], dim=1),
        x_t=inputs.noisy_sample(),
    )
    return simple_loss(inputs) + HYBRID_LAMBDA * vlb_loss(frozen)


LOSS_FUNCTIONS: dict[str, Callable[[LossInputs], torch.Tensor]] = {
    "simple": simple_loss,
    "vlb": vlb_loss,
    "hybrid": hybrid_loss,
}
LOSS_TYPES = tuple(LOSS_FUNCTIONS)


def resolve_loss_type(loss_type: str) -> Callable[[LossInputs], torch.Tensor]:
    """The loss function of a ``--loss`` name; a ValueError lists the allowed names."""
    try:
        return LOSS_FUNCTIONS[loss_type]
    except KeyError:
        raise ValueError(
            f"Unknown loss_type {loss_type!r}; allowed values: {', '.join(LOSS_TYPES)}"
        ) from None
