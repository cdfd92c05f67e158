"""Timestep samplers for training: uniform, and the importance sampler of Nichol & Dhariwal 2021 (eq. 18).

L_vlb = E_t[L_t] has a much noisier gradient under uniform t than L_simple. Sampling t with probability
p_t proportional to sqrt(E[L_t^2]) and weighting each term by 1 / (T p_t) keeps the estimate unbiased while
cutting its variance.
"""

from __future__ import annotations

import numpy as np
import torch


class UniformSampler:
    """t ~ U{0, ..., T-1}, weight 1."""

    def __init__(self, num_timesteps: int) -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weights): timesteps (B,) long and importance weights 1 / (T p_t) (B,) float32."""
        probs = torch.from_numpy(self.probabilities())
        t = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * probs[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses; a uniform sampler has nothing to learn."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentResampler(UniformSampler):
    """p_t proportional to sqrt(mean of the last ``history_per_term`` L_t^2), mixed with ``uniform_prob`` of
    the uniform distribution; uniform until every t has a full history (Nichol & Dhariwal, section 3.3).

    In multi-process training, pass the losses gathered from every rank to ``update`` so all ranks keep the
    same history and sample from the same distribution.
    """

    def __init__(
        self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001
    ) -> None:
        super().__init__(num_timesteps)
        if history_per_term < 1:
            raise ValueError(f"history_per_term must be >= 1, got {history_per_term}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self._counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self._counts == self.history_per_term).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return super().probabilities()
        weights = np.sqrt(np.mean(self._history**2, axis=-1))
        weights = weights / weights.sum()
        return weights * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self._counts[step] == self.history_per_term:
                self._history[step, :-1] = self._history[step, 1:]
                self._history[step, -1] = loss
            else:
                self._history[step, self._counts[step]] = loss
                self._counts[step] += 1

    def state_dict(self) -> dict:
        return {"history": self._history.copy(), "counts": self._counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self._history = np.asarray(state["history"], dtype=np.float64).copy()
        self._counts = np.asarray(state["counts"], dtype=np.int64).copy()
