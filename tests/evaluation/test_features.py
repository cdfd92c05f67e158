"""Feature extractors (tiny random DINOv2 end to end; Inception where its weights exist) and the stats cache."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddpm.evaluation.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_WEIGHTS_ENV,
    DinoV2Features,
    InceptionFeatures,
    StatisticsKey,
    find_inception_weights,
    reference_statistics,
)
from hf_ddpm.evaluation.frechet import feature_statistics, frechet_distance


def _smooth_images(n, channels, size=16, seed=0):
    """Smooth random images in [0, 1], on the 8-bit grid (so PIL and torch see the same pixels)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return (x * 255).round() / 255


def test_dinov2_loads_through_automodel_and_returns_last_layer_cls(tiny_dinov2_dir):
    extractor = DinoV2Features(tiny_dinov2_dir, device="cpu")
    images = _smooth_images(3, 3)
    feats = extractor(images)
    assert feats.shape == (3, 16) and extractor.dim == 16
    assert tiny_dinov2_dir in extractor.name and "@224" in extractor.name
    # CLS token (index 0) of the last hidden state, which transformers puts after the final layer norm
    with torch.no_grad():
        hidden = extractor.model(pixel_values=extractor.preprocess(images)).last_hidden_state
    torch.testing.assert_close(feats, hidden[:, 0])
    assert not torch.allclose(feats[0], feats[1])


def test_dinov2_preprocessing_matches_transformers_image_processor(tiny_dinov2_dir):
    # transformers' own DINOv2 processor class (BitImageProcessor) set to Stein et al.'s transform:
    # bicubic resize to 224x224, rescale to [0, 1], ImageNet normalisation; PIL bicubic differs slightly
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    processor = BitImageProcessorPil(
        size={"height": 224, "width": 224},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=False,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    images = _smooth_images(2, 3)
    pil = [
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        for im in images
    ]
    expected = processor(images=pil, return_tensors="pt").pixel_values
    mine = DinoV2Features(tiny_dinov2_dir, device="cpu").preprocess(images)
    assert mine.shape == expected.shape == (2, 3, 224, 224)
    diff = (mine - expected).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_dinov2_greyscale_is_repeated_to_rgb(tiny_dinov2_dir):
    extractor = DinoV2Features(tiny_dinov2_dir, device="cpu")
    grey = _smooth_images(2, 1)
    torch.testing.assert_close(extractor(grey), extractor(grey.repeat(1, 3, 1, 1)))


def test_dinov2_bad_input(tiny_dinov2_dir):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        DinoV2Features(tiny_dinov2_dir, resolution=100, device="cpu")
    extractor = DinoV2Features(tiny_dinov2_dir, device="cpu")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        extractor(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="floating point"):
        extractor(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_dinov2_without_network_names_the_model_and_the_option(tmp_path):
    """Issue 14 item 7: offline (conftest sets HF_HUB_OFFLINE=1) and not cached, one clear error."""
    model_id = "tester/dinov2-that-is-not-cached"
    with pytest.raises(FileNotFoundError) as failure:
        DinoV2Features(model_id, device="cpu")
    message = str(failure.value)
    assert model_id in message and "--dinov2-model" in message and "HF_HUB_OFFLINE=1" in message
    assert "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match="--dinov2-model .*empty: not a transformers DINOv2"
    ):
        DinoV2Features(str(tmp_path / "empty"), device="cpu")


def test_dinov2_fd_of_a_set_with_itself_and_a_shifted_set(tiny_dinov2_dir):
    extractor = DinoV2Features(tiny_dinov2_dir, device="cpu")
    a = extractor(_smooth_images(40, 1, seed=1))
    b = extractor(_smooth_images(40, 1, seed=2))
    c = extractor((_smooth_images(40, 1, seed=2) * 0.3).clamp(0, 1))  # much darker
    sa, sb, sc = (feature_statistics(f) for f in (a, b, c))
    assert abs(frechet_distance(sa, sa)) < 1e-8
    assert frechet_distance(sa, sb) < frechet_distance(sa, sc)


class _RecordingInception(torch.nn.Module):
    """Stands in for the Inception network: records its input, returns a fixed projection."""

    def forward(self, x):
        self.seen = x
        return x.float().mean(dim=(2, 3)).repeat(1, 4)


def test_inception_wrapper_feeds_uint8_rgb():
    module = _RecordingInception()
    extractor = InceptionFeatures(module=module, device="cpu")
    grey = torch.tensor([0.0, 0.5, 1.0, 0.2]).view(1, 1, 2, 2)
    feats = extractor(grey)
    assert module.seen.dtype == torch.uint8 and module.seen.shape == (1, 3, 2, 2)
    # round(x * 255): 0.5 -> 128 (127.5 rounds half to even), 0.2 -> 51
    assert module.seen[0, 1].flatten().tolist() == [0, 128, 255, 51]
    assert feats.dtype == torch.float64 and feats.shape == (1, 12)


def test_find_inception_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_inception_weights() is None
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert find_inception_weights(weights) == weights
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_ENV):
        find_inception_weights()


def test_inception_real_weights_end_to_end():
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        pytest.skip(
            "torch-fidelity is not installed (pip install torch-fidelity): no FID Inception network"
        )
    weights = find_inception_weights()
    if weights is None:
        pytest.skip(
            "FID Inception weights not found offline: set HF_DDPM_INCEPTION_WEIGHTS or put "
            "weights-inception-2015-12-05-6726825d.pth in $TORCH_HOME/hub/checkpoints"
        )
    extractor = InceptionFeatures(weights, device="cpu")
    feats = extractor(_smooth_images(2, 1))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


class _CountingExtractor:
    name = "counting"
    dim = 3

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return images.flatten(1)[:, :3].double()


def test_reference_statistics_are_cached_by_key(tmp_path):
    images = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    extractor = _CountingExtractor()
    key = StatisticsKey("user/my-data", "test", 4, extractor.name)
    stats = reference_statistics(key, extractor, lambda: images.split(4), cache_dir=tmp_path)
    assert extractor.calls == 3  # batches of 4, 4, 2
    expected = feature_statistics(images.flatten(1)[:, :3])
    np.testing.assert_allclose(stats.sigma, expected.sigma)

    def fail():
        raise AssertionError("the cache was not used")

    again = reference_statistics(key, extractor, fail, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.mu, stats.mu)
    assert again.num_samples == 10
    # a different resolution (or split, dataset, feature model) is a different entry
    other = StatisticsKey("user/my-data", "test", 8, extractor.name)
    assert other.filename() != key.filename() and "/" not in key.filename()
    reference_statistics(other, extractor, lambda: images.split(10), cache_dir=tmp_path)
    assert extractor.calls == 4
    assert len(list(tmp_path.glob("*.npz"))) == 2
    with pytest.raises(ValueError, match="does not match the extractor"):
        reference_statistics(StatisticsKey("d", "test", 4, "other"), extractor, fail, tmp_path)
