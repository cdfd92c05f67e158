"""UNet2DModel configurations: the paper's CIFAR-10 network, smaller presets, or any JSON config.

``ddpm-cifar10`` is Ho et al. (2020)'s 35.7M-parameter network (appendix B): base width 128, channel
multipliers (1, 2, 2, 2), two residual blocks per resolution, single-head self-attention at the 16x16
resolution (and in the middle block), dropout 0.1, GroupNorm with 32 groups.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "ddpm-cifar10": {
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        # Resolutions 32, 16, 8, 4 for 32x32 inputs: attention at the 16x16 level only.
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,  # one head spanning all channels, as in the paper
        "dropout": 0.1,
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
    },
    "small": {
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 32,
        "dropout": 0.1,
        "norm_num_groups": 32,
    },
    "tiny": {
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
}

_METADATA_KEYS = ("_class_name", "_diffusers_version", "_name_or_path")


def unet_config(
    preset: str | None,
    config_file: str | os.PathLike[str] | dict[str, Any] | None,
    *,
    resolution: int,
    in_channels: int,
    out_channels: int,
    num_class_embeds: int | None = None,
) -> dict[str, Any]:
    """Resolve the UNet2DModel config from a preset name or a JSON file, plus the data-derived keys.

    Args:
        preset: one of :data:`PRESETS`; ignored when ``config_file`` is given.
        config_file: a path to a JSON UNet2DModel config (or the dict itself).
        resolution: image side; must be divisible by ``2 ** (number of blocks - 1)``.
        in_channels: image channels (1 or 3).
        out_channels: model output channels (twice ``in_channels`` for a learned variance).
        num_class_embeds: number of class embeddings (classes + 1 null class) or ``None``.

    Raises:
        ValueError: unknown preset, unknown config keys, a config that contradicts the data, or a
            resolution the network cannot halve enough times.
        FileNotFoundError: the config file does not exist.
    """
    if config_file is not None:
        config = _read_config(config_file)
    elif preset in PRESETS:
        config = dict(PRESETS[preset])
    else:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    derived = {
        "sample_size": resolution,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "num_class_embeds": num_class_embeds,
    }
    for key, value in derived.items():
        given = config.get(key)
        if given is not None and _normalise(given) != _normalise(value):
            raise ValueError(
                f"the UNet config sets {key}={given!r}, but the data and scheduler need {value!r}"
            )
        config[key] = value
    blocks = len(config.get("block_out_channels", ()))
    factor = 2 ** max(blocks - 1, 0)
    if resolution <= 0 or resolution % factor:
        raise ValueError(
            f"resolution {resolution} must be a positive multiple of {factor} for a UNet with "
            f"{blocks} resolution levels"
        )
    return config


def build_unet(config: dict[str, Any]) -> Any:
    """A freshly initialised ``diffusers.UNet2DModel`` from a resolved config."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_config(config)


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _read_config(config_file: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    from diffusers import UNet2DModel

    if isinstance(config_file, dict):
        config = dict(config_file)
    else:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--unet-config {str(config_file)!r} does not exist")
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError(f"--unet-config {str(config_file)!r} must hold a JSON object")
    allowed = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed - set(_METADATA_KEYS))
    if unknown:
        raise ValueError(
            f"unknown UNet2DModel config keys {unknown}; the allowed keys are {sorted(allowed)}"
        )
    return {k: v for k, v in config.items() if k not in _METADATA_KEYS}
