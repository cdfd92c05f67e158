"""Gamma_n estimates from few images (issue 21, item 6): an honest standard error at every image count
(checked against the estimates' own spread around the closed form of Gaussian data), and estimates outside
Theorem 2's range clipped to it, which leaves the analytic variance and the optimal trajectory as they
were and gives the scheduler numbers it accepts."""

import numpy as np
import pytest
import torch
from gaussian_oracle import GaussianOracle

from hf_ddpm.core.analytic import (
    analytic_step_variances,
    check_eps_second_moment,
    optimal_trajectory,
    trajectory_costs,
)
from hf_ddpm.evaluation.calibrate import (
    CONTROL_VARIATE_FROM,
    calibrate_pipeline,
    clip_to_theorem_2,
    eps_second_moment,
)


@pytest.mark.parametrize("num_images", [2, 3, CONTROL_VARIATE_FROM, 5, 12])
def test_the_standard_error_matches_the_spread_of_the_estimates(num_images):
    from hf_ddpm import HFDDPMScheduler

    # T timesteps are T independent estimates, each with its closed-form truth.
    scheduler = HFDDPMScheduler(num_train_timesteps=600, scale_linear_betas_by_timesteps=True)
    oracle = GaussianOracle(0.3, 0.5, scheduler.alphas_cumprod.double().numpy())
    g = torch.Generator().manual_seed(num_images)
    images = 0.3 + 0.5 * torch.randn(num_images, 1, 4, 4, generator=g, dtype=torch.float64)
    result = eps_second_moment(oracle, scheduler, images, generator=g, progress=False)
    error = result.values - oracle.eps_second_moment()
    # Mean squared error against the mean reported variance: 1 for an honest standard error. Two images
    # used to report ~1e-17 (ratio ~1e30); a control variate's ddof=1 spread underestimates it.
    ratio = np.sum(error**2) / np.sum(result.stderr**2)
    assert 0.6 < ratio < 1.6, ratio
    assert np.all(result.stderr > 1e-6)


def test_one_image_has_no_standard_error():
    from hf_ddpm import HFDDPMScheduler

    scheduler = HFDDPMScheduler(num_train_timesteps=20)
    oracle = GaussianOracle(0.3, 0.5, scheduler.alphas_cumprod.double().numpy())
    result = eps_second_moment(oracle, scheduler, torch.zeros(1, 1, 4, 4), progress=False)
    assert np.all(np.isnan(result.stderr)) and np.all(np.isfinite(result.values))


def test_clipping_changes_variances_and_trajectories_only_where_gamma_was_below_0():
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    rng = np.random.default_rng(0)
    # Estimates spread far past both bounds, as few images give.
    gamma = rng.uniform(-0.5, 1.5, 1000)
    clipped = clip_to_theorem_2(gamma, ab)
    check_eps_second_moment(clipped, 1000)
    with pytest.raises(ValueError, match="finite and non-negative"):
        check_eps_second_moment(gamma, 1000)
    # The bounds, from E Var[x_0 | x_n] = (1 - ab) / ab * (1 - Gamma) in [0, 1]:
    low = np.maximum(0, 1 - ab / (1 - ab))
    assert np.all((clipped >= low) & (clipped <= 1))
    inside = (gamma >= low) & (gamma <= 1)
    assert np.array_equal(clipped[inside], gamma[inside]) and 0 < inside.sum() < 1000
    # Past Theorem 2's bounds the sampler clips E Var itself; only Gamma < 0 (no second moment) is moved.
    non_negative = np.maximum(gamma, 0)
    timesteps = np.arange(999, -1, -37)
    np.testing.assert_allclose(
        analytic_step_variances(ab, clipped, timesteps),
        analytic_step_variances(ab, non_negative, timesteps),
        rtol=1e-12,
        atol=0,
    )
    for steps in (5, 20):
        assert np.array_equal(
            optimal_trajectory(trajectory_costs(ab, clipped), steps),
            optimal_trajectory(trajectory_costs(ab, non_negative), steps),
        )


def test_calibrate_pipeline_clips_and_counts_the_estimates_past_the_bounds():
    from conftest import _tiny_unet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    pipeline = HFDDPMPipeline(_tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=50))
    with torch.no_grad():
        # An untrained network far from E[eps | x_n]: ||eps_theta||^2 / d well past 1.
        pipeline.unet.conv_out.bias.fill_(1.5)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    raw = eps_second_moment(
        pipeline.unet,
        pipeline.scheduler,
        images,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    ).values
    result = calibrate_pipeline(
        pipeline, images, generator=torch.Generator().manual_seed(1), progress=False
    )
    ab = np.cumprod(1 - pipeline.scheduler.betas.double().numpy())
    outside = (raw < np.maximum(0, 1 - ab / (1 - ab))) | (raw > 1)
    assert result.clipped == outside.sum() > 0
    assert np.array_equal(result.values[~outside], raw[~outside])
    assert pipeline.scheduler.config.eps_second_moment == result.values.tolist()
    assert f"{result.clipped} of 50 Gamma_n estimates" in result.clipping_note()
