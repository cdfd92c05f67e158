"""What the network predicts, and how each prediction maps to x_0 and to its training target.

With x_t = a x_0 + s eps, a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t), every prediction is linear in
x_t and the network's output, x_0 = c_xt x_t + c_out output:
- epsilon (Ho et al. 2020, eq. 11):   x_0 = (x_t - s eps) / a,  so (c_xt, c_out) = (1 / a, -s / a)
- sample:                             x_0 = the output itself,  (0, 1)
- v_prediction (Salimans & Ho 2022):  v = a eps - s x_0, so x_0 = a x_t - s v,  (a, -s)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Coefficient = torch.Tensor | float


def x0_from_prediction(
    output: torch.Tensor, x_t: torch.Tensor, c_xt: Coefficient, c_out: Coefficient
) -> torch.Tensor:
    """x_0 = c_xt x_t + c_out output. With Python-float coefficients (one sampling step) it takes two
    kernels and one buffer, which the caller may then modify in place."""
    if isinstance(c_out, float):
        return torch.mul(x_t, c_xt).add_(output, alpha=c_out)
    return c_xt * x_t + c_out * output


@dataclass(frozen=True)
class Parameterization:
    """One prediction type: ``x0_coefficients(a, s)`` = (c_xt, c_out) of x_0 = c_xt x_t + c_out output,
    for tensor or float a and s, and ``target(x0, noise, a, s)``, what L_simple regresses the output on."""

    name: str
    x0_coefficients: Callable[[Coefficient, Coefficient], tuple[Coefficient, Coefficient]]
    target: Callable[[torch.Tensor, torch.Tensor, Coefficient, Coefficient], torch.Tensor]
    # Min-SNR-gamma (Hang et al. 2023) weights this type's MSE by min(snr, gamma) / snr_scale(snr).
    snr_scale: Callable[[torch.Tensor], torch.Tensor]


def velocity(x0: torch.Tensor, eps: torch.Tensor, a: Coefficient, s: Coefficient) -> torch.Tensor:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, eq. 7 of appendix D)."""
    return a * eps - s * x0


def _epsilon_coefficients(a: Coefficient, s: Coefficient) -> tuple[Coefficient, Coefficient]:
    # Ho et al. eq. 4 solved for x_0.
    return 1.0 / a, -s / a


def _sample_coefficients(a: Coefficient, s: Coefficient) -> tuple[Coefficient, Coefficient]:
    # 0 * a keeps a tensor a tensor (of a's shape), and a float a float.
    return 0.0 * a, 1.0 + 0.0 * s


def _velocity_coefficients(a: Coefficient, s: Coefficient) -> tuple[Coefficient, Coefficient]:
    # x_0 = a x_t - s v, since a^2 + s^2 = 1.
    return a, -s


PARAMETERIZATIONS: dict[str, Parameterization] = {
    "epsilon": Parameterization(
        "epsilon", _epsilon_coefficients, lambda x0, noise, a, s: noise, lambda snr: snr
    ),
    "sample": Parameterization(
        "sample", _sample_coefficients, lambda x0, noise, a, s: x0, lambda snr: torch.ones_like(snr)
    ),
    "v_prediction": Parameterization(
        "v_prediction", _velocity_coefficients, velocity, lambda snr: snr + 1.0
    ),
}


def resolve_parameterization(prediction_type: str) -> Parameterization:
    try:
        return PARAMETERIZATIONS[prediction_type]
    except KeyError:
        raise ValueError(
            f"Unknown prediction_type {prediction_type!r}; allowed values: {', '.join(PARAMETERIZATIONS)}"
        ) from None
