"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance and the optimal trajectory, against
independent oracles: brute force for the dynamic program, Gaussian and Gaussian-mixture data with their
exact epsilon-predictors (closed forms and quadrature, tests/gaussian_oracle.py) for the variance and the
bound's per-step terms."""

import itertools
import math

import numpy as np
import pytest
import torch
from gaussian_oracle import GaussianOracle, MixtureOracle

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


def _mixture(ab):
    return MixtureOracle([-0.5, 0.4], [0.1, 0.15], [0.4, 0.6], ab)


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


# ---------------------------------------------------------------------------------------------------------
# The scheduler's eps_second_moment and timestep_spacing="optimal".


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


def test_optimal_spacing_is_the_dynamic_program_and_is_cached():
    scheduler = _gamma_config(timestep_spacing="optimal")
    gamma = np.asarray(scheduler.config.eps_second_moment)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for k in (10, 50):
        scheduler.set_timesteps(k)
        assert scheduler.timesteps.tolist() == optimal_timesteps(ab, gamma, k)
    cached = scheduler._optimal_timesteps[10]
    scheduler.set_timesteps(10)
    assert scheduler._optimal_timesteps[10] is cached


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


# ---------------------------------------------------------------------------------------------------------
# hf-ddpm calibrate: Gamma by Monte Carlo, against the closed form of Gaussian data.


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_calibration_matches_the_closed_form_within_monte_carlo_error(prediction_type):
    from hf_ddpm import HFDDPMScheduler
    from hf_ddpm.evaluation.calibrate import eps_second_moment

    scheduler = HFDDPMScheduler(
        num_train_timesteps=40,
        scale_linear_betas_by_timesteps=True,
        prediction_type=prediction_type,
    )
    ab = scheduler.alphas_cumprod.double().numpy()
    oracle = GaussianOracle(M, S, ab, prediction_type)
    g = torch.Generator().manual_seed(5)
    images = M + S * torch.randn(48, 1, 4, 4, generator=g, dtype=torch.float64)
    result = eps_second_moment(oracle, scheduler, images, generator=g, max_batch_size=100)
    expected = oracle.eps_second_moment()
    z = (result.values - expected) / result.stderr
    assert result.num_images == 48 and result.values.shape == (40,)
    assert np.abs(z).max() < 5, (z, result.values, expected)
    # the closed form is not a constant that anything would match
    assert expected[0] < 0.01 and expected[-1] > 0.99


def _tiny_pipeline(num_class_embeds=None, null_class_label=None):
    from conftest import _tiny_unet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    unet = _tiny_unet(in_channels=1, num_class_embeds=num_class_embeds)
    return HFDDPMPipeline(
        unet, HFDDPMScheduler(num_train_timesteps=10), null_class_label=null_class_label
    )


def test_calibrate_pipeline_uses_the_null_label_and_sets_the_scheduler():
    from hf_ddpm.evaluation.bound import unconditional_model
    from hf_ddpm.evaluation.calibrate import calibrate_pipeline, eps_second_moment

    # The recorded null label (here not the last embedding) is the one calibrated.
    pipeline = _tiny_pipeline(num_class_embeds=4, null_class_label=2)
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = calibrate_pipeline(
        pipeline, images, generator=torch.Generator().manual_seed(1), progress=False
    )
    unet = pipeline.unet

    def label_zero(x_t, t):
        return unet(x_t, t, class_labels=torch.zeros_like(t)).sample

    for model, same in (
        (unconditional_model(unet, 2), True),
        (unconditional_model(unet), False),
        (label_zero, False),
    ):
        direct = eps_second_moment(
            model, pipeline.scheduler, images, torch.Generator().manual_seed(1), progress=False
        )
        assert np.allclose(direct.values, result.values) == same
    assert pipeline.scheduler.config.eps_second_moment == result.values.tolist()
    assert pipeline.scheduler.config.variance_type == "fixed_small"
    with pytest.raises(ValueError, match=r"\(M, 1, 8, 8\)"):
        calibrate_pipeline(pipeline, images[:, :, :4, :4])
    with pytest.raises(ValueError, match="non-empty"):
        eps_second_moment(unet, pipeline.scheduler, images[:0])
    # A class-conditional model without a null label has no model of p(x) to calibrate.
    with pytest.raises(ValueError, match="records no null label"):
        calibrate_pipeline(_tiny_pipeline(num_class_embeds=4), images, progress=False)


def test_write_is_atomic_and_keeps_the_variance_type_unless_asked(tmp_path, monkeypatch):
    import json
    import os

    from hf_ddpm.evaluation.calibrate import write_eps_second_moment

    _tiny_pipeline().save_pretrained(tmp_path)
    config_path = tmp_path / "scheduler" / "scheduler_config.json"
    before = config_path.read_text()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_eps_second_moment(tmp_path, [0.5] * 10)
    monkeypatch.undo()
    assert config_path.read_text() == before
    assert sorted(p.name for p in config_path.parent.iterdir() if p.suffix == ".tmp") == []
    with pytest.raises(ValueError, match="num_train_timesteps=10"):
        write_eps_second_moment(tmp_path, [0.5] * 9)
    write_eps_second_moment(tmp_path, [0.5] * 10)
    config = json.loads(config_path.read_text())
    assert config["eps_second_moment"] == [0.5] * 10 and config["variance_type"] == "fixed_small"
    write_eps_second_moment(tmp_path, [0.25] * 10, set_default=True)
    config = json.loads(config_path.read_text())
    assert config["eps_second_moment"] == [0.25] * 10 and config["variance_type"] == "analytic"


def test_calibrate_command_end_to_end(tmp_path, capsys):
    import json

    from hf_ddpm.cli import main

    source, output = tmp_path / "model", tmp_path / "calibrated"
    _tiny_pipeline().save_pretrained(source)
    before = (source / "scheduler" / "scheduler_config.json").read_text()
    argv = ["calibrate", str(source), "--num-images", "3", "--output", str(output)]
    assert main(argv) == 0
    assert "Gamma_n over 3 images" in capsys.readouterr().out
    assert (source / "scheduler" / "scheduler_config.json").read_text() == before
    config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert len(config["eps_second_moment"]) == 10 and config["variance_type"] == "fixed_small"
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    assert main(["calibrate", "someone/not-here", "--num-images", "2"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["calibrate", str(source), "--num-images", "0"]) == 2
    assert "--num-images" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The bound of a K-step chain: variational_bound(..., num_inference_steps=K).

BOUND_M, BOUND_S = (
    0.1,
    0.25,
)  # narrow enough that 8-bit clipping to [-1, 1] leaves the edge bins empty


def _scheduler(variance_type, spacing="leading", gamma=None, **kwargs):
    from hf_ddpm import HFDDPMScheduler

    return HFDDPMScheduler(
        variance_type=variance_type,
        timestep_spacing=spacing,
        eps_second_moment=None if gamma is None else list(gamma),
        clip_sample=False,
        **kwargs,
    )


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


# ---------------------------------------------------------------------------------------------------------
# variance_type="analytic" in the scheduler: the step, p_theta and the bound share its one formula.


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


def test_calibrate_a_hub_model_and_push_it_back(hub_server, tmp_path, capsys):
    """From a Hub repo id to a calibrated folder and back: the pushed scheduler config carries the
    moments, and loading the repo gives an analytic-ready scheduler."""
    import json

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
    from hf_ddpm.cli import main

    _tiny_pipeline().push_to_hub("tester/tiny-ddpm")
    output = tmp_path / "calibrated"
    argv = ["calibrate", "tester/tiny-ddpm", "--num-images", "2", "--output", str(output)]
    assert main([*argv, "--set-default", "--push-to-hub"]) == 0
    assert "pushed" in capsys.readouterr().out
    pushed = json.loads(hub_server.files("tester/tiny-ddpm")["scheduler/scheduler_config.json"])
    assert len(pushed["eps_second_moment"]) == 10 and pushed["variance_type"] == "analytic"
    loaded = HFDDPMPipeline.from_pretrained("tester/tiny-ddpm", cache_dir=tmp_path / "cache")
    assert isinstance(loaded.scheduler, HFDDPMScheduler)
    assert loaded.scheduler.config.eps_second_moment == pushed["eps_second_moment"]
    images = loaded(batch_size=1, num_inference_steps=3, output_type="pt").images
    assert torch.isfinite(images).all()


def test_remote_code_copy_samples_with_the_analytic_variance(tmp_path, run_without_hf_ddpm):
    """A calibrated model saved with variance_type='analytic' and the optimal spacing loads through
    diffusers' remote code where hf_ddpm cannot be imported, and samples as the installed package does."""
    import textwrap

    from hf_ddpm import HFDDPMScheduler

    pipeline = _tiny_pipeline()
    gamma = _mixture(pipeline.scheduler.alphas_cumprod.double().numpy()).eps_second_moment()
    pipeline.scheduler = HFDDPMScheduler.from_config(
        pipeline.scheduler.config,
        variance_type="analytic",
        timestep_spacing="optimal",
        eps_second_moment=gamma.tolist(),
    )
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=4,
        output_type="np",
    ).images
    pipeline.save_pretrained(tmp_path / "saved")
    run_without_hf_ddpm(
        textwrap.dedent(f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads(1)
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        assert pipe.scheduler.config.variance_type == "analytic"
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                      output_type="np").images
        np.save({str(tmp_path / "remote.npy")!r}, images)
        """)
    )
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)


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
