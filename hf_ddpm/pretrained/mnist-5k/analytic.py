"""Analytic-DPM (Bao, Li, Zhu & Zhang 2022, arXiv 2201.06503): the optimal reverse variance of a DDPM and
the optimal choice of timesteps, from one statistic per timestep of the trained network.

Notation (our indices): timesteps n = 0..T-1, alpha-bar_n the forward process's cumulative product,
beta-bar_n = 1 - alpha-bar_n, and "n = -1" the data itself (alpha-bar = 1). A step r -> s (s < r) of a
respaced chain has alpha_{r|s} = alpha-bar_r / alpha-bar_s and beta_{r|s} = 1 - alpha_{r|s}.

- Gamma_n = E_q ||eps_theta(x_n, n)||^2 / d, the second moment of the network's epsilon per dimension, taken
  over x_n ~ q(x_n | x_0) and training images x_0 (``hf-ddpm calibrate`` estimates it).
- Theorem 1: the optimal DDPM variance of the step r -> s is
  sigma*^2_{s|r} = beta-tilde_{s|r} + (sqrt(alpha-bar_s) beta_{r|s} / beta-bar_r)^2 * E Var[x_0 | x_r],
  with beta-tilde_{s|r} = beta-bar_s beta_{r|s} / beta-bar_r (the posterior variance of q(x_s | x_r, x_0)) and
  E Var[x_0 | x_r] per dimension = (beta-bar_r / alpha-bar_r) (1 - Gamma_r).
- Theorem 2: 0 <= E Var[x_0 | x_r] <= ((b - a) / 2)^2 for data in [a, b]^d, i.e. [0, 1] for [-1, 1]; the
  estimate is clipped to those bounds, which keeps sigma^2 between beta-tilde and its upper bound.
- Section 4: with the optimal variance the K-step bound's KL term of r -> s is
  (d / 2) log(sigma*^2_{s|r} / beta-tilde_{s|r}), a function of the pair (s, r) alone, so the trajectory that
  minimises the bound is a shortest path, found by dynamic programming in O(K T^2).
"""

from __future__ import annotations

import math

import numpy as np

from .covariance import optimal_step_variance, step_variance_coefficients, x0_covariance

# The paper's last-step correction (its section 6 and the authors' samplers): E|sigma eps| of the last
# noise-adding step is kept within ``pixels`` bins of 8-bit data, 2 for the linear schedule and 1 otherwise.
LINEAR_SCHEDULE_LAST_STEP_PIXELS = 2.0
OTHER_SCHEDULE_LAST_STEP_PIXELS = 1.0


def last_step_pixels(
    clip_last_step: bool, beta_schedule: str, trained_betas: object | None
) -> float | None:
    """The bins the last noise-adding step is capped at (the config's ``analytic_clip_last_step``): 2 for the
    linear-schedule DDPM, 1 otherwise; None when not clipped."""
    if not clip_last_step:
        return None
    if beta_schedule == "linear" and trained_betas is None:
        return LINEAR_SCHEDULE_LAST_STEP_PIXELS
    return OTHER_SCHEDULE_LAST_STEP_PIXELS


def check_eps_second_moment(
    eps_second_moment: object,
    num_train_timesteps: int,
    needed_by: tuple[str, ...] = ("variance_type 'analytic'",),
) -> np.ndarray:
    """Gamma as a float64 array of T finite non-negative numbers, or ValueError saying what needs it (the
    config values ``needed_by``) and how to get it."""
    how = (
        "with hf_ddpm installed, compute it with `hf-ddpm calibrate MODEL --dataset ...`, which writes "
        "eps_second_moment into the model's scheduler_config.json"
    )
    if eps_second_moment is None:
        need = "need" if len(needed_by) > 1 else "needs"
        raise ValueError(f"{' and '.join(needed_by)} {need} eps_second_moment (Gamma_n); {how}")
    try:
        gamma = np.asarray(eps_second_moment, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"eps_second_moment must be a list of {num_train_timesteps} numbers; {how}"
        ) from None
    if gamma.shape != (num_train_timesteps,):
        raise ValueError(
            f"eps_second_moment must hold num_train_timesteps={num_train_timesteps} numbers, got shape "
            f"{gamma.shape}; {how}"
        )
    if not np.all(np.isfinite(gamma)) or np.any(gamma < 0):
        raise ValueError(f"eps_second_moment must be finite and non-negative; {how}")
    return gamma


def expected_x0_variance(alphas_cumprod: np.ndarray, eps_second_moment: np.ndarray) -> np.ndarray:
    """E over the data of Var[x_0 | x_n] per dimension, (beta-bar_n / alpha-bar_n) (1 - Gamma_n) (Theorem 1),
    clipped to [0, 1], the bounds of Theorem 2 for data in [-1, 1]."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    gamma = np.asarray(eps_second_moment, dtype=np.float64)
    # E_x[E[eps^2 | x_n]] = E[eps^2] = 1, so the data's average of SN's h - eps_theta^2 is 1 - Gamma_n.
    return x0_covariance((1.0 - ab) / ab, 1.0 - gamma)


def last_step_max_variance(pixels: float, num_bins: int = 256) -> float:
    """(pixels * bin width * sqrt(pi / 2))^2: the variance at which E|sigma eps| = sigma sqrt(2 / pi) equals
    ``pixels`` bins of width 2 / (num_bins - 1) (the paper's clipping of the last noise-adding step)."""
    return (pixels * 2.0 / (num_bins - 1) * math.sqrt(math.pi / 2.0)) ** 2


def analytic_step_variances(
    alphas_cumprod: np.ndarray,
    eps_second_moment: np.ndarray,
    timesteps: np.ndarray,
    last_step_pixels: float | None = None,
    num_bins: int = 256,
    eta: float = 1.0,
    final_alpha_cumprod: float = 1.0,
) -> np.ndarray:
    """sigma^2 of each step of the chain visiting ``timesteps`` (strictly descending, the last step goes to
    the data, whose alpha-bar is ``final_alpha_cumprod``): Theorem 1's optimal variance with Theorem 2's
    clipping, one value per timestep.

    For the step r -> s: floor + gain^2 clip(E Var[x_0 | x_r]) (:func:`.covariance.optimal_step_variance`),
    with DDIM's (floor, gain) of that ``eta`` (:func:`.covariance.step_variance_coefficients`); eta = 1 is
    DDPM, beta-tilde_{s|r} + (sqrt(alpha-bar_s) beta_{r|s} / beta-bar_r)^2 clip(E Var[x_0 | x_r]). The last
    step (r -> data) has floor 0 and gain 1, so its variance is clip(E Var[x_0 | x_r]), the optimal Gaussian
    decoder. ``last_step_pixels`` (None: off) caps the variance of the last step that adds noise, the one
    into the chain's smallest timestep, at :func:`last_step_max_variance`.
    """
    ab_all = np.asarray(alphas_cumprod, dtype=np.float64)
    ts = np.asarray(timesteps, dtype=np.int64)
    ab_r = ab_all[ts]
    ab_s = np.append(ab_all[ts[1:]], final_alpha_cumprod)
    floor, gain = step_variance_coefficients(ab_r, ab_s, eta)
    x0_variance = expected_x0_variance(ab_r, np.asarray(eps_second_moment, dtype=np.float64)[ts])
    variances = optimal_step_variance(floor, gain, x0_variance)
    if last_step_pixels is not None and len(ts) > 1:
        variances[-2] = min(variances[-2], last_step_max_variance(last_step_pixels, num_bins))
    return variances


def step_kl_costs(alphas_cumprod: np.ndarray, eps_second_moment: np.ndarray) -> np.ndarray:
    """The K-step bound's KL term of each step r -> s under the analytic variance, in nats per dimension:
    a (T, T) array, entry [s, r] for 0 <= s < r, +inf elsewhere (the paper's section 4).

    With sigma^2 = beta-tilde + c^2 v (c the x_0-coefficient, v = clip(E Var[x_0 | x_r])) and the squared mean
    error estimated by c^2 v, the Gaussian KL is 0.5 log(sigma^2 / beta-tilde), and
    c^2 / beta-tilde_{s|r} = (alpha-bar_s - alpha-bar_r) / (beta-bar_r beta-bar_s), so
    cost[s, r] = 0.5 log1p((alpha-bar_s - alpha-bar_r) v_r / (beta-bar_r beta-bar_s)).
    """
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    v = expected_x0_variance(ab, eps_second_moment)
    bb = 1.0 - ab
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (ab[:, None] - ab[None, :]) * v[None, :] / (bb[None, :] * bb[:, None])
        costs = 0.5 * np.log1p(ratio)
    s, r = np.indices(costs.shape)
    costs[s >= r] = np.inf
    return costs


def trajectory_cost(costs: np.ndarray, timesteps: np.ndarray) -> float:
    """The sum of ``costs[s, r]`` over the consecutive steps r -> s of ``timesteps`` (either order)."""
    ts = np.sort(np.asarray(timesteps, dtype=np.int64))
    return float(costs[ts[:-1], ts[1:]].sum())


def optimal_trajectory(costs: np.ndarray, num_steps: int) -> np.ndarray:
    """The ``num_steps`` timesteps 0 = t_1 < ... < t_K = T - 1 minimising the sum of ``costs[t_k, t_{k+1}]``:
    the paper's dynamic program (section 4), O(K T^2) and vectorised over (s, r). Ascending.

    Both ends are fixed as in the paper: the chain starts at the last timestep, where the prior N(0, I) is
    closest to q(x_T | x_0), and its decoder starts at timestep 0. ``num_steps=1`` gives [T - 1]."""
    num_timesteps = costs.shape[0]
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps must be between 1 and num_train_timesteps={num_timesteps}, got {num_steps}"
        )
    if num_steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int64)
    if num_steps == num_timesteps:
        return np.arange(num_timesteps, dtype=np.int64)
    # best[n]: the least cost of a chain of k timesteps from 0 to n; parents[k][n] its previous timestep.
    best = np.full(num_timesteps, np.inf)
    best[0] = 0.0
    parents = np.zeros((num_steps, num_timesteps), dtype=np.int64)
    for k in range(1, num_steps):
        candidates = best[:, None] + costs
        parents[k] = np.argmin(candidates, axis=0)
        best = candidates[parents[k], np.arange(num_timesteps)]
    path = [num_timesteps - 1]
    for k in range(num_steps - 1, 0, -1):
        path.append(int(parents[k][path[-1]]))
    return np.array(path[::-1], dtype=np.int64)


def optimal_timesteps(
    alphas_cumprod: np.ndarray | list[float],
    eps_second_moment: np.ndarray | list[float],
    num_inference_steps: int,
) -> list[int]:
    """The K timesteps that minimise the K-step bound under the analytic variance, descending, as diffusers
    expects: pass them as ``scheduler.set_timesteps(timesteps=...)`` to any scheduler that accepts custom
    timesteps (``alphas_cumprod`` is the scheduler's, ``eps_second_moment`` the model's Gamma)."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    gamma = check_eps_second_moment(eps_second_moment, len(ab))
    steps = int(num_inference_steps)
    costs = trajectory_costs(ab, gamma)
    path = optimal_trajectory(costs, steps)
    if not np.isfinite(trajectory_cost(costs, path)):
        # So many steps that some must start past the bound: then all costs count, clipped as they are.
        path = optimal_trajectory(step_kl_costs(ab, gamma), steps)
    return path[::-1].tolist()


def trajectory_costs(alphas_cumprod: np.ndarray, eps_second_moment: np.ndarray) -> np.ndarray:
    """:func:`step_kl_costs` as the dynamic program uses them, without steps from timesteps whose Gamma_n
    estimate is >= 1.

    There E Var[x_0 | x_n] would be negative: Theorem 2's clipping sets it to 0, which makes every step from
    that timestep look free, and the program would jump from it to the data in one step. Such an estimate is
    Monte Carlo noise near n = T, where 1 - Gamma_n is of order alpha-bar_n, so no step starts there (the
    authors likewise leave these timesteps out of their program). The chain's first timestep T - 1 must be
    kept; if its estimate is past the bound, its steps are costed with E Var at its upper bound instead."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    gamma = np.array(eps_second_moment, dtype=np.float64)
    past_bound = gamma >= 1.0
    gamma[-1] = 0.0 if past_bound[-1] else gamma[-1]
    costs = step_kl_costs(ab, gamma)
    costs[:, past_bound[:-1].nonzero()[0]] = np.inf
    return costs
