"""Analytic-DPM's closed forms (Bao et al. 2022, core/analytic.py): the optimal variance, its clipping and the
optimal trajectory, against brute force and Gaussian / Gaussian-mixture data with their exact epsilon-predictors
(tests/gaussian_oracle.py).

Moved from tests/evaluation/test_analytic_dpm.py (issue 18: tests mirror the package).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from analytic_oracle_helpers import _mixture
from gaussian_oracle import GaussianOracle

from hf_ddpm.core.analytic import (
    analytic_step_variances,
    check_eps_second_moment,
    expected_x0_variance,
    last_step_max_variance,
    optimal_timesteps,
    optimal_trajectory,
    step_kl_costs,
    trajectory_cost,
)

LINEAR_AB = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


M, S = 0.3, 0.5


def _short_chain(num_timesteps):
    return np.cumprod(1 - np.linspace(0.02, 0.5, num_timesteps))


@pytest.mark.parametrize("num_timesteps,gamma_kind", [(14, "mixture"), (16, "noisy")])
def test_dynamic_program_matches_brute_force_over_all_subsets(num_timesteps, gamma_kind):
    ab = _short_chain(num_timesteps)
    if gamma_kind == "mixture":
        gamma = _mixture(ab).eps_second_moment()
    else:  # an imperfect network's Gamma, some entries past the clipping bounds
        gamma = np.random.default_rng(0).uniform(0.0, 1.3, num_timesteps)
    costs = step_kl_costs(ab, gamma)
    for k in range(2, 7):
        interior = range(1, num_timesteps - 1)
        best = min(
            trajectory_cost(costs, (0, *subset, num_timesteps - 1))
            for subset in itertools.combinations(interior, k - 2)
        )
        path = optimal_trajectory(costs, k)
        assert len(path) == k and path[0] == 0 and path[-1] == num_timesteps - 1
        assert np.all(np.diff(path) > 0)
        assert trajectory_cost(costs, path) == pytest.approx(best, rel=1e-12)
    assert optimal_trajectory(costs, num_timesteps).tolist() == list(range(num_timesteps))
    assert optimal_trajectory(costs, 1).tolist() == [num_timesteps - 1]


def test_optimal_timesteps_are_descending_and_fit_diffusers_schedulers():
    from diffusers import DDPMScheduler

    gamma = _mixture(LINEAR_AB).eps_second_moment()
    ts = optimal_timesteps(LINEAR_AB, gamma, 25)
    assert len(ts) == 25 and ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    diffusers_ddpm = DDPMScheduler()
    diffusers_ddpm.set_timesteps(timesteps=ts)
    assert diffusers_ddpm.timesteps.tolist() == ts
    with pytest.raises(ValueError, match="hf-ddpm calibrate"):
        optimal_timesteps(LINEAR_AB, gamma[:10], 25)


def test_expected_x0_variance_is_the_gaussian_posterior_variance():
    """Theorem 1's (beta-bar / alpha-bar)(1 - Gamma) with the closed-form Gamma of Gaussian data is the exact
    Var[x_0 | x_n] of that data (which Theorem 2's clipping to [0, 1] leaves alone for s = 0.5)."""
    oracle = GaussianOracle(M, S, LINEAR_AB)
    np.testing.assert_allclose(
        expected_x0_variance(LINEAR_AB, oracle.eps_second_moment()),
        oracle.x0_posterior_variance(),
        rtol=1e-9,
    )


def test_clipping_keeps_the_variance_within_theorem_2():
    ts = np.array([999, 600, 300, 100, 0])
    lower = analytic_step_variances(LINEAR_AB, np.ones(1000), ts)  # Gamma = 1: E Var = 0
    upper = analytic_step_variances(
        LINEAR_AB, np.zeros(1000), ts
    )  # Gamma = 0: past the [-1, 1] bound
    beyond = analytic_step_variances(LINEAR_AB, np.full(1000, 1.7), ts)
    ab_r, ab_s = LINEAR_AB[ts], np.append(LINEAR_AB[ts[1:]], 1.0)
    beta = 1 - ab_r / ab_s
    beta_tilde = (1 - ab_s) / (1 - ab_r) * beta
    coef = np.sqrt(ab_s) * beta / (1 - ab_r)
    np.testing.assert_allclose(lower, beta_tilde, rtol=1e-12)
    np.testing.assert_allclose(beyond, beta_tilde, rtol=1e-12)
    np.testing.assert_allclose(upper, beta_tilde + coef**2 * np.minimum((1 - ab_r) / ab_r, 1.0))


def _output_moments(ts, ab_all, noise_variances):
    """Exact mean and variance of a K-step DDPM sampler's output for N(M, S^2) data and the exact
    predictor, by the linear-Gaussian moment recursion (independent of the scheduler)."""
    mean, var = 0.0, 1.0
    for i, t in enumerate(ts):
        ab = ab_all[t]
        ab_prev = ab_all[ts[i + 1]] if i + 1 < len(ts) else 1.0
        beta = 1 - ab / ab_prev
        k = math.sqrt(ab) * S**2 / (ab * S**2 + 1 - ab)  # E[x_0 | x_t] = k x_t + c
        c = M - k * math.sqrt(ab) * M
        c1 = math.sqrt(ab_prev) * beta / (1 - ab)
        c2 = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        noise = noise_variances[i] if i + 1 < len(ts) else 0.0
        mean, var = (c1 * k + c2) * mean + c1 * c, (c1 * k + c2) ** 2 * var + noise
    return mean, var


@pytest.mark.parametrize("steps", [5, 10, 50])
def test_analytic_variance_gives_the_data_std_where_fixed_variances_miss(steps):
    """With the exact predictor on Gaussian data the analytic variance makes every reverse kernel the
    exact q(x_s | x_r), so the sampler's output is N(M, S^2) up to the prior's mismatch at the first
    timestep; fixed_small and fixed_large miss the std by percents (see the assertion message)."""
    ts = np.arange(0, steps)[::-1] * (1000 // steps)
    oracle = GaussianOracle(M, S, LINEAR_AB)
    ab_r, ab_s = LINEAR_AB[ts], np.append(LINEAR_AB[ts[1:]], 1.0)
    beta = 1 - ab_r / ab_s
    variances = {
        "analytic": analytic_step_variances(LINEAR_AB, oracle.eps_second_moment(), ts),
        "fixed_small": (1 - ab_s) / (1 - ab_r) * beta,
        "fixed_large": beta,
    }
    errors = {}
    for name, noise in variances.items():
        mean, var = _output_moments(ts, LINEAR_AB, noise)
        errors[name] = (abs(mean - M), abs(math.sqrt(var) - S))
    message = ", ".join(f"{k}: mean err {m:.2e}, std err {s:.2e}" for k, (m, s) in errors.items())
    assert errors["analytic"][1] < 1e-3, message
    assert errors["analytic"][1] < 0.1 * min(errors["fixed_small"][1], errors["fixed_large"][1]), (
        message
    )
    assert errors["analytic"][0] < 1e-3, message


@pytest.mark.parametrize("s,r", [(0, 40), (100, 300), (500, 900), (0, 999)])
def test_step_cost_is_the_monte_carlo_kl_of_the_exact_predictor(s, r):
    """cost[s, r] = 0.5 log(sigma^2 / beta-tilde) is the expected KL(q(x_s|x_r,x_0) || p(x_s|x_r)) when the
    predictor is exact, since its squared mean error is then c^2 E Var[x_0 | x_r]. Checked by Monte Carlo
    over mixture data (non-Gaussian posteriors), with the general two-Gaussian KL."""
    oracle = _mixture(LINEAR_AB)
    gamma = oracle.eps_second_moment()
    cost = step_kl_costs(LINEAR_AB, gamma)[s, r]
    sigma2 = analytic_step_variances(LINEAR_AB, gamma, np.array([r, s]))[0]
    g = torch.Generator().manual_seed(3)
    x0 = oracle.sample((200_000,), g).numpy()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64).numpy()
    ab_r, ab_s = LINEAR_AB[r], LINEAR_AB[s]
    x_r = math.sqrt(ab_r) * x0 + math.sqrt(1 - ab_r) * eps
    eps_hat = oracle(torch.from_numpy(x_r), torch.full((1,), r)).numpy()
    x0_hat = (x_r - math.sqrt(1 - ab_r) * eps_hat) / math.sqrt(ab_r)
    beta = 1 - ab_r / ab_s
    coef = math.sqrt(ab_s) * beta / (1 - ab_r)
    beta_tilde = (1 - ab_s) / (1 - ab_r) * beta
    sq_err = coef**2 * (x0 - x0_hat) ** 2
    kl = 0.5 * (np.log(sigma2 / beta_tilde) + (beta_tilde + sq_err) / sigma2 - 1)
    stderr = kl.std() / math.sqrt(len(kl))
    assert cost == pytest.approx(kl.mean(), abs=5 * stderr + 1e-9)


def test_last_step_clipping_caps_the_last_noisy_step():
    ts = np.array([999, 500, 100, 0])
    gamma = GaussianOracle(M, S, LINEAR_AB).eps_second_moment()
    free = analytic_step_variances(LINEAR_AB, gamma, ts)
    capped = analytic_step_variances(LINEAR_AB, gamma, ts, last_step_pixels=2.0)
    cap = (2 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    assert last_step_max_variance(2.0) == pytest.approx(cap)
    assert free[2] > cap and capped[2] == pytest.approx(cap)
    np.testing.assert_array_equal(np.delete(capped, 2), np.delete(free, 2))


@pytest.mark.parametrize(
    "value,match",
    [
        (None, "needs eps_second_moment"),
        ([0.5] * 7, "num_train_timesteps=8"),
        ([0.5] * 7 + [float("nan")], "finite and non-negative"),
        ([0.5] * 7 + [-0.1], "finite and non-negative"),
        (["a"] * 8, "list of 8 numbers"),
    ],
)
def test_bad_eps_second_moment_names_the_calibrate_command(value, match):
    with pytest.raises(ValueError, match=match) as info:
        check_eps_second_moment(value, 8)
    assert "hf-ddpm calibrate" in str(info.value)


def test_an_estimate_past_the_bound_does_not_open_a_free_jump():
    """Gamma_n >= 1 (Monte Carlo noise near n = T, as calibrating the bundled model gave at n = 995) clips
    E Var[x_0 | x_n] to 0, so a step from there would cost nothing: the program must not start steps there,
    and still keep every timestep when asked for all of them."""
    ab = _short_chain(16)
    gamma = _mixture(ab).eps_second_moment()
    spiked = gamma.copy()
    spiked[13] = 1.02
    raw = optimal_trajectory(step_kl_costs(ab, spiked), 4)
    assert 13 in raw.tolist()  # the unfiltered program takes the free jump
    chosen = optimal_timesteps(ab, spiked, 4)
    assert 13 not in chosen and chosen[0] == 15 and chosen[-1] == 0
    best = min(
        trajectory_cost(step_kl_costs(ab, spiked), (0, *sub, 15))
        for sub in itertools.combinations([n for n in range(1, 15) if n != 13], 2)
    )
    assert trajectory_cost(step_kl_costs(ab, spiked), chosen) == pytest.approx(best)
    assert optimal_timesteps(ab, spiked, 16) == list(range(15, -1, -1))
    assert len(optimal_timesteps(ab, spiked, 15)) == 15
    first_past = gamma.copy()
    first_past[15] = 1.1  # the chain's first timestep is kept, costed at the bound's worst case
    assert optimal_timesteps(ab, first_past, 4)[0] == 15
