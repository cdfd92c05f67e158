"""Fréchet distance against analytic oracles: closed forms between Gaussians, scipy's sqrtm, Monte Carlo."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from hf_ddpm.evaluation.frechet import (
    FeatureStatistics,
    FrechetSqrtError,
    feature_statistics,
    frechet_distance,
    trace_sqrt_product,
)


def _random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def test_diagonal_gaussians_closed_form():
    # commuting covariances: d^2 = |mu1-mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance((mu1, np.diag(a)), (mu2, np.diag(b))) == pytest.approx(
        expected, rel=1e-12
    )


def test_non_commuting_2x2_closed_form():
    # for 2x2 M with non-negative eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    assert trace_sqrt_product(s1, s2) == pytest.approx(tr_sqrt, rel=1e-12)
    mu1, mu2 = np.array([0.3, -0.2]), np.array([-1.0, 0.4])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance((mu1, s1), (mu2, s2)) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_sqrtm_in_higher_dimension():
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(rng, 16, cond=1e3), _random_spd(rng, 16, cond=1e2)
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_covariances_stay_real():
    # n < D: singular covariances, where a general sqrtm of the product is ill-conditioned
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 12)), rng.standard_normal((5, 12))
    with pytest.warns(UserWarning, match="rank at most 4 < 12"):
        sx, sy = feature_statistics(x), feature_statistics(y)
    d = frechet_distance(sx, sy)
    assert np.isfinite(d) and d > 0


def test_empirical_statistics_converge_to_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    s1, s2 = _random_spd(rng, d, cond=5), _random_spd(rng, d, cond=5)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = frechet_distance((mu1, s1), (mu2, s2))
    n = 200_000
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    estimate = frechet_distance(feature_statistics(x), feature_statistics(y))
    # O(D / n) bias plus O(1/sqrt(n)) noise on an O(1) quantity
    assert estimate == pytest.approx(exact, abs=0.02)


def test_set_with_itself_is_zero_and_grows_with_noise():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(400, 8, generator=gen) @ torch.randn(8, 8, generator=gen)
    ref = feature_statistics(feats)
    assert abs(frechet_distance(ref, ref)) < 1e-8
    noise = torch.randn(feats.shape, generator=gen)
    distances = [
        frechet_distance(ref, feature_statistics(feats + s * noise)) for s in (0.1, 0.3, 1, 3)
    ]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0


def test_statistics_are_unbiased_float64_and_round_trip(tmp_path):
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]], dtype=torch.float32)
    stats = feature_statistics(x)
    assert stats.mu.dtype == np.float64 and stats.num_samples == 3
    np.testing.assert_allclose(stats.mu, [2.0, 4.0])
    # hand-computed 1/(n-1) covariance
    np.testing.assert_allclose(stats.sigma, [[4.0, 7.0], [7.0, 13.0]])
    stats.save(tmp_path / "s.npz")
    back = FeatureStatistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.num_samples == 3 and back.dim == 2


def test_too_few_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shape"):
        feature_statistics(np.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_statistics(np.random.default_rng(0).standard_normal((4, 3)))  # n >= D: no warning


def test_not_psd_raises_and_mismatch_raises():
    eye = np.eye(3)
    with pytest.raises(FrechetSqrtError, match="imaginary part"):
        frechet_distance((np.zeros(3), -eye), (np.zeros(3), eye))
    with pytest.raises(ValueError, match="different shapes"):
        frechet_distance((np.zeros(3), eye), (np.zeros(2), np.eye(2)))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance((np.full(3, np.nan), eye), (np.zeros(3), eye))
