"""The forward process: a Markov chain whose t-step marginal and posterior have closed forms."""

import pytest
import torch

from hf_ddpm.core.diffusion_tables import DiffusionTables
from hf_ddpm.core.forward_process import (
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    q_step_sample,
)
from hf_ddpm.core.schedules import make_betas

T = 100


@pytest.fixture(scope="module")
def tables():
    return DiffusionTables.from_betas(make_betas("linear", T, scale_linear_betas_by_timesteps=True))


def test_markov_chain_reaches_the_closed_form_marginal(tables):
    """Running eq. 2 step by step gives the distribution of eq. 4 (Monte Carlo, 200k chains)."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    x = x0
    for t in range(60):
        x = q_step_sample(
            tables, x, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=torch.float64)
        )
    mean, var, _ = q_mean_variance(tables, x0[:1], torch.tensor([59]))
    assert x.mean().item() == pytest.approx(mean.item(), abs=4 * var.sqrt().item() / n**0.5)
    assert x.var().item() == pytest.approx(var.item(), rel=0.02)
    one_step = q_sample(
        tables, x0, torch.full((n,), 59), torch.randn(n, 1, generator=g, dtype=torch.float64)
    )
    assert one_step.var().item() == pytest.approx(var.item(), rel=0.02)


def test_posterior_is_bayes_rule_on_the_joint_gaussian(tables):
    """q(x_{t-1} | x_t, x_0) from Gaussian conditioning of the joint of (x_{t-1}, x_t) given x_0."""
    x0 = torch.tensor([[0.3], [-0.7]], dtype=torch.float64)
    x_t = torch.tensor([[0.1], [1.2]], dtype=torch.float64)
    for t in (1, 5, 50, T - 1):
        ab, ab_prev = tables.alphas_cumprod[t], tables.alphas_cumprod[t - 1]
        alpha = ab / ab_prev
        # x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) e1;  x_t = sqrt(alpha) x_{t-1} + sqrt(1 - alpha) e2
        var_prev = 1 - ab_prev
        cov = alpha.sqrt() * var_prev
        var_t = alpha * var_prev + (1 - alpha)
        expected_mean = ab_prev.sqrt() * x0 + cov / var_t * (x_t - ab.sqrt() * x0)
        expected_var = var_prev - cov**2 / var_t
        mean, var, log_var = q_posterior_mean_variance(tables, x0, x_t, torch.full((2,), t))
        torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var, expected_var.expand_as(var), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(log_var, var.log())
