"""Fréchet distance between two Gaussians fitted to feature sets (FID, FD_DINOv2).

For N(mu_1, Sigma_1) and N(mu_2, Sigma_2) the squared 2-Wasserstein (Fréchet) distance is

    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1) + tr(Sigma_2) - 2 tr((Sigma_1 Sigma_2)^{1/2})

(Dowson & Landau 1982; Heusel et al. 2017, eq. 6). Sigma_1 Sigma_2 is not symmetric, so its square root is
taken through the similar symmetric matrix Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2}: both have the same eigenvalues,
hence tr((Sigma_1 Sigma_2)^{1/2}) = sum_i sqrt(lambda_i(Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2})). Two symmetric
eigen-decompositions in float64 are stable where a general ``sqrtm`` of a near-singular product is not.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hf_ddpm.core.saving import write_atomically

__all__ = [
    "FeatureStatistics",
    "FrechetSqrtError",
    "feature_statistics",
    "frechet_distance",
    "trace_sqrt_product",
]


class FrechetSqrtError(ValueError):
    """The matrix square root in the Fréchet distance has a large imaginary part (inputs not PSD)."""


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean and unbiased covariance of a feature set, in float64; what a Fréchet distance needs.

    Attributes:
        mu: mean feature, shape (D,).
        sigma: covariance with the 1/(n-1) normalisation, shape (D, D).
        num_samples: n, the number of feature vectors the statistics were estimated from.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mu.shape[0])

    def save(self, path: str | Path) -> None:
        """Write the statistics to ``path`` (an ``.npz`` file) atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mu, sigma=self.sigma, num_samples=np.int64(self.num_samples))
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureStatistics:
        """Read statistics written by :meth:`save`."""
        with np.load(Path(path)) as f:
            return cls(mu=f["mu"], sigma=f["sigma"], num_samples=int(f["num_samples"]))


def feature_statistics(features: torch.Tensor | np.ndarray) -> FeatureStatistics:
    """Fit a Gaussian (mean, unbiased covariance) to ``features`` of shape (n, D), in float64.

    Raises:
        ValueError: if ``features`` is not 2-D or has fewer than 2 rows (no covariance exists).

    Warns:
        UserWarning: if n < D: the covariance then has rank at most n - 1 < D, and the Fréchet distance is
            biased (upwards, by an amount that shrinks with n), so only runs with equal n are comparable.
    """
    x = features.detach().cpu().double().numpy() if torch.is_tensor(features) else features
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must have shape (num_samples, dim); got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ValueError(
            f"a Fréchet distance needs at least 2 samples to estimate a covariance; got {n}"
        )
    if n < d:
        warnings.warn(
            f"Fréchet statistics from {n} samples of {d}-dimensional features: the covariance has rank "
            f"at most {n - 1} < {d}, so the distance is biased (upwards; the bias shrinks as the sample "
            f"count grows). Use at least {d} samples (papers use 50,000) and compare only runs with the "
            "same sample count.",
            UserWarning,
            stacklevel=2,
        )
    return FeatureStatistics(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), num_samples=n)


def _symmetric_eig(matrix: np.ndarray, name: str, imag_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix, checking the imaginary part its square root would have.

    A negative eigenvalue lambda gives sqrt(lambda) the imaginary part sqrt(|lambda|); measured relative to
    sqrt(lambda_max), round-off leaves it tiny, while a matrix that is not a covariance makes it large.
    """
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    largest = max(float(np.abs(eigvals).max()), np.finfo(np.float64).tiny)
    imaginary = float(np.sqrt(max(-eigvals.min(), 0.0) / largest))
    if imaginary > imag_tol:
        raise FrechetSqrtError(
            f"the square root of {name} has a relative imaginary part {imaginary:.3g} > imag_tol={imag_tol}: "
            "the covariances are not positive semi-definite (non-finite or corrupted features?)"
        )
    return np.clip(eigvals, 0.0, None), eigvecs


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, imag_tol: float = 1e-3) -> float:
    """tr((Sigma_1 Sigma_2)^{1/2}) for covariance matrices, via Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2}.

    Eigenvalues that round-off pushes slightly below zero would give the square root an imaginary part; they
    are clipped to zero. If one is large, the inputs are not covariance matrices and the result is meaningless.

    Args:
        sigma1: symmetric positive semi-definite (D, D) matrix.
        sigma2: symmetric positive semi-definite (D, D) matrix.
        imag_tol: largest allowed imaginary part of a square root, relative to its largest real part.

    Raises:
        FrechetSqrtError: when that imaginary part exceeds ``imag_tol``.
    """
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    eigvals1, eigvecs1 = _symmetric_eig(s1, "sigma1", imag_tol)
    _symmetric_eig(s2, "sigma2", imag_tol)
    root1 = (eigvecs1 * np.sqrt(eigvals1)) @ eigvecs1.T
    product_eigvals, _ = _symmetric_eig(root1 @ s2 @ root1, "sigma1 sigma2", imag_tol)
    return float(np.sqrt(product_eigvals).sum())


def frechet_distance(
    stats1: FeatureStatistics | tuple[np.ndarray, np.ndarray],
    stats2: FeatureStatistics | tuple[np.ndarray, np.ndarray],
    imag_tol: float = 1e-3,
) -> float:
    """Squared Fréchet distance ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) (Heusel et al. eq. 6).

    Args:
        stats1, stats2: :class:`FeatureStatistics` or ``(mu, sigma)`` pairs of the same dimension.
        imag_tol: see :func:`trace_sqrt_product`.

    Raises:
        ValueError: on mismatched shapes or non-finite statistics.
        FrechetSqrtError: when the covariances are far from positive semi-definite.
    """
    mu1, sigma1 = _as_pair(stats1)
    mu2, sigma2 = _as_pair(stats2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics have different shapes: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape} (features from different extractors?)"
        )
    if sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"sigma must be (D, D) for mu of shape (D,); got {sigma1.shape}")
    for name, arr in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has non-finite entries")
    diff = mu1 - mu2
    covmean_trace = trace_sqrt_product(sigma1, sigma2, imag_tol=imag_tol)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * covmean_trace)


def _as_pair(
    stats: FeatureStatistics | tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(stats, FeatureStatistics):
        mu, sigma = stats.mu, stats.sigma
    else:
        mu, sigma = stats
    return np.asarray(mu, dtype=np.float64), np.atleast_2d(np.asarray(sigma, dtype=np.float64))
