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
