"""The exact denoiser for Gaussian data x_0 ~ N(m, s^2), an analytic stand-in for a trained network.

With x_t = a x_0 + sigma eps (a^2 = alpha_bar_t, sigma^2 = 1 - alpha_bar_t), (x_0, eps, x_t) is jointly Gaussian:
E[eps | x_t] = sigma (x_t - a m) / (a^2 s^2 + sigma^2) and E[x_0 | x_t] = m + a s^2 (x_t - a m) / (a^2 s^2 + sigma^2).
"""

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn


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


# T <= sqrt(FEATURE_BOUND) in FeatureOracleUNet's features: SN's eps-hat^2 + Var exceeds 8 with
# probability ~0.5% for s = 1, clipped in the features only.
FEATURE_BOUND = 64.0


class FeatureOracleUNet(ModelMixin, ConfigMixin):
    """A UNet stand-in for Gaussian images x_0 ~ N(m, s^2) per pixel, (m, s) = (``means[0]``, ``stds[0]``)
    on the left half and (``means[1]``, ``stds[1]``) on the right, on Ho et al.'s linear schedule of
    ``num_train_timesteps`` steps: it returns the exact eps-hat, and its last feature map (the input of its
    ``conv_norm_out`` GroupNorm, where a covariance head reads) carries ``kind``'s exact head target T
    (SN: E[eps^2 | x_t] = eps-hat^2 + Var[eps | x_t]; NPR: Var[eps | x_t]) as [T, -T, U, -U] with
    U = sqrt(FEATURE_BOUND - T^2). One GroupNorm group over those has mean 0 and variance
    FEATURE_BOUND / 2 whatever the input, and SiLU(z) - SiLU(-z) = z, so a head can represent T exactly
    (:meth:`exact_head`): what a fitted head learns depends only on its regression targets, the features
    of the right call and the fit. ``rows`` counts the images of its forward passes."""

    @register_to_config
    def __init__(
        self,
        kind: str = "sn",
        means: tuple = (0.0, 0.0),
        stds: tuple = (1.0, 0.05),
        num_train_timesteps: int = 100,
        in_channels: int = 1,
        out_channels: int = 1,
        sample_size: int = 8,
    ) -> None:
        from hf_ddpm import HFDDPMScheduler

        super().__init__()
        self.conv_norm_out = nn.GroupNorm(1, 4, eps=1e-12)
        ab = HFDDPMScheduler(num_train_timesteps=num_train_timesteps).alphas_cumprod
        self.register_buffer("alphas_cumprod", ab.double())
        self.rows = 0

    def pixel_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, s), each (1, 1, size, size) in float64."""
        size = self.config.sample_size
        m = torch.full((1, 1, size, size), float(self.config.means[1]), dtype=torch.float64)
        s = torch.full((1, 1, size, size), float(self.config.stds[1]), dtype=torch.float64)
        m[..., : size // 2] = float(self.config.means[0])
        s[..., : size // 2] = float(self.config.stds[0])
        return m, s

    def exact_moments(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps-hat, Var[eps | x_t]) per pixel in float64, at the timesteps ``t`` (one per sample)."""
        t = torch.as_tensor(t).long().reshape(-1)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        m, s = self.pixel_moments()
        denominator = ab * s**2 + 1 - ab
        eps_hat = (1 - ab).sqrt() * (x_t.double() - ab.sqrt() * m) / denominator
        return eps_hat, (ab * s**2 / denominator).expand_as(eps_hat)

    def forward(self, x_t, t, class_labels=None):
        self.rows += x_t.shape[0]
        eps_hat, variance = self.exact_moments(x_t, t)
        target = eps_hat**2 + variance if self.config.kind == "sn" else variance
        target = target.clamp(max=FEATURE_BOUND**0.5)
        other = (FEATURE_BOUND - target**2).clamp(min=0).sqrt()
        self.conv_norm_out(torch.cat([target, -target, other, -other], 1).float())
        return UNet2DOutput(sample=eps_hat.to(x_t.dtype))

    def exact_head(self):
        """The covariance head whose output is the target the features carry (up to float32)."""
        from hf_ddpm.core.covariance_head import CovarianceHead

        head = CovarianceHead(feature_channels=4, out_channels=1, norm_num_groups=1, norm_eps=1e-12)
        with torch.no_grad():
            head.conv.weight[0, :2, 1, 1] = torch.tensor([1.0, -1.0]) * (FEATURE_BOUND / 2) ** 0.5
        return head
