"""The per-pixel optimal covariance (Bao et al. ICML 2022): each formula against an independent computation.

- Cov[x_0 | x_t] from SN's and NPR's heads against the joint-Gaussian closed form and Monte Carlo;
- the (floor, gain) of a DDIM step against the respaced chain's eq. 7 tables (eta = 1) and against a
  Monte Carlo of the true reverse kernel q(x_s | x_t) of DDIM's family (Song et al. 2021, eq. 7);
- the scheduler's step sigma with "sn" / "npr", measured from two generators, against float64 written here.
"""

import math

import numpy as np
import pytest
import torch
from gaussian_oracle import CovarianceHeadOracle

from hf_ddpm import HFDDPMScheduler
from hf_ddpm.core.covariance import (
    npr_eps_error_moment,
    optimal_step_variance,
    sn_eps_error_moment,
    step_variance_coefficients,
    x0_covariance,
)
from hf_ddpm.core.diffusion_tables import DiffusionTables
from hf_ddpm.core.variance import HEAD_VARIANCE_TYPES, VARIANCE_TYPE_NAMES

LINEAR_AB = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
M, S = 0.2, 0.4


def test_head_types_are_registered_variance_types():
    assert set(HEAD_VARIANCE_TYPES) == {"sn", "npr"}
    assert set(HEAD_VARIANCE_TYPES) <= set(VARIANCE_TYPE_NAMES)


@pytest.mark.parametrize("t", [5, 100, 500, 900])
def test_sn_covariance_with_exact_heads_is_the_gaussian_posterior_variance(t):
    """Var[x_0 | x_t] = s^2 - Cov(x_0, x_t)^2 / Var(x_t) = s^2 - ab s^4 / (ab s^2 + 1 - ab), the Gaussian
    conditioning formula (not the eps form the code uses); SN and NPR agree when eps_theta is exact."""
    ab = LINEAR_AB[t]
    x_t = torch.linspace(-2, 2, 7, dtype=torch.float64).reshape(1, 1, 7, 1)
    expected = S**2 - ab * S**4 / (ab * S**2 + 1 - ab)
    for kind, moment in (("sn", sn_eps_error_moment), ("npr", npr_eps_error_moment)):
        out = CovarianceHeadOracle(M, S, LINEAR_AB, kind)(x_t, t)
        eps, head = out[:, :1], out[:, 1:]
        cov = x0_covariance((1 - ab) / ab, moment(eps, head))
        torch.testing.assert_close(cov, torch.full_like(cov, min(expected, 1.0)), rtol=1e-9, atol=0)


def test_npr_covariance_is_the_mean_squared_error_of_x0_theta_under_a_biased_mean():
    """With eps_theta = eps-hat + b, NPR's (bb/ab) g is E[(x_0 - x0_theta)^2 | x_t] (Monte Carlo over the data),
    while SN's h - eps_theta^2 underestimates it (it is the variance about the wrong mean)."""
    t, bias, n = 300, 0.3, 400_000
    ab = LINEAR_AB[t]
    g = torch.Generator().manual_seed(0)
    x0 = M + S * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(
        x0.shape, generator=g, dtype=x0.dtype
    )
    out = CovarianceHeadOracle(M, S, LINEAR_AB, "npr", eps_bias=bias)(x_t, t)
    x0_theta = (x_t - math.sqrt(1 - ab) * out[:, :1]) / math.sqrt(ab)
    mse = ((x0 - x0_theta) ** 2).mean().item()
    npr = x0_covariance((1 - ab) / ab, npr_eps_error_moment(out[:, :1], out[:, 1:])).mean().item()
    assert npr == pytest.approx(mse, rel=0.01)
    # SN's exact h about the biased eps_theta: its data average is (bb/ab)(Var - b^2), unclipped.
    sn_out = CovarianceHeadOracle(M, S, LINEAR_AB, "sn")(x_t, t)
    sn = (1 - ab) / ab * sn_eps_error_moment(out[:, :1], sn_out[:, 1:]).mean().item()
    assert sn < 0.9 * mse, f"SN {sn:.4g} should miss the bias' share of the x_0 error {mse:.4g}"


def test_covariance_is_clipped_to_the_data_bounds():
    cov = x0_covariance(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([-0.5, 0.25, 3.0]))
    assert cov.tolist() == [0.0, 0.5, 1.0]


def test_ddpm_coefficients_are_the_respaced_chains_eq7_tables():
    kept = np.array([3, 40, 41, 200, 650, 999])
    ab = LINEAR_AB[kept]
    tables = DiffusionTables.from_alphas_cumprod(ab)
    floor, gain = step_variance_coefficients(ab, np.append(1.0, ab[:-1]), eta=1.0)
    np.testing.assert_allclose(floor, tables.posterior_variance.numpy(), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(gain, tables.posterior_mean_coef1.numpy(), rtol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_optimal_variance_is_the_true_reverse_kernels_variance(eta):
    """For Gaussian data and a fixed x_t: x_0 ~ q(x_0 | x_t) (closed form), then x_s ~ DDIM's
    q_lambda(x_s | x_t, x_0) = N(sqrt(ab_s) x_0 + sqrt(bb_s - lambda^2) (x_t - sqrt(ab_t) x_0) / sqrt(bb_t),
    lambda^2): the Monte Carlo variance of x_s is the floor + gain^2 Var[x_0 | x_t] of the step."""
    t, s, n = 600, 350, 1_000_000
    ab_t, ab_s = LINEAR_AB[t], LINEAR_AB[s]
    x_t = 0.7
    posterior_mean = M + math.sqrt(ab_t) * S**2 * (x_t - math.sqrt(ab_t) * M) / (
        ab_t * S**2 + 1 - ab_t
    )
    posterior_var = S**2 * (1 - ab_t) / (ab_t * S**2 + 1 - ab_t)
    g = torch.Generator().manual_seed(1)
    x0 = posterior_mean + math.sqrt(posterior_var) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    lam2 = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    x_s = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - lam2) * eps
    x_s = x_s + math.sqrt(lam2) * torch.randn(n, generator=g, dtype=torch.float64)
    floor, gain = step_variance_coefficients(ab_t, ab_s, eta)
    assert floor == pytest.approx(lam2, rel=1e-12, abs=0)
    expected = optimal_step_variance(floor, gain, posterior_var)
    assert x_s.var().item() == pytest.approx(expected, rel=5 * math.sqrt(2 / n))


T = 50
SHAPE = (2, 2, 3, 3)


def _step_at(scheduler, model_output, t, sample, seed):
    """One step from timestep t, wherever the scheduler's step index is (diffusers' rule advances it)."""
    scheduler.set_begin_index(scheduler.index_for_timestep(t))
    return scheduler.step(model_output, t, sample, generator=torch.Generator().manual_seed(seed))


def _measured_sigma(scheduler, model_output, t, sample):
    steps = [_step_at(scheduler, model_output, t, sample, seed) for seed in (1, 2)]
    z = [
        torch.randn(SHAPE, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in (1, 2)
    ]
    return (steps[0].prev_sample - steps[1].prev_sample) / (z[0] - z[1])


@pytest.mark.parametrize("variance_type", HEAD_VARIANCE_TYPES)
@pytest.mark.parametrize("num_inference_steps", [T, 7])
def test_step_sigma_of_the_head_types(variance_type, num_inference_steps):
    """sigma^2 = beta-tilde + (sqrt(ab_prev) beta / (1 - ab_t))^2 clip((1 - ab_t) / ab_t * v), with v =
    h - eps^2 (SN) or g (NPR), written here in numpy per pixel; p_mean_variance's variance on the full
    chain is the same formula."""
    scheduler = HFDDPMScheduler(
        num_train_timesteps=T, variance_type=variance_type, clip_sample=False
    )
    assert scheduler.model_output_channels(SHAPE[1]) == 2 * SHAPE[1]
    scheduler.set_timesteps(num_inference_steps)
    kept = scheduler.timesteps.tolist()
    ab_all = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    # Values on both sides of the clipping: Cov from 0 up to past 1 at the early (noisy) steps.
    spread = 4 * torch.rand(SHAPE, generator=g, dtype=torch.float64) - 1
    head = spread if variance_type == "npr" else eps**2 + spread
    output = torch.cat([eps, head], 1)
    v = (head - eps**2 if variance_type == "sn" else head).numpy()
    for k in (0, len(kept) // 2, len(kept) - 2):
        ab_t, ab_prev = ab_all[kept[k]], ab_all[kept[k + 1]]
        beta = 1 - ab_t / ab_prev
        cov = np.clip((1 - ab_t) / ab_t * v, 0, 1)
        expected = (
            beta * (1 - ab_prev) / (1 - ab_t) + (math.sqrt(ab_prev) * beta / (1 - ab_t)) ** 2 * cov
        )
        sigma = _measured_sigma(scheduler, output, kept[k], sample)
        np.testing.assert_allclose(sigma.numpy() ** 2, expected, rtol=1e-9)
        if num_inference_steps == T:
            p = scheduler.p_mean_variance(output, sample, kept[k])
            np.testing.assert_allclose(p.variance.numpy(), expected, rtol=1e-9)
    # The last step returns the mean: no noise.
    last = [_step_at(scheduler, output, kept[-1], sample, seed).prev_sample for seed in (1, 2)]
    torch.testing.assert_close(last[0], last[1], rtol=0, atol=0)


@pytest.mark.parametrize("variance_type", HEAD_VARIANCE_TYPES)
def test_head_types_refuse_wrong_channels_and_non_epsilon_predictions(variance_type):
    scheduler = HFDDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    scheduler.set_timesteps(5)
    sample = torch.zeros(SHAPE)
    expected = (
        f"variance_type '{variance_type}' needs 4 output channels "
        r"\(the UNet's 2 \(eps\), then the covariance head's 2\)$"
    )
    with pytest.raises(ValueError, match=expected):
        scheduler.step(torch.zeros(SHAPE), scheduler.timesteps[0], sample)
    with pytest.raises(ValueError, match="needs prediction_type 'epsilon'"):
        HFDDPMScheduler(variance_type=variance_type, prediction_type="v_prediction")


def test_last_noise_step_is_capped_as_the_authors_clip_sigma():
    """analytic_clip_last_step caps sigma^2 of the step into the chain's smallest timestep at
    (2 bins * sqrt(pi / 2))^2 for the linear schedule (their --clip_sigma_idx 1 --clip_pixel 2)."""
    scheduler = HFDDPMScheduler(
        variance_type="npr", analytic_clip_last_step=True, clip_sample=False
    )
    scheduler.set_timesteps(10)
    kept = scheduler.timesteps.tolist()
    shape = (1, 1, 2, 2)
    output = torch.cat([torch.zeros(shape), torch.full(shape, 1e6)], 1).double()
    sample = torch.zeros(shape, dtype=torch.float64)
    steps = [_step_at(scheduler, output, kept[-2], sample, seed).prev_sample for seed in (1, 2)]
    z = [
        torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in (1, 2)
    ]
    sigma2 = (((steps[0] - steps[1]) / (z[0] - z[1])) ** 2).flatten()
    cap = (2 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    np.testing.assert_allclose(sigma2.numpy(), cap, rtol=1e-9)


def test_a_head_that_predicts_no_error_bounds_as_fixed_small_does():
    """NPR with g = 0 everywhere is fixed_small: Cov[x_0 | x_t] = 0, so every step's variance is
    beta-tilde. Its bound is fixed_small's term by term, the decoder included: the head types' decoder
    has the variance of fixed_small's, beta-tilde_1 of the full chain, as the authors' bound
    (nelbo_dtdpm) has it. With the step's own Cov (clipped to 0) the decoder's variance was 0 and L_0
    was astronomical (4.5e11 bits/dim on the bundled model with its NPR head). On a 10-step chain
    the KL terms agree with fixed_small's likewise (its decoder is the respaced chain's own)."""
    from hf_ddpm import variational_bound

    def eps_model(x_t, t):  # any fixed network: here a shrinkage of x_t
        return 0.3 * x_t

    def npr_model(x_t, t):
        return torch.cat([eps_model(x_t, t), torch.zeros_like(x_t)], 1)

    x0 = (
        torch.round(
            (torch.rand((6, 1, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1) * 127.5
        )
        / 127.5
    )
    for steps in (None, 10):
        bounds = {}
        for variance_type, model in (("fixed_small", eps_model), ("npr", npr_model)):
            scheduler = HFDDPMScheduler(
                num_train_timesteps=T, variance_type=variance_type, clip_sample=False
            )
            generator = torch.Generator().manual_seed(1)
            bounds[variance_type] = variational_bound(
                model, scheduler, x0.double(), generator=generator, num_inference_steps=steps
            ).terms_bpd
        first = 0 if steps is None else 1
        torch.testing.assert_close(
            bounds["npr"][:, first:], bounds["fixed_small"][:, first:], rtol=1e-9, atol=0
        )
        assert bounds["npr"][:, 0].max() < 10, bounds["npr"][:, 0]
