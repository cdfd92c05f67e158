"""What the network predicts, and how each prediction maps to x_0 and to its training target.

With x_t = a x_0 + s eps, a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t):
- epsilon (Ho et al. 2020, eq. 11):   x_0 = (x_t - s eps) / a
- sample:                             x_0 = the output itself
- v_prediction (Salimans & Ho 2022):  v = a eps - s x_0, so x_0 = a x_t - s v
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Coefficient = torch.Tensor | float


@dataclass(frozen=True)
class Parameterization:
    """One prediction type: ``to_x0(output, x_t, a, s)`` and ``target(x0, noise, a, s)``.

    ``to_x0_scalar`` is ``to_x0`` for Python-float coefficients, in the fewest kernels: it runs once per
    sampling step."""

    name: str
    to_x0: Callable[[torch.Tensor, torch.Tensor, Coefficient, Coefficient], torch.Tensor]
    to_x0_scalar: Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]
    target: Callable[[torch.Tensor, torch.Tensor, Coefficient, Coefficient], torch.Tensor]
    # Min-SNR-gamma (Hang et al. 2023) weights this type's MSE by min(snr, gamma) / snr_scale(snr).
    snr_scale: Callable[[torch.Tensor], torch.Tensor]


def x0_from_epsilon(
    eps: torch.Tensor, x_t: torch.Tensor, a: Coefficient, s: Coefficient
) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (Ho et al. eq. 4 solved for x_0)."""
    return (x_t - s * eps) / a


def velocity(x0: torch.Tensor, eps: torch.Tensor, a: Coefficient, s: Coefficient) -> torch.Tensor:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, eq. 7 of appendix D)."""
    return a * eps - s * x0


def x0_from_velocity(
    v: torch.Tensor, x_t: torch.Tensor, a: Coefficient, s: Coefficient
) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (since a^2 + s^2 = 1)."""
    return a * x_t - s * v


def _x0_from_epsilon_scalar(
    eps: torch.Tensor, x_t: torch.Tensor, a: float, s: float
) -> torch.Tensor:
    return torch.sub(x_t, eps, alpha=s).mul_(1.0 / a)


def _x0_from_velocity_scalar(
    v: torch.Tensor, x_t: torch.Tensor, a: float, s: float
) -> torch.Tensor:
    return torch.mul(x_t, a).sub_(v, alpha=s)


def _identity(
    output: torch.Tensor, x_t: torch.Tensor, a: Coefficient, s: Coefficient
) -> torch.Tensor:
    return output


PARAMETERIZATIONS: dict[str, Parameterization] = {
    "epsilon": Parameterization(
        "epsilon",
        x0_from_epsilon,
        _x0_from_epsilon_scalar,
        lambda x0, noise, a, s: noise,
        lambda snr: snr,
    ),
    "sample": Parameterization(
        "sample", _identity, _identity, lambda x0, noise, a, s: x0, lambda snr: torch.ones_like(snr)
    ),
    "v_prediction": Parameterization(
        "v_prediction",
        x0_from_velocity,
        _x0_from_velocity_scalar,
        lambda x0, noise, a, s: velocity(x0, noise, a, s),
        lambda snr: snr + 1.0,
    ),
}


def resolve_parameterization(prediction_type: str) -> Parameterization:
    try:
        return PARAMETERIZATIONS[prediction_type]
    except KeyError:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; allowed values: {', '.join(PARAMETERIZATIONS)}"
        ) from None
