"""Beta schedules and the float64 tables, against diffusers' schedules and closed forms."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from hf_ddpm.core.diffusion_tables import DiffusionTables
from hf_ddpm.core.schedules import (
    BETA_SCHEDULES,
    cosine_alpha_bar,
    make_betas,
    rescale_zero_terminal_snr,
)


@pytest.mark.parametrize(
    "schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"]
)
@pytest.mark.parametrize("num_steps", [1000, 37])
def test_betas_match_diffusers(schedule, num_steps):
    ours = make_betas(schedule, num_steps, 1e-4, 0.02)
    theirs = (
        DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=schedule).betas.double().numpy()
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


def test_linear_schedule_is_hos():
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64
    assert betas[0] == 1e-4 and betas[-1] == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_linear_scaling_by_timesteps_keeps_the_overall_noise_of_t1000():
    betas = make_betas("linear", 250, scale_linear_betas_by_timesteps=True)
    assert betas[0] == pytest.approx(4e-4) and betas[-1] == pytest.approx(0.08)
    # The terminal alpha_bar stays tiny, as with Ho's T = 1000.
    assert np.prod(1 - betas) < 1e-3


def test_cosine_schedule_follows_its_alpha_bar():
    num_steps = 1000
    ab = np.cumprod(1 - make_betas("squaredcos_cap_v2", num_steps))
    expected = np.array(
        [cosine_alpha_bar((t + 1) / num_steps) / cosine_alpha_bar(0) for t in range(num_steps)]
    )
    # Equal until the 0.999 cap on beta bites at the very end.
    np.testing.assert_allclose(ab[:990], expected[:990], rtol=1e-9)


def test_trained_betas_are_used_verbatim_and_checked():
    betas = np.linspace(0.01, 0.2, 10)
    np.testing.assert_array_equal(make_betas(trained_betas=betas, num_train_timesteps=10), betas)
    with pytest.raises(ValueError, match="num_train_timesteps=11"):
        make_betas(trained_betas=betas, num_train_timesteps=11)


def test_zero_terminal_snr_rescaling():
    betas = rescale_zero_terminal_snr(make_betas("scaled_linear", 1000, 0.00085, 0.012))
    ab = np.cumprod(1 - betas)
    ab_orig = np.cumprod(1 - make_betas("scaled_linear", 1000, 0.00085, 0.012))
    assert ab[-1] == pytest.approx(0.0, abs=1e-12)
    assert ab[0] == pytest.approx(ab_orig[0], rel=1e-12)
    theirs = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
    )
    # diffusers rescales in float32, whose cancellation in alpha_bar ratios costs ~2e-4 relative.
    np.testing.assert_allclose(betas, theirs.betas.double().numpy(), rtol=1e-3, atol=1e-7)


def test_unknown_schedule_names_the_allowed_values():
    with pytest.raises(ValueError) as err:
        make_betas("quadratic")
    for name in BETA_SCHEDULES:
        assert name in str(err.value)


def test_tables_are_float64_and_match_their_definitions():
    betas = make_betas("linear", 1000)
    tables = DiffusionTables.from_betas(betas)
    for value in vars(tables).values():
        assert value.dtype == torch.float64
    # Independent recomputation with Python floats for a few t.
    ab = 1.0
    abs_ = []
    for b in betas:
        ab *= 1 - b
        abs_.append(ab)
    for t in (1, 10, 500, 999):
        ab_t, ab_prev, beta = abs_[t], abs_[t - 1], betas[t]
        assert tables.alphas_cumprod[t].item() == pytest.approx(ab_t, rel=1e-12)
        assert tables.posterior_variance[t].item() == pytest.approx(
            beta * (1 - ab_prev) / (1 - ab_t), rel=1e-12
        )
        assert tables.posterior_mean_coef1[t].item() == pytest.approx(
            beta * math.sqrt(ab_prev) / (1 - ab_t), rel=1e-12
        )
        assert tables.posterior_mean_coef2[t].item() == pytest.approx(
            (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab_t), rel=1e-12
        )
    assert tables.posterior_variance[0].item() == 0.0
    assert tables.posterior_log_variance_clipped[0].item() == pytest.approx(
        math.log(tables.posterior_variance[1].item())
    )


def test_linear_scaling_is_capped_below_one_for_short_chains():
    betas = make_betas("linear", 20, scale_linear_betas_by_timesteps=True)
    assert betas.max() == 0.999 and np.prod(1 - betas) > 0
