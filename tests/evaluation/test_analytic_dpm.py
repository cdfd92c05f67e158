"""Analytic-DPM (Bao et al. 2022) in the K-step variational bound: its per-step terms against their closed
forms on Gaussian data (tests/gaussian_oracle.py), the bound of each variance against the data's entropy,
the optimal trajectory against even spacing, and hf-ddpm evaluate's report of it.

The rest of this file's former tests moved by room (issue 18): core/analytic.py's closed forms to
tests/core/test_analytic_math.py, the scheduler's to tests/core/test_analytic_scheduler.py, calibration to
tests/evaluation/test_calibrate.py, the Hub and remote code to tests/hub/test_analytic_hub.py."""

import math

import numpy as np
import pytest
import torch
from analytic_oracle_helpers import _mixture, _scheduler, _tiny_pipeline
from gaussian_oracle import GaussianOracle

LINEAR_AB = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


M, S = 0.3, 0.5


BOUND_M, BOUND_S = (
    0.1,
    0.25,
)  # narrow enough that 8-bit clipping to [-1, 1] leaves the edge bins empty


def _discretize(x):
    return torch.round((x.clamp(-1, 1) + 1) / 2 * 255) / 255 * 2 - 1


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "analytic"])
def test_k_step_terms_match_their_closed_forms_on_gaussian_data(variance_type):
    """Continuous N(M, S^2) data and its exact predictor: each KL column of the K-step bound is, in
    expectation over x_0 and x_r, 0.5 (log(sigma^2 / lambda^2) + (lambda^2 + c^2 Var[x_0|x_r]) / sigma^2 - 1)
    with lambda^2, c and Var[x_0|x_r] the Gaussian closed forms written here, and the prior column is exact
    for each image. Monte Carlo within 5 standard errors."""
    from hf_ddpm import variational_bound

    oracle = GaussianOracle(M, S, LINEAR_AB)
    scheduler = _scheduler(variance_type, gamma=oracle.eps_second_moment())
    g = torch.Generator().manual_seed(11)
    x0 = M + S * torch.randn(64, 1, 8, 8, generator=g, dtype=torch.float64)
    bound = variational_bound(oracle, scheduler, x0, generator=g, num_inference_steps=10)
    ts = np.arange(0, 10) * 100  # leading spacing, ascending
    assert bound.terms_bpd.shape == (64, 10)
    ab_r, ab_s = LINEAR_AB[ts[1:]], LINEAR_AB[ts[:-1]]
    beta = 1 - ab_r / ab_s
    lam2 = (1 - ab_s) / (1 - ab_r) * beta
    coef2 = ab_s * beta**2 / (1 - ab_r) ** 2
    x0_var = oracle.x0_posterior_variance()[ts[1:]]
    sigma2 = {"fixed_small": lam2, "fixed_large": beta, "analytic": lam2 + coef2 * x0_var}
    s2 = sigma2[variance_type]
    expected = 0.5 * (np.log(s2 / lam2) + (lam2 + coef2 * x0_var) / s2 - 1) / math.log(2)
    got = bound.terms_bpd[:, 1:]
    stderr = got.std(0) / math.sqrt(len(got))
    z = (got.mean(0).numpy() - expected) / np.maximum(stderr.numpy(), 1e-12)
    assert np.abs(z).max() < 5, (z, got.mean(0), expected)
    a2, var_noise = LINEAR_AB[900], 1 - LINEAR_AB[900]
    prior = 0.5 * (a2 * x0**2 + var_noise - 1 - math.log(var_noise)).flatten(1).mean(1)
    torch.testing.assert_close(bound.prior_bpd, prior / math.log(2))
    torch.testing.assert_close(bound.total_bpd, bound.prior_bpd + bound.terms_bpd.sum(1))


def test_k_equal_to_t_is_the_full_bound():
    from hf_ddpm import variational_bound

    oracle = GaussianOracle(BOUND_M, BOUND_S, LINEAR_AB)
    scheduler = _scheduler("fixed_large")
    x0 = _discretize(BOUND_M + BOUND_S * torch.randn(4, 1, 4, 4, dtype=torch.float64))
    full = variational_bound(oracle, scheduler, x0, generator=torch.Generator().manual_seed(2))
    chain = variational_bound(
        oracle,
        scheduler,
        x0,
        generator=torch.Generator().manual_seed(2),
        num_inference_steps=1000,
    )
    torch.testing.assert_close(chain.terms_bpd, full.terms_bpd)
    torch.testing.assert_close(chain.total_bpd, full.total_bpd)


def _entropy_bits(mean, std, num_bins=256):
    from scipy.stats import norm

    levels = np.linspace(-1, 1, num_bins)
    half = 1 / (num_bins - 1)
    upper, lower = norm.cdf((levels + half - mean) / std), norm.cdf((levels - half - mean) / std)
    upper[-1], lower[0] = 1.0, 0.0
    p = upper - lower
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _mean_bound(model, scheduler, x0, steps, seed):
    """The K-step bound's mean over the images and its standard error, in bits/dim."""
    from hf_ddpm import variational_bound

    total = variational_bound(
        model,
        scheduler,
        x0,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
    ).total_bpd
    return total.mean().item(), (total.std() / math.sqrt(len(total))).item()


@pytest.mark.parametrize("steps", [5, 10, 50])
def test_k_step_bound_is_above_the_entropy_and_analytic_is_the_tightest(steps):
    """Discretized N(0.1, 0.25^2) data, the exact predictor: every K-step bound is >= the data's exact
    entropy, and the analytic variance's bound is below both fixed variances' on the same chain."""

    oracle = GaussianOracle(BOUND_M, BOUND_S, LINEAR_AB)
    g = torch.Generator().manual_seed(4)
    x0 = _discretize(BOUND_M + BOUND_S * torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64))
    entropy = _entropy_bits(BOUND_M, BOUND_S)
    bounds = {}
    for variance_type in ("fixed_small", "fixed_large", "analytic"):
        scheduler = _scheduler(variance_type, gamma=oracle.eps_second_moment())
        bounds[variance_type] = _mean_bound(oracle, scheduler, x0, steps, seed=5)
    message = f"entropy {entropy:.3f}; " + ", ".join(
        f"{k}: {m:.3f} +- {s:.3f}" for k, (m, s) in bounds.items()
    )
    for mean, stderr in bounds.values():
        assert mean > entropy - 3 * stderr, message
    analytic = bounds["analytic"][0]
    assert analytic < bounds["fixed_small"][0] and analytic < bounds["fixed_large"][0], message


@pytest.mark.parametrize("steps", [4, 10, 25])
def test_optimal_trajectory_bound_is_below_even_spacing(steps):
    """Mixture data (its reverse kernels are not Gaussian, so the timesteps matter; for Gaussian data
    every trajectory has the same bound) with its exact predictor and the analytic variance: the bound
    on the optimal trajectory is below the bound with leading and linspace spacing."""

    oracle = _mixture(LINEAR_AB)
    gamma = oracle.eps_second_moment()
    g = torch.Generator().manual_seed(6)
    x0 = _discretize(oracle.sample((48, 1, 8, 8), g))
    bounds = {}
    for spacing in ("optimal", "leading", "linspace"):
        bounds[spacing] = _mean_bound(oracle, _scheduler("analytic", spacing, gamma), x0, steps, 7)
    message = ", ".join(f"{k}: {m:.3f} +- {s:.3f}" for k, (m, s) in bounds.items())
    assert bounds["optimal"][0] < min(bounds["leading"][0], bounds["linspace"][0]), message


def test_evaluate_reports_the_k_step_bound_and_refuses_importance_sampling_on_it():
    from hf_ddpm import variational_bound
    from hf_ddpm.evaluation.evaluate import ReferenceData, evaluate_pipeline

    pipeline = _tiny_pipeline()
    images = torch.randint(0, 256, (8, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    reference = ReferenceData(images / 255 * 2 - 1, 256, "random", "test")
    report = evaluate_pipeline(
        pipeline, reference, metrics="nll", num_inference_steps=4, batch_size=4, seed=3
    )
    nll = report["metrics"]["nll"]
    from hf_ddpm.sampling.sharding import image_seed

    bounds = [
        variational_bound(
            pipeline.unet,
            pipeline.scheduler,
            x,
            generator=torch.Generator().manual_seed(image_seed(3, b)),  # batch b's own
            num_inference_steps=4,
        )
        for b, x in enumerate(reference.images.split(4))
    ]
    assert bounds[0].terms_bpd.shape == (4, 4)
    assert nll["bpd"] == pytest.approx(float(torch.cat([b.total_bpd for b in bounds]).mean()))
    assert nll["estimator"] == "exact, 4-step chain" and nll["timesteps_per_image"] == 4
    with pytest.raises(ValueError, match="nll-timesteps"):
        evaluate_pipeline(
            pipeline, reference, metrics="nll", num_inference_steps=4, nll_timesteps=2
        )
