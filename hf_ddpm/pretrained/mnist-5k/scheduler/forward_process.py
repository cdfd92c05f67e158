"""The forward (noising) process q of Ho et al. 2020.

q is a Markov chain, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (eq. 2); because every step is
Gaussian and linear, its t-step marginal has the closed form q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0,
(1 - alpha_bar_t) I) (eq. 4), and Bayes' rule gives the posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7).
"""

from __future__ import annotations

import torch

from .diffusion_tables import DiffusionTables, extract
from .gaussian import reparameterize


def q_step_sample(
    tables: DiffusionTables, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One Markov step x_t ~ q(x_t | x_{t-1}) (eq. 2): the chain's definition, used to check eq. 4."""
    beta = extract(tables.betas, t, x_prev)
    return torch.sqrt(1.0 - beta) * x_prev + torch.sqrt(beta) * noise


def q_mean_variance(
    tables: DiffusionTables, x0: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and log-variance of q(x_t | x_0) (eq. 4)."""
    mean = extract(tables.sqrt_alphas_cumprod, t, x0) * x0
    variance = extract(1.0 - tables.alphas_cumprod, t, x0)
    log_variance = extract(tables.log_one_minus_alphas_cumprod, t, x0)
    return mean, variance, log_variance


def q_sample(
    tables: DiffusionTables, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps: eq. 4 reparameterised (the input of eq. 14)."""
    mean, _, log_variance = q_mean_variance(tables, x0, t)
    return reparameterize(mean, log_variance, noise)


def q_posterior_mean_variance(
    tables: DiffusionTables, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
    mean = (
        extract(tables.posterior_mean_coef1, t, x_t) * x0
        + extract(tables.posterior_mean_coef2, t, x_t) * x_t
    )
    variance = extract(tables.posterior_variance, t, x_t)
    log_variance = extract(tables.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


def q_transition_sample(
    x_s: torch.Tensor, alpha_bar_s: float, alpha_bar_t: float, noise: torch.Tensor
) -> torch.Tensor:
    """x_t ~ q(x_t | x_s) for s < t: N(sqrt(alpha_bar_t / alpha_bar_s) x_s, (1 - alpha_bar_t / alpha_bar_s) I).

    The Markov kernel from step s to step t, the product of the one-step kernels of eq. 2 in between.
    For a respaced chain (Nichol & Dhariwal 2021, section 4) it is that chain's one-step kernel, with
    effective beta = 1 - alpha_bar_t / alpha_bar_s; RePaint (Lugmayr et al. 2022, Algorithm 1 line 9)
    jumps back up the chain with it.
    """
    ratio = alpha_bar_t / alpha_bar_s
    return ratio**0.5 * x_s + (1.0 - ratio) ** 0.5 * noise
