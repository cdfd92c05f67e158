"""Noise schedules beta_1..beta_T, all computed in float64.

Ho et al. 2020 use linear betas from 1e-4 to 0.02 over T = 1000; Nichol & Dhariwal 2021 (eq. 17) the cosine
schedule. The names and arguments follow diffusers' ``DDPMScheduler`` config so configs move between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .diffusion_tables import check_num_inference_steps

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


def _linear(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def _scaled_linear(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    # Linear in sqrt(beta): the latent-diffusion schedule.
    return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


def _sigmoid(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    x = np.linspace(-6.0, 6.0, num_steps, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def betas_from_alpha_bar(
    alpha_bar: Callable[[float], float], num_steps: int, max_beta: float = 0.999
) -> np.ndarray:
    """beta_t = min(1 - alpha_bar(t / T) / alpha_bar((t - 1) / T), max_beta): the betas whose cumulative
    product follows a continuous alpha_bar on [0, 1] (Nichol & Dhariwal 2021, section 3.2)."""
    grid = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    values = np.array([alpha_bar(s) for s in grid], dtype=np.float64)
    return np.minimum(1.0 - values[1:] / values[:-1], max_beta)


def cosine_alpha_bar(s: float, offset: float = 0.008) -> float:
    """alpha_bar(t) = cos^2(((t + s) / (1 + s)) * pi / 2), Nichol & Dhariwal 2021, eq. 17 (up to f(0))."""
    return math.cos((s + offset) / (1.0 + offset) * math.pi / 2.0) ** 2


def _laplace_alpha_bar(s: float) -> float:
    lmb = -0.5 * math.copysign(1.0, 0.5 - s) * math.log(1.0 - 2.0 * abs(0.5 - s) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1.0 + snr))


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 while alpha_bar_1 is kept
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1)."""
    sqrt_alpha_bar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_alpha_bar[0], sqrt_alpha_bar[-1]
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
    scale_linear_betas_by_timesteps: bool = False,
) -> np.ndarray:
    """The float64 betas of a named schedule.

    ``scale_linear_betas_by_timesteps`` multiplies beta_start and beta_end by 1000 / T, as improved-diffusion
    does, so that a linear schedule with T != 1000 keeps the same overall noise level as Ho et al.'s T = 1000.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas must be a 1-D sequence of num_train_timesteps={num_train_timesteps} values, "
                f"got shape {betas.shape}"
            )
    else:
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"Unknown beta_schedule {beta_schedule!r}; allowed values: {', '.join(BETA_SCHEDULES)}"
            )
        if scale_linear_betas_by_timesteps:
            scale = 1000.0 / num_train_timesteps
            beta_start, beta_end = beta_start * scale, beta_end * scale
        if beta_schedule == "linear":
            betas = _linear(num_train_timesteps, beta_start, beta_end)
            if scale_linear_betas_by_timesteps:
                # Below T = 50 the scaled beta_end reaches 1 (alpha_bar_T = 0); cap it like the cosine schedule.
                betas = np.minimum(betas, 0.999)
        elif beta_schedule == "scaled_linear":
            betas = _scaled_linear(num_train_timesteps, beta_start, beta_end)
        elif beta_schedule == "sigmoid":
            betas = _sigmoid(num_train_timesteps, beta_start, beta_end)
        elif beta_schedule == "squaredcos_cap_v2":
            betas = betas_from_alpha_bar(cosine_alpha_bar, num_train_timesteps)
        else:
            betas = betas_from_alpha_bar(_laplace_alpha_bar, num_train_timesteps)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    if not (np.all(betas > 0) and np.all(betas <= 1)):
        raise ValueError("betas must lie in (0, 1]; check beta_start, beta_end and trained_betas")
    return betas


# How set_timesteps picks K of the T timesteps (diffusers' names); "optimal" is Analytic-DPM's (section 4),
# which needs the model's eps_second_moment and so is resolved by the schedulers.
SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(
    spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0
) -> np.ndarray:
    """K descending timesteps of [0, T) by diffusers' rules (Lin et al. 2024, Table 2): "leading" every
    T // K from 0 plus ``steps_offset``, "trailing" every T / K ending at T - 1, "linspace" K evenly
    rounded points of [0, T - 1]. ValueError for K outside [1, T] or an offset past T."""
    n, num_train = int(num_inference_steps), num_train_timesteps
    check_num_inference_steps(n, num_train)
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, n) * (num_train // n)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(num_train, 0, -num_train / n)).astype(np.int64) - 1
    else:
        raise ValueError(
            f"Unknown timestep_spacing {spacing!r}; allowed values: {', '.join(SPACINGS)}"
        )
    if ts[0] >= num_train:
        raise ValueError(
            f"steps_offset={steps_offset} pushes timestep {ts[0]} past num_train_timesteps={num_train}"
        )
    return np.ascontiguousarray(ts)


def checked_custom_timesteps(timesteps: Sequence[int], num_train_timesteps: int) -> np.ndarray:
    """Custom ``timesteps`` as an int64 array, or ValueError unless they are strictly descending in [0, T)."""
    ts = np.asarray([int(t) for t in timesteps], dtype=np.int64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError("timesteps must be a non-empty list of integers")
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"timesteps must be strictly descending, got {ts.tolist()}")
    if ts[0] >= num_train_timesteps or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {ts.tolist()}")
    return ts
