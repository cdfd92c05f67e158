"""Feature extractors for Fréchet distances, and an on-disk cache of reference statistics.

Two extractors map images in [0, 1], shape (B, C, H, W) with C in {1, 3}, to feature vectors:

- :class:`DinoV2Features`: DINOv2 through ``transformers.AutoModel``. Following Stein et al. 2023 ("Exposing
  flaws of generative model evaluation metrics", the dgm-eval code), images are resized to 224x224 with bicubic
  interpolation, normalised with the ImageNet mean and std, and the feature is the CLS token of the last layer
  after the final layer norm (``pooler_output`` in transformers).
- :class:`InceptionFeatures`: the 2048-d pool features of the TF-ported Inception-v3 used by FID (Heusel et al.
  2017), via torchmetrics' ``NoTrainInceptionV3`` (which needs ``torch-fidelity`` and its weights file).

Greyscale images are repeated to 3 channels for both. Reference statistics of a dataset split are computed
once and cached on disk, keyed by dataset, split, resolution and feature model (:class:`StatisticsKey`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_ddpm.core.saving import write_atomically

from .frechet import FeatureStatistics, feature_statistics

__all__ = [
    "DEFAULT_DINOV2_MODEL",
    "FID_INSTALL",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILENAME",
    "DinoV2Features",
    "FeatureExtractor",
    "InceptionFeatures",
    "StatisticsKey",
    "default_cache_dir",
    "extract_features",
    "find_inception_weights",
    "reference_statistics",
]

DEFAULT_DINOV2_MODEL = "facebook/dinov2-base"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The file name torch-fidelity gives its FID Inception weights in the torch hub cache.
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ENV = "HF_DDPM_INCEPTION_WEIGHTS"
# The install line for FID, from a checkout of hf_ddpm (it is not on PyPI): the eval extra, and
# torch-fidelity, which torchmetrics' Inception network needs.
FID_INSTALL = "pip install -e '.[eval]' torch-fidelity"
CACHE_DIR_ENV = "HF_DDPM_STATS_CACHE"


class FeatureExtractor(Protocol):
    """Maps images in [0, 1], shape (B, C, H, W), to features (B, dim); ``name`` identifies it in caches."""

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Check a (B, C, H, W) batch in [0, 1] and repeat greyscale to 3 channels."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (batch, channels, height, width) with 1 or 3 channels; "
            f"got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1]; got dtype {images.dtype}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class DinoV2Features:
    """DINOv2 CLS features (Stein et al. 2023) through ``transformers.AutoModel``.

    Args:
        model: a Hub id or local folder for ``AutoModel.from_pretrained``, or an already built DINOv2 model.
        resolution: the square size images are resized to; a multiple of the model's patch size.
        device: where to run the model; defaults to CUDA when available.
    """

    def __init__(
        self,
        model: str | torch.nn.Module = DEFAULT_DINOV2_MODEL,
        resolution: int = 224,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(model, str):
            model_id, model = model, _load_dinov2(model)
        else:
            model_id = getattr(model.config, "_name_or_path", "") or "dinov2"
        patch = int(model.config.patch_size)
        if resolution <= 0 or resolution % patch:
            raise ValueError(
                f"resolution must be a positive multiple of the patch size {patch}; got {resolution}"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.resolution = resolution
        self.dim = int(model.config.hidden_size)
        self.name = f"dinov2-cls:{model_id}@{resolution}"
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the model's ``pixel_values``: RGB, bicubic resize, ImageNet normalisation."""
        x = _to_rgb(images).to(self.device, torch.float32)
        size = (self.resolution, self.resolution)
        if x.shape[-2:] != size:
            # bicubic overshoots; clamp back to the valid range before normalising, as a PIL resize would
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)
        return (x - self._mean) / self._std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """CLS token of the last layer after the final layer norm, shape (B, hidden_size)."""
        out = self.model(pixel_values=self.preprocess(images))
        return out.pooler_output.float().cpu()


def _load_dinov2(model_id: str) -> torch.nn.Module:
    """``AutoModel.from_pretrained(model_id)``; without the network or a cached copy, a FileNotFoundError
    that names the model and the ``--dinov2-model`` option instead of transformers' traceback."""
    from transformers import AutoModel

    try:
        if Path(model_id).exists() or _hub_offline():
            return AutoModel.from_pretrained(model_id)
        try:  # the cache first: no request at all for a model downloaded before
            return AutoModel.from_pretrained(model_id, local_files_only=True)
        except OSError as not_cached:
            # huggingface_hub retries an unreachable Hub for half a minute before it gives up.
            if not _hub_reachable():
                raise OSError(
                    f"the Hub ({_hub_endpoint()}) did not answer within {_PROBE_S:g} s"
                ) from not_cached
            return AutoModel.from_pretrained(model_id)
    except (OSError, ValueError) as error:  # ValueError: a folder with no model config
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if Path(model_id).exists() or not isinstance(error, OSError):
            raise FileNotFoundError(
                f"--dinov2-model {model_id}: not a transformers DINOv2 model folder ({detail})"
            ) from error
        offline = "HF_HUB_OFFLINE=1 is set" if _hub_offline() else "the Hub could not be reached"
        raise FileNotFoundError(
            f"fd-dinov2 needs the DINOv2 model {model_id!r}, which is not in the Hugging Face cache, "
            f"and {offline}. Download it once where the network works (`hf download {model_id}`), "
            f"or pass --dinov2-model FOLDER with a saved DINOv2 model ({detail})"
        ) from error


_PROBE_S = 3.0


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_reachable() -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``_PROBE_S`` seconds."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=_PROBE_S):
            return True
    except OSError:
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def find_inception_weights(weights_path: str | os.PathLike | None = None) -> Path | None:
    """Locate the FID Inception weights without touching the network.

    Looks at ``weights_path``, then the ``HF_DDPM_INCEPTION_WEIGHTS`` environment variable, then the torch hub
    cache where torch-fidelity downloads them (``$TORCH_HOME/hub/checkpoints``). Returns None if none exists.

    Raises:
        FileNotFoundError: if ``weights_path`` or the environment variable names a missing file.
    """
    for origin, candidate in (
        ("weights_path", weights_path),
        (INCEPTION_WEIGHTS_ENV, os.environ.get(INCEPTION_WEIGHTS_ENV)),
    ):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Inception weights file from {origin} not found: {path}")
            return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME
    return cached if cached.is_file() else None


class InceptionFeatures:
    """FID's Inception-v3 2048-d pool features, through torchmetrics (``NoTrainInceptionV3``).

    Args:
        weights_path: the ``pt_inception-2015-12-05`` weights converted by torch-fidelity; see
            :func:`find_inception_weights`. Without a local file torch-fidelity downloads them, which needs
            the network.
        device: where to run the network; defaults to CUDA when available.
        module: a replacement network taking uint8 (B, 3, H, W) images and returning (B, D) features;
            for tests and custom Inception variants.
    """

    name = "inception-v3-compat-pool3"

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        module: torch.nn.Module | None = None,
    ) -> None:
        if module is None:
            module = _load_inception(find_inception_weights(weights_path))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.eval().requires_grad_(False).to(self.device)
        self.dim = 2048

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of images in [0, 1]; the network resizes to 299x299 itself and wants uint8 input."""
        x = (_to_rgb(images).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return self.module(x.to(self.device)).double().cpu()


def _fid_packages_missing(missing: str) -> str:
    """What to install for the fid metric, in one line, when ``missing`` (a package) is not there: the
    Inception network is torchmetrics' (pyproject.toml's ``eval`` extra), which runs it through
    torch-fidelity (in no extra) and its weights."""
    return (
        f"the fid metric needs torchmetrics and torch-fidelity, and {missing} is not installed: "
        f"{FID_INSTALL} (torch-fidelity then downloads its Inception weights, or pass "
        f"--inception-weights FILE or {INCEPTION_WEIGHTS_ENV})"
    )


def _load_inception(weights: Path | None) -> torch.nn.Module:
    try:
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as error:
        raise ImportError(_fid_packages_missing("torchmetrics")) from error
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ImportError(_fid_packages_missing("torch-fidelity"))
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        return NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=None if weights is None else str(weights),
        )
    except OSError as err:  # the download failed (offline): a user error, reported as one line
        raise FileNotFoundError(
            f"could not download the FID Inception weights ({err}); put {INCEPTION_WEIGHTS_FILENAME} in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or pass its path with --inception-weights or "
            f"{INCEPTION_WEIGHTS_ENV}"
        ) from err


def extract_features(
    extractor: FeatureExtractor, batches: Iterable[torch.Tensor], desc: str = "features"
) -> torch.Tensor:
    """Run ``extractor`` over batches of images in [0, 1]; returns (N, dim) features."""
    feats = [extractor(batch) for batch in tqdm(batches, desc=desc, leave=False)]
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats)


@dataclass(frozen=True)
class StatisticsKey:
    """What identifies cached reference statistics.

    Attributes:
        dataset: dataset name, Hub id or folder.
        split: dataset split.
        resolution: image side length the images were resized to before feature extraction.
        feature_model: the extractor's ``name`` (model id and its input resolution).
        num_images: how many images of the split were used; None for all of them.
    """

    dataset: str
    split: str
    resolution: int
    feature_model: str
    num_images: int | None = None

    def filename(self) -> str:
        """A readable, filesystem-safe name, made unique by a hash of the whole key."""
        text = json.dumps(asdict(self), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.dataset}-{self.split}-{self.resolution}")
        return f"{slug[-80:]}-{digest}.npz"


def default_cache_dir() -> Path:
    """``$HF_DDPM_STATS_CACHE``, else ``$HF_HOME/hf_ddpm/fd_stats``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_ddpm" / "fd_stats"


def reference_statistics(
    key: StatisticsKey,
    extractor: FeatureExtractor,
    batches: Callable[[], Iterable[torch.Tensor]],
    cache_dir: str | os.PathLike | None = None,
) -> FeatureStatistics:
    """Feature statistics of a reference split, computed once and then read from the cache.

    Args:
        key: identifies the statistics; must name ``extractor.name`` as its feature model.
        extractor: the feature extractor.
        batches: called only on a cache miss; yields image batches in [0, 1].
        cache_dir: defaults to :func:`default_cache_dir`.
    """
    if key.feature_model != extractor.name:
        raise ValueError(
            f"key.feature_model {key.feature_model!r} does not match the extractor {extractor.name!r}"
        )
    path = Path(cache_dir or default_cache_dir()) / key.filename()
    if path.is_file():
        return FeatureStatistics.load(path)
    stats = feature_statistics(
        extract_features(extractor, batches(), desc=f"reference {key.split}")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic, so a concurrent or interrupted run never leaves a truncated cache file behind.
    stats.save(path)
    write_atomically(path.with_suffix(".json"), json.dumps(asdict(key), indent=2, sort_keys=True))
    return stats
