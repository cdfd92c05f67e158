"""Exponential moving average of model weights (Ho et al. 2020 sample from the EMA with decay 0.9999).

After update n (counting from 1) the shadow weights become

    shadow <- d_n * shadow + (1 - d_n) * theta,    d_n = min(decay, (1 + n) / (10 + n)) with warm-up,

the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early on the average forgets the
random initialisation quickly instead of dragging it along for ~1/(1 - decay) = 10,000 steps.
"""

from __future__ import annotations

import torch


class EMA:
    """Shadow copy (float32) of a model's floating-point parameters and buffers.

    Args:
        model: the model being trained (its parameter names key the shadow weights).
        decay: the decay once warmed up, in [0, 1).
        warmup: use ``d_n = min(decay, (1 + n) / (10 + n))`` instead of a constant ``decay``.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {
            name: value.detach().clone().float() for name, value in _floating_state(model).items()
        }

    def current_decay(self) -> float:
        """The decay ``d_n`` the next update (number ``num_updates + 1``) will use."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the shadow weights towards ``model``'s current weights by one step."""
        weight = 1.0 - self.current_decay()
        current = _floating_state(model)
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[n] for n in names], [current[n].detach().float() for n in names], weight
        )
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the shadow weights into ``model`` (e.g. a copy used for sampling or saving)."""
        current = _floating_state(model)
        for name, value in self.shadow.items():
            current[name].copy_(value)

    def state_dict(self) -> dict[str, object]:
        """``{"decay", "warmup", "num_updates", "shadow": {name: tensor}}``."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from :meth:`state_dict`; the parameter names must match this model's."""
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing, unexpected = set(self.shadow) - set(shadow), set(shadow) - set(self.shadow)
            raise ValueError(
                f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        wrong = [n for n, v in shadow.items() if tuple(v.shape) != tuple(self.shadow[n].shape)]
        if wrong:
            raise ValueError(f"EMA state does not match the model: shapes differ for {wrong[:5]}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, value in shadow.items():
            self.shadow[name].copy_(value)


def _floating_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Integer buffers (counters) are not averaged; UNet2DModel has none, but a custom model may.
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()}
