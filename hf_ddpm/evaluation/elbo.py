"""The evidence lower bound of a latent-variable model, the step from which the DDPM bound is built.

log p(x) = log E_q[p(x, z) / q(z | x)] >= E_q[log p(x | z)] - KL(q(z | x) || p(z))   (Jensen's inequality),
with equality exactly when q(z | x) is the true posterior p(z | x).

A saved model never runs it (the DDPM bound itself is ``core/vlb.py``), so it lives outside core.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hf_ddpm.core.gaussian import normal_kl, reparameterize


def gaussian_elbo(
    log_likelihood: Callable[[torch.Tensor], torch.Tensor],
    q_mean: torch.Tensor,
    q_log_variance: torch.Tensor,
    prior_mean: torch.Tensor | float = 0.0,
    prior_log_variance: torch.Tensor | float = 0.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The VAE ELBO for a diagonal Gaussian q(z | x) and prior p(z), per batch element, in nats.

    The reconstruction term E_q[log p(x | z)] is a Monte Carlo average over ``num_samples`` reparameterised
    draws of z: ``log_likelihood(z)`` gets z of shape (num_samples, *q_mean.shape) and returns log p(x | z)
    of shape (num_samples, B). The KL term is exact.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    shape = (num_samples, *q_mean.shape)
    noise = torch.randn(shape, generator=generator, dtype=q_mean.dtype, device=q_mean.device)
    reconstruction = log_likelihood(reparameterize(q_mean, q_log_variance, noise)).mean(0)
    kl = normal_kl(q_mean, q_log_variance, prior_mean, prior_log_variance).flatten(1).sum(1)
    return reconstruction - kl
