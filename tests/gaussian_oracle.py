"""The exact denoiser for Gaussian data x_0 ~ N(m, s^2), an analytic stand-in for a trained network.

With x_t = a x_0 + sigma eps (a^2 = alpha_bar_t, sigma^2 = 1 - alpha_bar_t), (x_0, eps, x_t) is jointly Gaussian:
E[eps | x_t] = sigma (x_t - a m) / (a^2 s^2 + sigma^2) and E[x_0 | x_t] = m + a s^2 (x_t - a m) / (a^2 s^2 + sigma^2).
"""

import numpy as np
import torch


class GaussianOracle:
    def __init__(
        self, mean: float, std: float, alphas_cumprod: np.ndarray, prediction_type: str = "epsilon"
    ):
        self.m, self.s = mean, std
        self.ab = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        self.prediction_type = prediction_type

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t).long().reshape(-1)
        ab = self.ab[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        a, sigma = ab.sqrt(), (1 - ab).sqrt()
        x = x_t.double()
        innovation = (x - a * self.m) / (ab * self.s**2 + 1 - ab)
        eps = sigma * innovation
        x0 = self.m + a * self.s**2 * innovation
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sigma * x0}[
            self.prediction_type
        ]
        return out.to(x_t.dtype)

    def eps_second_moment(self) -> np.ndarray:
        """Gamma_n = E ||E[eps | x_n]||^2 / d = (1 - alpha_bar_n) / (alpha_bar_n s^2 + 1 - alpha_bar_n): the
        conditional mean above has variance sigma^2 / (a^2 s^2 + sigma^2) and mean zero."""
        ab = self.ab.numpy()
        return (1 - ab) / (ab * self.s**2 + 1 - ab)

    def x0_posterior_variance(self) -> np.ndarray:
        """Var[x_0 | x_n] = s^2 sigma^2 / (a^2 s^2 + sigma^2), the same for every x_n (Gaussian data)."""
        ab = self.ab.numpy()
        return self.s**2 * (1 - ab) / (ab * self.s**2 + 1 - ab)


class MixtureOracle:
    """The exact epsilon-predictor for data from a 1-D two-component Gaussian mixture, elementwise.

    x_n | component k ~ N(a mu_k, a^2 s_k^2 + sigma^2), so E[x_0 | x_n] is the responsibility-weighted mean
    of each component's Gaussian posterior mean, and E[eps | x_n] = (x_n - a E[x_0 | x_n]) / sigma. Unlike
    Gaussian data, its reverse kernels are not Gaussian, so the chain's timesteps change its bound.
    """

    def __init__(self, means, stds, weights, alphas_cumprod):
        self.mu = np.asarray(means, dtype=np.float64)
        self.sd = np.asarray(stds, dtype=np.float64)
        self.w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.ab = np.asarray(alphas_cumprod, dtype=np.float64)

    def sample(self, shape, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(
            torch.as_tensor(self.w), int(np.prod(shape)), True, generator=generator
        )
        z = torch.randn(int(np.prod(shape)), generator=generator, dtype=torch.float64)
        mu, sd = torch.as_tensor(self.mu)[k], torch.as_tensor(self.sd)[k]
        return (mu + sd * z).reshape(shape)

    def _x0_mean(self, x: np.ndarray, ab: np.ndarray) -> np.ndarray:
        a, var_noise = np.sqrt(ab)[..., None], (1 - ab)[..., None]
        xk = x[..., None]
        var = a**2 * self.sd**2 + var_noise
        log_r = np.log(self.w) - 0.5 * np.log(var) - 0.5 * (xk - a * self.mu) ** 2 / var
        r = np.exp(log_r - log_r.max(-1, keepdims=True))
        r /= r.sum(-1, keepdims=True)
        post = self.mu + a * self.sd**2 * (xk - a * self.mu) / var
        return (r * post).sum(-1)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t).long().reshape(-1)
        x = x_t.double().numpy()
        ab = self.ab[t.numpy()].reshape(-1, *([1] * (x_t.ndim - 1))) * np.ones_like(x)
        eps = (x - np.sqrt(ab) * self._x0_mean(x, ab)) / np.sqrt(1 - ab)
        return torch.from_numpy(eps).to(x_t.dtype)

    def eps_second_moment(self, order: int = 120) -> np.ndarray:
        """Gamma_n = E[E[eps | x_n]^2] by Gauss-Hermite quadrature over each component of q(x_n)."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(order)
        weights = weights / weights.sum()
        gamma = np.zeros_like(self.ab)
        for mu, sd, w in zip(self.mu, self.sd, self.w):
            a, var_noise = np.sqrt(self.ab)[:, None], (1 - self.ab)[:, None]
            x = a * mu + np.sqrt(a**2 * sd**2 + var_noise) * nodes[None, :]
            ab = np.broadcast_to(self.ab[:, None], x.shape)
            eps = (x - a * self._x0_mean(x, ab)) / np.sqrt(var_noise)
            gamma += w * (eps**2 * weights).sum(1)
        return gamma


class CovarianceHeadOracle(GaussianOracle):
    """The exact eps-predictor of N(m, s^2) data (``std`` may be a per-pixel tensor) followed by the exact
    covariance head's C channels: SN's h = E[eps^2 | x_t] = eps-hat^2 + Var[eps | x_t], or NPR's
    g = E[(eps - eps_theta)^2 | x_t] = Var[eps | x_t] + (eps-hat - eps_theta)^2 for eps_theta = eps-hat +
    ``eps_bias`` (an imperfect mean that NPR corrects and SN does not), with
    Var[eps | x_t] = alpha_bar s^2 / (alpha_bar s^2 + 1 - alpha_bar)."""

    def __init__(self, mean, std, alphas_cumprod, kind: str, eps_bias: float = 0.0):
        super().__init__(mean, std, alphas_cumprod)
        self.kind, self.eps_bias = kind, eps_bias

    def eps_variance(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).long().reshape(-1)
        ab = self.ab[t].reshape(-1, *([1] * (like.ndim - 1)))
        return (ab * self.s**2 / (ab * self.s**2 + 1 - ab)).expand_as(like).double()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        eps_hat = super().__call__(x_t.double(), t)
        eps = eps_hat + self.eps_bias
        variance = self.eps_variance(t, x_t)
        head = eps_hat**2 + variance if self.kind == "sn" else variance + self.eps_bias**2
        return torch.cat([eps, head], 1).to(x_t.dtype)
