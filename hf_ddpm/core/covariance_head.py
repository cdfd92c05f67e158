"""The covariance head of SN-DDPM and NPR-DDPM (Bao et al., "Estimating the Optimal Covariance with Imperfect
Mean in Diffusion Probabilistic Models", ICML 2022, section 4): a per-pixel second moment from the frozen
noise-prediction network's last feature map.

The head is GroupNorm -> SiLU -> 3x3 convolution, zero-initialised, on the input of the UNet's own output norm
(``unet.conv_norm_out``), the same place as the authors' ``norm_out2`` / ``conv_out2`` beside their UNet's
``norm_out`` / ``conv_out``. It outputs, per pixel, either

- SN (eq. 12): h ~ E[eps^2 | x_t], trained with ``||eps^2 - h||^2``, or
- NPR (eq. 14): g ~ E[(eps - eps_theta)^2 | x_t], trained with ``||(eps - eps_theta)^2 - g||^2``, the
  network's error held fixed (no gradient reaches eps_theta).

Its features come from the very UNet call that predicts eps (:func:`unet_features`), so sampling with a head
costs one UNet forward pass per step, as without it.

Remote code: copied into every saved folder (root and ``covariance_head/``), so it imports only torch,
diffusers and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class CovarianceHead(ModelMixin, ConfigMixin):
    """GroupNorm -> SiLU -> zero-initialised 3x3 conv, ``feature_channels`` -> ``out_channels``.

    Args:
        feature_channels: channels of the UNet's last feature map (``unet.conv_norm_out.num_channels``).
        out_channels: channels of the samples (the UNet's ``in_channels``): one second moment per pixel.
        norm_num_groups, norm_eps: the GroupNorm's groups and epsilon; :meth:`for_unet` takes the UNet's own.
        kind: the head variance type it was fitted as ("sn" or "npr"): what its output means, so the only
            variance_type that may read it; None for a head saved before kinds were recorded.
    """

    @register_to_config
    def __init__(
        self,
        feature_channels: int,
        out_channels: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        kind: str | None = None,
    ) -> None:
        super().__init__()
        if kind is not None and kind not in HEAD_TARGETS:
            raise ValueError(f"kind must be one of {', '.join(HEAD_TARGETS)} or None, got {kind!r}")
        self.norm = nn.GroupNorm(norm_num_groups, feature_channels, eps=norm_eps)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(feature_channels, out_channels, kernel_size=3, padding=1)
        # Zero at the start: the first steps of fitting do not depend on a random initial second moment.
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The head's per-pixel second moment, (B, out_channels, H, W), from the features (B, F, H, W)."""
        return self.conv(self.act(self.norm(features)))

    @classmethod
    def for_unet(cls, unet: Any, kind: str | None = None) -> CovarianceHead:
        """A fresh (zero) head shaped for ``unet`` (its last feature map, its norm, its sample channels), to
        be fitted as ``kind``."""
        norm = last_feature_norm(unet)
        return cls(
            feature_channels=norm.num_channels,
            out_channels=unet.config.in_channels,
            norm_num_groups=norm.num_groups,
            norm_eps=norm.eps,
            kind=kind,
        )


def last_feature_norm(unet: Any) -> nn.GroupNorm:
    """The UNet's output GroupNorm, whose input is the last feature map (diffusers' ``UNet2DModel``)."""
    norm = getattr(unet, "conv_norm_out", None)
    if not isinstance(norm, nn.GroupNorm):
        raise ValueError(
            f"a covariance head reads the input of the UNet's conv_norm_out (a GroupNorm, as in diffusers' "
            f"UNet2DModel); {type(unet).__name__} has {type(norm).__name__ if norm is not None else 'none'}"
        )
    return norm


@contextmanager
def unet_features(unet: Any) -> Iterator[list[torch.Tensor]]:
    """Within the block, every call of ``unet`` appends its last feature map (the input of
    ``conv_norm_out``) to the yielded list: the head reads the features of the call that predicted eps."""
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])

    handle = last_feature_norm(unet).register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def eps_and_head(
    unet: Any, head: CovarianceHead, x_t: torch.Tensor, t: torch.Tensor | int, **unet_kwargs: Any
) -> torch.Tensor:
    """The model output of SN / NPR in float32, from one UNet call: the UNet's eps, then ``head``'s
    second moment on that call's last feature map (the 2C channels the scheduler's step takes)."""
    with unet_features(unet) as features:
        eps = unet(x_t, t, **unet_kwargs).sample
    return torch.cat([eps.float(), head(features[-1].to(head.dtype)).float()], dim=1)


def sn_target(eps: torch.Tensor, eps_prediction: torch.Tensor) -> torch.Tensor:
    """SN's regression target (Bao et al. 2022, eq. 12): eps^2, whose conditional mean is E[eps^2 | x_t]."""
    return eps.square()


def npr_target(eps: torch.Tensor, eps_prediction: torch.Tensor) -> torch.Tensor:
    """NPR's regression target (Bao et al. 2022, eq. 14): (eps - eps_theta)^2 with eps_theta held fixed, whose
    conditional mean is E[(eps - eps_theta)^2 | x_t]."""
    return (eps - eps_prediction.detach()).square()


# The head's regression target of each head variance type (names as in variance.HEAD_VARIANCE_TYPES).
HEAD_TARGETS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sn": sn_target,
    "npr": npr_target,
}


def head_loss(
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prediction: torch.Tensor,
    eps: torch.Tensor,
    eps_prediction: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error of the head's ``prediction`` against ``target`` (one of :data:`HEAD_TARGETS`),
    per image (B,)."""
    error = prediction.float() - target(eps.float(), eps_prediction.float())
    return error.square().flatten(1).mean(1)
