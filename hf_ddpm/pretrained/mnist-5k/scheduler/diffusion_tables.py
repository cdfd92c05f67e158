"""Every schedule quantity DDPM needs, derived once from alpha_bar in float64.

Notation of Ho et al. 2020: alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s. The same tables serve a
respaced chain (Nichol & Dhariwal 2021, section 4): keeping timesteps S_1 < ... < S_K gives a K-step chain with
effective betas 1 - alpha_bar_{S_k} / alpha_bar_{S_{k-1}}.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch


def posterior_variance_between(alpha_bar_t: np.ndarray, alpha_bar_s: np.ndarray) -> np.ndarray:
    """beta-tilde_{s|t} = beta-bar_s (1 - alpha-bar_t / alpha-bar_s) / beta-bar_t, the variance of
    q(x_s | x_t, x_0) for s < t: Ho et al. eq. 7 for any pair of steps (s = t - 1 is eq. 7 itself, a
    respaced chain's step the general case). Works on numpy arrays and torch tensors alike."""
    return (1.0 - alpha_bar_s) * (1.0 - alpha_bar_t / alpha_bar_s) / (1.0 - alpha_bar_t)


@dataclass(frozen=True)
class DiffusionTables:
    """Per-timestep constants of one diffusion chain, indexed 0..T-1 (index t is the paper's t + 1)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    log_betas: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: np.ndarray | torch.Tensor) -> DiffusionTables:
        return cls.from_alphas_cumprod(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: np.ndarray | torch.Tensor) -> DiffusionTables:
        """Tables of the chain whose cumulative products are ``alphas_cumprod`` (strictly decreasing)."""
        ab = np.asarray(alphas_cumprod, dtype=np.float64)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        betas = 1.0 - ab / ab_prev
        with np.errstate(divide="ignore"):
            posterior_variance = posterior_variance_between(ab, ab_prev)
            # beta-tilde_1 = 0; its log is clipped to beta-tilde_2, as improved-diffusion does, so that
            # learned_range interpolation and the t = 0 decoder stay finite.
            clipped = posterior_variance[1] if len(ab) > 1 else betas[0]
            posterior_log_variance_clipped = np.log(
                np.concatenate([[clipped], posterior_variance[1:]])
            )
            tables = dict(
                betas=betas,
                alphas_cumprod=ab,
                sqrt_alphas_cumprod=np.sqrt(ab),
                sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ab),
                log_one_minus_alphas_cumprod=np.log(1.0 - ab),
                log_betas=np.log(betas),
                posterior_variance=posterior_variance,
                posterior_log_variance_clipped=posterior_log_variance_clipped,
                # Ho et al. eq. 7: mu-tilde_t = coef1 * x_0 + coef2 * x_t.
                posterior_mean_coef1=betas * np.sqrt(ab_prev) / (1.0 - ab),
                posterior_mean_coef2=(1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab),
            )
        return cls(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tables.items()})

    def to(self, device: torch.device | str | None) -> DiffusionTables:
        """A copy on ``device``; float64 stays float64 except where the device has none (MPS)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                for f in dataclasses.fields(self)
            },
        )


def extract(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] cast to ``like``'s dtype and shaped (B, 1, ..., 1) to broadcast over ``like``."""
    values = table.to(like.device)[t.to(like.device)].to(like.dtype)
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def check_num_inference_steps(
    num_inference_steps: int, num_train_timesteps: int, name: str = "num_inference_steps"
) -> None:
    """A respaced chain keeps 1..T of the T timesteps: ValueError otherwise, naming the option ``name``
    as the caller's user spells it (``--num-inference-steps`` on the command line)."""
    if (
        isinstance(num_inference_steps, bool)
        or not isinstance(num_inference_steps, int)
        or not 1 <= num_inference_steps <= num_train_timesteps
    ):
        raise ValueError(
            f"{name} must be in 1..{num_train_timesteps} (the model's num_train_timesteps), got "
            f"{num_inference_steps!r}"
        )
