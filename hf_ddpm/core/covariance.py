"""Per-pixel Cov[x_0 | x_t] and the optimal Gaussian variance of a reverse step built from it.

Bao, Li, Sun, Zhu & Zhang, "Estimating the Optimal Covariance with Imperfect Mean in Diffusion Probabilistic
Models" (ICML 2022, arXiv 2206.07309, section 3, diagonal covariance), as in the authors' code
(baofff/Extended-Analytic-DPM, ``core/diffusion/dtdpm.py``); Analytic-DPM (Bao et al. 2022, arXiv 2201.06503,
Theorem 1) is its special case with one number per timestep.

Notation: a step from timestep t to s < t, alpha-bar the forward process's cumulative product,
beta-bar = 1 - alpha-bar, beta_{s|t} = 1 - alpha-bar_t / alpha-bar_s and
beta-tilde_{s|t} = beta-bar_s beta_{s|t} / beta-bar_t (the variance of q(x_s | x_t, x_0)).

Every step of DDPM and DDIM has the mean sqrt(alpha-bar_s) x_0-hat + (a multiple of x_t or eps-hat), so the
optimal variance of its Gaussian is ``floor + gain^2 Cov[x_0 | x_t]``: a floor (the kernel's own noise)
plus the x_0-coefficient's share of the uncertainty about x_0. These functions work on Python floats,
numpy arrays and tensors alike.
"""

from __future__ import annotations

from typing import TypeVar

from .diffusion_tables import posterior_variance_between

Array = TypeVar("Array")


def x0_covariance(noise_to_signal: Array, eps_error_moment: Array) -> Array:
    """Cov[x_0 | x_t] per dimension = (beta-bar_t / alpha-bar_t) E[(eps - eps_theta)^2 | x_t], clipped to
    [0, 1], the bounds of Analytic-DPM's Theorem 2 for data in [-1, 1] (the authors' ``clip_cov_x0``).

    x_0 = (x_t - sqrt(beta-bar_t) eps) / sqrt(alpha-bar_t), so the error of x_0-hat is sqrt(beta-bar_t /
    alpha-bar_t) times the error of eps_theta. ``noise_to_signal`` is beta-bar_t / alpha-bar_t;
    ``eps_error_moment`` an estimate of E[(eps - eps_theta)^2 | x_t]: SN's h - eps_theta^2
    (:func:`sn_eps_error_moment`), NPR's g (:func:`npr_eps_error_moment`), or Analytic-DPM's 1 - Gamma_t,
    its average over the data."""
    return (noise_to_signal * eps_error_moment).clip(0.0, 1.0)


def sn_eps_error_moment(eps: Array, eps_square: Array) -> Array:
    """SN-DPM: Var[eps | x_t] = E[eps^2 | x_t] - E[eps | x_t]^2, with ``eps_square`` the head's h ~
    E[eps^2 | x_t] and ``eps`` the network's eps_theta ~ E[eps | x_t] (the paper's noise-prediction
    second moment; exact when eps_theta is)."""
    return eps_square - eps * eps


def npr_eps_error_moment(eps: Array, residual_square: Array) -> Array:
    """NPR-DPM: the head's g ~ E[(eps - eps_theta)^2 | x_t] itself, the correction for an imperfect mean
    (the paper's noise-prediction residual); ``eps`` is unused, kept for SN's signature."""
    return residual_square


def optimal_step_variance(floor: Array, gain: Array, covariance: Array) -> Array:
    """sigma^2 = floor + gain^2 Cov[x_0 | x_t]: the variance of the Gaussian step that matches the true
    reverse kernel's second moment, for a step whose mean has x_0-coefficient ``gain`` beyond the kernel's
    ``floor`` (see :func:`step_variance_coefficients`)."""
    return floor + gain * gain * covariance


def step_variance_coefficients(
    alpha_bar_t: Array, alpha_bar_s: Array, eta: float = 1.0
) -> tuple[Array, Array]:
    """(floor, gain) of a DDIM step t -> s (Song et al. 2021, eq. 12) with lambda^2 = eta^2 beta-tilde_{s|t}:
    floor = lambda^2 and gain = sqrt(alpha-bar_s) - sqrt((beta-bar_s - lambda^2) alpha-bar_t / beta-bar_t).

    The step's mean is sqrt(alpha-bar_s) x_0-hat + sqrt(beta-bar_s - lambda^2) eps-hat, with eps-hat =
    (x_t - sqrt(alpha-bar_t) x_0-hat) / sqrt(beta-bar_t), whose x_0-coefficient is the gain. eta = 1 is DDPM:
    lambda^2 = beta-tilde_{s|t} and gain = sqrt(alpha-bar_s) beta_{s|t} / beta-bar_t, eq. 7's coefficient
    of x_0 (the authors' DDPM ``coeff_cov_x0``)."""
    beta_bar_t, beta_bar_s = 1.0 - alpha_bar_t, 1.0 - alpha_bar_s
    floor = eta * eta * posterior_variance_between(alpha_bar_t, alpha_bar_s)
    gain = alpha_bar_s**0.5 - ((beta_bar_s - floor) * alpha_bar_t / beta_bar_t) ** 0.5
    return floor, gain
