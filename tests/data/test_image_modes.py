"""Every image mode Pillow reads is brought to 8 bits correctly or refused by name (issue 21, item 6):
files of each mode made with Pillow/numpy, read back through the training transform, against 8-bit values
computed here from the raw numbers (16-bit: v * 255 / 65535; mode I of values 0..255: as they are;
alpha: over white; palette: lookup; CMYK without a profile: (255 - C)(255 - K) / 255), plus files with
every EXIF orientation and a rotated JPEG, turned upright by numpy flips and rotations."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddpm.data.image_transform import ImageTransform, to_eight_bit

RNG = np.random.default_rng(0)
H, W = 6, 8  # not square, so a wrong rotation shows in the shape


def _u8(*shape):
    return RNG.integers(0, 256, size=shape).astype(np.uint8)


def _over_white(colour, alpha):
    a = alpha.astype(np.float64)[..., None] / 255.0
    c = colour.astype(np.float64).reshape(*alpha.shape, -1)
    return np.rint(c * a + 255.0 * (1 - a)).astype(np.uint8).squeeze(-1 if c.shape[-1] == 1 else ())


def _case(mode):
    """(image, expected 8-bit array (H, W) or (H, W, 3), suffix)."""
    if mode == "1":
        bits = RNG.integers(0, 2, size=(H, W)).astype(bool)
        return Image.fromarray(bits), bits.astype(np.uint8) * 255, ".png"
    if mode == "L":
        grey = _u8(H, W)
        return Image.fromarray(grey, "L"), grey, ".png"
    if mode == "LA":
        grey, alpha = _u8(H, W), _u8(H, W)
        image = Image.fromarray(np.stack([grey, alpha], -1), "LA")
        return image, _over_white(grey, alpha), ".png"
    if mode in ("P", "PA"):
        palette = _u8(256, 3)
        index = RNG.integers(0, 256, size=(H, W)).astype(np.uint8)
        image = Image.fromarray(index, "P")
        image.putpalette(palette.flatten().tolist())
        if mode == "P":
            return image, palette[index], ".png"
        alpha = _u8(H, W)
        pa = image.convert("PA")
        pa.putalpha(Image.fromarray(alpha, "L"))
        return pa, _over_white(palette[index], alpha), None
    if mode == "RGB":
        rgb = _u8(H, W, 3)
        return Image.fromarray(rgb, "RGB"), rgb, ".png"
    if mode == "RGBA":
        rgb, alpha = _u8(H, W, 3), _u8(H, W)
        image = Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA")
        return image, _over_white(rgb, alpha), ".png"
    if mode == "I;16":
        # The first trial's 16-bit greyscale PNG: values 3598-17990.
        values = RNG.integers(3598, 17991, size=(H, W)).astype(np.uint16)
        return Image.fromarray(values), np.rint(values / 65535 * 255).astype(np.uint8), ".png"
    if mode == "I":
        values = RNG.integers(0, 65536, size=(H, W)).astype(np.int32)
        return Image.fromarray(values, "I"), np.rint(values / 65535 * 255).astype(np.uint8), ".tif"
    if mode == "F":
        values = RNG.random((H, W)).astype(np.float32)
        expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
        return Image.fromarray(values, "F"), expected, ".tif"
    if mode == "CMYK":
        cmyk = _u8(H, W, 4)
        c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
        expected = np.rint((255 - c) * (255 - k) / 255).astype(np.uint8)
        return Image.fromarray(cmyk, "CMYK"), expected, ".tif"
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


def _as_model_sees(expected):
    """The training transform's tensor for an 8-bit array, computed here."""
    array = expected.astype(np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array * 2.0 - 1.0)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_reads_back_as_the_independent_8_bit_values(tmp_path, mode):
    image, expected, suffix = _case(mode)
    assert image.mode == mode
    if suffix is not None:  # through a file, as a folder of images is read
        path = tmp_path / f"image{suffix}"
        image.save(path)
        image = Image.open(path)
        assert image.mode == mode, (mode, image.mode)
    eight = to_eight_bit(image)
    assert eight.mode == ("L" if expected.ndim == 2 else "RGB")
    np.testing.assert_array_equal(np.asarray(eight), expected)
    transform = ImageTransform("L" if expected.ndim == 2 else "RGB", resolution=H)
    crop = (W - H) // 2
    torch.testing.assert_close(
        transform(image), _as_model_sees(expected[:, crop : crop + H]), rtol=0, atol=0
    )


# What each EXIF orientation asks a viewer to do to the stored pixels (the TIFF/EXIF specification's
# wording), written with numpy: np.rot90 turns counter-clockwise for k > 0, so "rotate 90 CW" is k=-1.
UPRIGHT = {
    2: ("mirror horizontal", np.fliplr),
    3: ("rotate 180", lambda a: np.rot90(a, k=2)),
    4: ("mirror vertical", np.flipud),
    5: ("mirror horizontal, then rotate 270 CW", lambda a: np.rot90(np.fliplr(a), k=1)),
    6: ("rotate 90 CW", lambda a: np.rot90(a, k=-1)),
    7: ("mirror horizontal, then rotate 90 CW", lambda a: np.rot90(np.fliplr(a), k=-1)),
    8: ("rotate 270 CW", lambda a: np.rot90(a, k=1)),
}


def _with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_oriented_images_are_turned_upright(tmp_path, orientation):
    rgb = _u8(H, W, 3)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb, "RGB").save(path, exif=_with_orientation(orientation))
    _, upright = UPRIGHT[orientation]
    with Image.open(path) as image:
        assert image.getexif()[0x0112] == orientation
        eight = np.asarray(to_eight_bit(image))
    np.testing.assert_array_equal(eight, upright(rgb))
    # 5 to 8 swap the sides: the 6 x 8 picture is 8 x 6 upright.
    assert eight.shape[:2] == ((W, H) if orientation >= 5 else (H, W))


def test_a_jpeg_with_an_exif_rotation_is_trained_upright(tmp_path):
    """A camera JPEG stored sideways (orientation 6): the training transform sees the stored pixels,
    as Pillow decodes them without turning, rotated 90 degrees clockwise by numpy."""
    path = tmp_path / "camera.jpg"
    Image.fromarray(_u8(H, W, 3), "RGB").save(path, exif=_with_orientation(6), quality=95)
    with Image.open(path) as image:
        assert image.getexif()[0x0112] == 6
        stored = np.asarray(image.convert("RGB"))
        assert stored.shape == (H, W, 3)
        seen = ImageTransform("RGB", resolution=H)(image)
    upright = np.rot90(stored, k=-1)  # (W, H, 3): the shorter side is already H, so only a crop
    crop = (W - H) // 2
    torch.testing.assert_close(seen, _as_model_sees(upright[crop : crop + H]), rtol=0, atol=0)


@pytest.mark.parametrize("high", [0, 1, 200, 255])
def test_mode_i_holding_8_bit_values_keeps_them(tmp_path, high):
    """Mode I (32-bit integers) of values 0..255 is 8-bit data, as Pillow's own convert("L") reads it:
    200 stays 200 (it was scaled as 16-bit, 200 * 255 / 65535 -> 1, a near-black image)."""
    values = RNG.integers(0, high + 1, size=(H, W)).astype(np.int32)
    values[0, 0] = high
    path = tmp_path / "eight_bit_values.tif"
    Image.fromarray(values, "I").save(path)
    with Image.open(path) as image:
        assert image.mode == "I"
        np.testing.assert_array_equal(np.asarray(to_eight_bit(image)), values.astype(np.uint8))


def test_mode_i_with_a_value_above_255_is_16_bit():
    values = np.array([[0, 200], [256, 65535]], np.int32)
    expected = np.rint(values / 65535 * 255).astype(np.uint8)  # 0, 1, 1, 255
    image = Image.fromarray(values, "I")
    np.testing.assert_array_equal(np.asarray(to_eight_bit(image)), expected)


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.fromarray(np.full((2, 2), 200.0, np.float32), "F"), r"mode 'F' .* 200\.\.200"),
        (Image.fromarray(np.full((2, 2), -5, np.int32), "I"), r"mode 'I' .* -5\.\.-5"),
        (Image.new("LAB", (2, 2)), r"image mode 'LAB' is not supported"),
    ],
)
def test_modes_whose_range_is_unknown_are_refused_by_name(image, message):
    with pytest.raises(ValueError, match=message):
        to_eight_bit(image)


def test_a_folder_with_a_16_bit_image_trains_on_its_scaled_values_and_refuses_a_float_one(tmp_path):
    from hf_ddpm.data.image_datasets import load_image_dataset, preprocess
    from hf_ddpm.data.ingest import UnreadableImagesError

    folder = tmp_path / "images"
    folder.mkdir()
    values = np.linspace(3598, 17990, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(values).save(folder / "grey16.png")
    Image.fromarray(_u8(8, 8), "L").save(folder / "grey8.png")
    data = load_image_dataset(None, train_data_dir=str(folder))
    items = preprocess(data, 8)
    pixels = [items[i]["pixel_values"] for i in range(len(data))]
    expected = _as_model_sees(np.rint(values / 65535 * 255).astype(np.uint8))
    assert any(torch.equal(p, expected) for p in pixels)
    assert max(p.max().item() for p in pixels if p.mean() < -0.5) < -0.4  # not a white square

    Image.fromarray(np.full((8, 8), 3.0, np.float32), "F").save(folder / "depth.tif")
    with pytest.raises(UnreadableImagesError, match=r"depth\.tif \(image mode 'F'"):
        load_image_dataset(None, train_data_dir=str(folder))
