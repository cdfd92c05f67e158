"""HFDDPMScheduler with Analytic-DPM's variance and optimal spacing: its config, its step's noise and p_theta's
variance, against the closed forms and Gaussian data.

Moved from tests/evaluation/test_analytic_dpm.py (issue 18: tests mirror the package).
"""

import math

import numpy as np
import pytest
import torch
from analytic_oracle_helpers import _mixture, _scheduler
from gaussian_oracle import GaussianOracle

from hf_ddpm.core.analytic import (
    last_step_max_variance,
    optimal_timesteps,
)

LINEAR_AB = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


M, S = 0.3, 0.5


def _gamma_config(num_train_timesteps=1000, **kwargs):
    from hf_ddpm import HFDDPMScheduler

    ab = HFDDPMScheduler(num_train_timesteps=num_train_timesteps).alphas_cumprod.double().numpy()
    gamma = _mixture(ab).eps_second_moment().tolist()
    return HFDDPMScheduler(
        num_train_timesteps=num_train_timesteps, eps_second_moment=gamma, **kwargs
    )


def test_eps_second_moment_round_trips_and_diffusers_ignores_it(tmp_path):
    from diffusers import DDPMScheduler

    from hf_ddpm import HFDDPMScheduler

    scheduler = _gamma_config(num_train_timesteps=20)
    scheduler.save_pretrained(tmp_path)
    loaded = HFDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.eps_second_moment == scheduler.config.eps_second_moment
    assert len(loaded.config.eps_second_moment) == 20
    # diffusers builds its scheduler as without the key, and keeps the key in its config for the way back
    theirs = DDPMScheduler.from_config(loaded.config)
    plain = DDPMScheduler(num_train_timesteps=20)
    theirs.set_timesteps(5)
    plain.set_timesteps(5)
    assert torch.equal(theirs.timesteps, plain.timesteps)
    assert torch.equal(theirs.alphas_cumprod, plain.alphas_cumprod)
    back = HFDDPMScheduler.from_config(theirs.config)
    assert back.config.eps_second_moment == scheduler.config.eps_second_moment


def test_optimal_spacing_is_the_dynamic_program():
    scheduler = _gamma_config(timestep_spacing="optimal")
    gamma = np.asarray(scheduler.config.eps_second_moment)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for k in (10, 50):
        scheduler.set_timesteps(k)
        assert scheduler.timesteps.tolist() == optimal_timesteps(ab, gamma, k)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timestep_spacing": "optimal"},
        {"timestep_spacing": "optimal", "eps_second_moment": [0.5] * 999},
        {"variance_type": "analytic", "eps_second_moment": [0.5] * 999 + [float("inf")]},
    ],
)
def test_scheduler_refuses_missing_or_bad_moments(kwargs):
    from hf_ddpm import HFDDPMScheduler

    with pytest.raises(ValueError, match="hf-ddpm calibrate"):
        HFDDPMScheduler(**kwargs)


def test_a_calibrated_config_with_another_t_still_builds_the_fixed_variances():
    from hf_ddpm import HFDDPMScheduler

    config = _gamma_config().config
    short = HFDDPMScheduler.from_config(config, num_train_timesteps=10)
    short.set_timesteps(5)
    with pytest.raises(ValueError, match="num_train_timesteps=10"):
        HFDDPMScheduler.from_config(config, num_train_timesteps=10, variance_type="analytic")


def _gaussian_analytic_scheduler(**kwargs):
    return _scheduler(
        "analytic", gamma=GaussianOracle(M, S, LINEAR_AB).eps_second_moment(), **kwargs
    )


@pytest.mark.parametrize("steps", [1000, 7])
def test_step_noise_is_the_analytic_sigma_and_p_theta_has_it_too(steps):
    """The step's sigma, measured from two generators, is Theorem 1's sigma^2 = beta-tilde + c^2 Var[x_0|x_r]
    with the Gaussian closed forms (written here); on the full chain p_mean_variance has the same."""
    scheduler = _gaussian_analytic_scheduler()
    scheduler.set_timesteps(steps)
    kept = scheduler.timesteps.tolist()
    x0_var = GaussianOracle(M, S, LINEAR_AB).x0_posterior_variance()
    output = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    sample = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    for k in (0, len(kept) // 2, len(kept) - 2):
        r, s = kept[k], kept[k + 1]
        prevs, zs = [], []
        for seed in (1, 2):
            # Both from r: diffusers' step index rule would otherwise take the second from the next one.
            scheduler.set_begin_index(scheduler.index_for_timestep(r))
            prevs.append(
                scheduler.step(output, r, sample, generator=torch.Generator().manual_seed(seed))
            )
            zs.append(
                torch.randn(
                    3, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
                )
            )
        sigma = (prevs[0].prev_sample - prevs[1].prev_sample) / (zs[0] - zs[1])
        beta = 1 - LINEAR_AB[r] / LINEAR_AB[s]
        lam2 = beta * (1 - LINEAR_AB[s]) / (1 - LINEAR_AB[r])
        coef2 = LINEAR_AB[s] * beta**2 / (1 - LINEAR_AB[r]) ** 2
        expected = lam2 + coef2 * x0_var[r]
        np.testing.assert_allclose(sigma.numpy() ** 2, expected, rtol=1e-9)
        if steps == 1000:
            p = scheduler.p_mean_variance(output, sample, r)
            np.testing.assert_allclose(p.variance.numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("steps", [5, 10, 50])
def test_analytic_samples_match_the_data_far_better_than_fixed_variances(steps):
    """Monte Carlo through HFDDPMScheduler.step with the exact predictor on N(M, S^2): the analytic
    variance's samples have the data's mean and std within sampling error; fixed_small's and fixed_large's
    std are off by percents at these K (the assertion message lists all three)."""
    oracle = GaussianOracle(M, S, LINEAR_AB)
    n = 20_000
    errors = {}
    for variance_type in ("analytic", "fixed_small", "fixed_large"):
        scheduler = _scheduler(variance_type, gamma=oracle.eps_second_moment())
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
        for t in scheduler.timesteps:
            x = scheduler.step(oracle(x, t), t, x, generator=g).prev_sample
        errors[variance_type] = (abs(x.mean().item() - M), abs(x.std().item() - S))
    message = ", ".join(
        f"{k}: |mean err| {m:.4f}, |std err| {s:.4f}" for k, (m, s) in errors.items()
    )
    mean_se, std_se = S / math.sqrt(n), S / math.sqrt(2 * n)
    assert errors["analytic"][0] < 5 * mean_se and errors["analytic"][1] < 5 * std_se, message
    fixed = min(errors["fixed_small"][1], errors["fixed_large"][1])
    assert errors["analytic"][1] < 0.3 * fixed, message


def test_variance_type_analytic_without_moments_names_calibrate():
    from hf_ddpm import HFDDPMScheduler

    with pytest.raises(ValueError, match="hf-ddpm calibrate"):
        HFDDPMScheduler(variance_type="analytic")
    with pytest.raises(ValueError, match="analytic"):
        HFDDPMScheduler(variance_type="nonsense")


def test_last_step_clip_is_a_config_switch_of_the_same_variance():
    plain = _gaussian_analytic_scheduler()
    clipped = _gaussian_analytic_scheduler(analytic_clip_last_step=True)
    for scheduler in (plain, clipped):
        scheduler.set_timesteps(10)
    bound = last_step_max_variance(2.0)
    output = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    sample = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    sigmas = {}
    for name, scheduler in (("plain", plain), ("clipped", clipped)):
        prevs = []
        for s in (1, 2):
            scheduler.set_begin_index(scheduler.index_for_timestep(100))
            prevs.append(
                scheduler.step(output, 100, sample, generator=torch.Generator().manual_seed(s))
            )
        z = [
            torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            for s in (1, 2)
        ]
        sigmas[name] = ((prevs[0].prev_sample - prevs[1].prev_sample) / (z[0] - z[1])).mean().item()
    assert sigmas["clipped"] ** 2 == pytest.approx(bound, rel=1e-9)
    assert sigmas["plain"] ** 2 > 10 * bound
