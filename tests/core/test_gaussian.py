"""The Gaussian building blocks against independent computations: torch.distributions, Monte Carlo,
scipy, and a latent-variable model whose log-likelihood is exact."""

import math

import pytest
import torch
from scipy.stats import norm

from hf_ddpm.core.gaussian import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
    reparameterize,
    standard_normal_cdf,
)
from hf_ddpm.evaluation.elbo import gaussian_elbo


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _random_gaussians(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * scale for scale in (1.0, 0.7, 1.0, 0.7)]


def test_normal_kl_matches_torch_distributions():
    m1, lv1, m2, lv2 = _random_gaussians()
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)),
        torch.distributions.Normal(m2, torch.exp(0.5 * lv2)),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)


def test_normal_kl_matches_monte_carlo():
    m1, lv1, m2, lv2 = (torch.tensor(v) for v in (0.3, -0.4, -0.2, 0.5))
    g = torch.Generator().manual_seed(1)
    x = m1 + torch.exp(0.5 * lv1) * torch.randn(400_000, generator=g)
    log_q = gaussian_log_likelihood(x, m1, 0.5 * lv1)
    log_p = gaussian_log_likelihood(x, m2, 0.5 * lv2)
    mc = (log_q - log_p).mean()
    stderr = (log_q - log_p).std() / math.sqrt(x.numel())
    assert abs(normal_kl(m1, lv1, m2, lv2) - mc) < 4 * stderr


def test_normal_kl_is_nonnegative_and_zero_only_for_equal_gaussians():
    m1, lv1, m2, lv2 = _random_gaussians(1000, seed=2)
    assert (normal_kl(m1, lv1, m2, lv2) >= 0).all()
    assert torch.equal(normal_kl(m1, lv1, m1, lv1), torch.zeros_like(m1))
    assert (normal_kl(m1, lv1, m1 + 1e-3, lv1) > 0).all()
    assert (normal_kl(m1, lv1, m1, lv1 + 1e-3) > 0).all()


def test_normal_kl_accepts_python_floats():
    assert normal_kl(torch.tensor([1.0]), 0.0, 0.0, 0.0).item() == pytest.approx(0.5)


def test_standard_normal_cdf_matches_scipy():
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(
        standard_normal_cdf(x), torch.from_numpy(norm.cdf(x.numpy())), rtol=1e-12, atol=1e-15
    )


def test_gaussian_log_likelihood_matches_scipy():
    x, mean, log_scale = torch.linspace(-3, 3, 50), torch.tensor(0.4), torch.tensor(-0.3)
    expected = norm.logpdf(x.numpy(), loc=0.4, scale=math.exp(-0.3))
    torch.testing.assert_close(
        gaussian_log_likelihood(x, mean, log_scale), torch.from_numpy(expected)
    )


@pytest.mark.parametrize("num_bins", [256, 17, 2])
@pytest.mark.parametrize(
    "mean,log_scale", [(0.0, -1.0), (0.37, -4.0), (-0.9, 0.5), (1.2, -2.0), (0.0, -9.0)]
)
def test_discretized_likelihood_sums_to_one_over_all_bins(num_bins, mean, log_scale):
    levels = torch.linspace(-1, 1, num_bins)
    log_p = discretized_gaussian_log_likelihood(
        levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale), num_bins=num_bins
    )
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_likelihood_matches_scipy_bin_masses():
    num_bins, mean, scale = 17, 0.1, 0.3
    levels = torch.linspace(-1, 1, num_bins)
    half = 1.0 / (num_bins - 1)
    upper = norm.cdf((levels.numpy() + half - mean) / scale)
    lower = norm.cdf((levels.numpy() - half - mean) / scale)
    upper[-1], lower[0] = 1.0, 0.0  # the edge bins run to +-inf
    expected = torch.log(torch.from_numpy(upper - lower))
    got = discretized_gaussian_log_likelihood(
        levels,
        torch.full_like(levels, mean),
        torch.full_like(levels, math.log(scale)),
        num_bins=num_bins,
    )
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_discretized_likelihood_far_tail_is_finite_and_close_to_density():
    x, mean, log_scale = torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([math.log(0.01)])
    got = discretized_gaussian_log_likelihood(x, mean, log_scale)
    expected = norm.logpdf(0.0, 0.5, 0.01) + math.log(2 / 255)
    assert torch.isfinite(got).all()
    assert got.item() == pytest.approx(expected, rel=1e-3)


def test_discretized_likelihood_accepts_a_python_float_log_scale():
    x, mean = torch.linspace(-1, 1, 17), torch.zeros(17)
    torch.testing.assert_close(
        discretized_gaussian_log_likelihood(x, mean, -1.0, num_bins=17),
        discretized_gaussian_log_likelihood(x, mean, torch.full((17,), -1.0), num_bins=17),
    )


def test_discretized_likelihood_rejects_fewer_than_two_bins():
    with pytest.raises(ValueError, match="num_bins"):
        discretized_gaussian_log_likelihood(
            torch.zeros(1), torch.zeros(1), torch.zeros(1), num_bins=1
        )


def test_reparameterize_has_the_requested_moments():
    g = torch.Generator().manual_seed(3)
    z = reparameterize(
        torch.tensor(1.5), torch.tensor(math.log(0.25)), torch.randn(200_000, generator=g)
    )
    assert z.mean().item() == pytest.approx(1.5, abs=0.005)
    assert z.std().item() == pytest.approx(0.5, abs=0.005)


# A linear Gaussian latent-variable model: z ~ N(0, 1), x | z ~ N(w z + b, sigma^2). Its marginal
# log p(x) = log N(x; b, w^2 + sigma^2) and its posterior p(z | x) are exact, so Jensen's gap can be measured.
W, B, SIGMA = 1.7, -0.4, 0.6


def _log_p_x(x):
    return torch.distributions.Normal(B, math.sqrt(W**2 + SIGMA**2)).log_prob(x)


def _true_posterior(x):
    var = 1.0 / (1.0 + W**2 / SIGMA**2)
    return var * W * (x - B) / SIGMA**2, torch.full_like(x, math.log(var))


def _elbo(x, q_mean, q_log_var, num_samples=400_000):
    def log_likelihood(z):  # z: (S, B, 1)
        return gaussian_log_likelihood(
            x[None, :, None], W * z + B, torch.tensor(math.log(SIGMA))
        ).sum(-1)

    g = torch.Generator().manual_seed(4)
    return gaussian_elbo(
        log_likelihood, q_mean[:, None], q_log_var[:, None], num_samples=num_samples, generator=g
    )


def test_elbo_equals_log_likelihood_at_the_true_posterior():
    x = torch.tensor([-2.0, 0.0, 0.7, 3.1])
    elbo = _elbo(x, *_true_posterior(x))
    torch.testing.assert_close(elbo, _log_p_x(x), rtol=0, atol=0.01)


def test_elbo_is_below_log_likelihood_for_any_other_q():
    x = torch.tensor([-2.0, 0.0, 0.7, 3.1])
    mean, log_var = _true_posterior(x)
    for q_mean, q_log_var in [
        (mean + 0.5, log_var),
        (mean, log_var + 1.0),
        (torch.zeros_like(x), torch.zeros_like(x)),
    ]:
        elbo = _elbo(x, q_mean, q_log_var)
        # The gap is exactly KL(q || p(z|x)) (the closed form, independent of the MC estimate).
        gap = normal_kl(q_mean, q_log_var, mean, log_var)
        assert (elbo < _log_p_x(x)).all()
        torch.testing.assert_close(_log_p_x(x) - elbo, gap, rtol=0.01, atol=0.01)
