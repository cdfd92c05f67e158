"""hf-ddpm inpaint and img2img read a photo of any size and mode as training reads it (issue 22): resized so
the shorter side is the model's, centre-cropped, converted to the model's channels, and they say so."""

import logging

import numpy as np
import PIL.Image
import pytest

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli

SIZE = 8


@pytest.fixture
def grey_model(tiny_unet, tmp_path):
    pipe = HFDDPMPipeline(
        unet=tiny_unet(in_channels=1), scheduler=HFDDPMScheduler(num_train_timesteps=20)
    )
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _wide_colour_photo(path, size=(12, 10)):
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).save(path)


def _as_training_reads_it(path, mode):
    """PIL's own steps, written out: to ``mode``, bilinear resize of the shorter side to SIZE (12x10 ->
    10x8, since round(12 * 8 / 10) = 10), then the centre 8x8 (columns 1..8)."""
    with PIL.Image.open(path) as image:
        resized = image.convert(mode).resize((10, SIZE), PIL.Image.Resampling.BILINEAR)
        return np.asarray(resized.crop((1, 0, 1 + SIZE, SIZE)))


def _log(caplog, capfd) -> str:
    """What the command said: its log (caplog under pytest, stderr otherwise) and stderr."""
    return caplog.text + capfd.readouterr().err


def test_inpaint_resizes_and_crops_a_wide_colour_photo_and_says_so(
    grey_model, tmp_path, caplog, capfd
):
    photo = tmp_path / "wide 03.jpg"
    _wide_colour_photo(photo)
    mask = np.zeros((10, 12), np.uint8)
    mask[5:] = 255  # the lower half, at the photo's size
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    argv = ["inpaint", str(grey_model), "--image", str(photo), "--mask", str(tmp_path / "mask.png")]
    with caplog.at_level(logging.INFO, logger="hf_ddpm.sampling.edit_files"):
        assert cli.main([*argv, "--num-inference-steps", "3", "--output", str(out)]) == 0
    err = _log(caplog, capfd)
    assert "--image" in err and "wide 03.jpg is 12x10 pixels: resized" in err
    assert "centre-cropped to 8x8, as training does" in err
    assert "is in colour, but the model is grey (1 channel): converted to grey" in err
    assert "--mask" in err and "mask.png is 12x10 pixels" in err
    assert "should be kept in float32" not in err  # diffusers' from_pipe cast warning
    written = np.asarray(PIL.Image.open(out))
    assert written.shape == (SIZE, SIZE)
    # The kept (upper) half is the photo as training reads it; the mask went through the same crop.
    expected = _as_training_reads_it(photo, "L")
    np.testing.assert_array_equal(written[: SIZE // 2], expected[: SIZE // 2])


def test_img2img_takes_a_grey_photo_into_a_colour_model_and_says_so(
    tiny_unet, tmp_path, caplog, capfd
):
    pipe = HFDDPMPipeline(
        unet=tiny_unet(in_channels=3), scheduler=HFDDPMScheduler(num_train_timesteps=20)
    )
    pipe.save_pretrained(tmp_path / "model")
    PIL.Image.new("L", (SIZE, 2 * SIZE), 90).save(tmp_path / "tall.png")
    argv = ["img2img", str(tmp_path / "model"), "--image", str(tmp_path / "tall.png")]
    argv += ["--strength", "0.3", "--num-inference-steps", "4", "--output", str(tmp_path / "o.png")]
    with caplog.at_level(logging.INFO, logger="hf_ddpm.sampling.edit_files"):
        assert cli.main(argv) == 0
    err = _log(caplog, capfd)
    assert "tall.png is 8x16 pixels: resized" in err and "copied to each channel" in err
    assert PIL.Image.open(tmp_path / "o.png").size == (SIZE, SIZE)
