"""The edit pipelines (RePaint inpainting, SDEdit image-to-image) against exact oracles, plus their inputs,
null-label defaults and remote-code loading.

The oracle: rank-one Gaussian images x_0 = c * 1 (every one of the D pixels equal to c), c ~ N(m, s^2).
With x_t = a x_0 + sigma eps (a^2 = alpha_bar_t, sigma^2 = 1 - alpha_bar_t), the pixel mean
xbar = a c + sigma epsbar, epsbar ~ N(0, 1/D), is sufficient for c, so
E[c | x_t] = m + a s^2 (xbar - a m) / (a^2 s^2 + sigma^2 / D), E[x_0 | x_t] = E[c | x_t] * 1 and the exact
epsilon-predictor is E[eps | x_t] = (x_t - a E[x_0 | x_t]) / sigma. An image whose known half has value
c_known has exactly one completion under this prior: c_known everywhere.
"""

import logging
import re

import numpy as np
import PIL.Image
import pytest

from hf_ddpm import HFDDPMPipeline
from hf_ddpm.core.scheduling import HFDDPMScheduler

SIZE = 8


@pytest.fixture
def saved_tiny(tiny_unet, tmp_path):
    pipe = HFDDPMPipeline(
        unet=tiny_unet(in_channels=1), scheduler=HFDDPMScheduler(num_train_timesteps=20)
    )
    pipe.save_pretrained(tmp_path / "model")
    image = np.zeros((SIZE, SIZE), dtype=np.uint8)
    image[2:6, 3:5] = 255
    PIL.Image.fromarray(image).save(tmp_path / "digit.png")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[SIZE // 2 :] = 255
    PIL.Image.fromarray(mask).convert("RGB").save(tmp_path / "mask.png")
    return tmp_path


def test_cli_inpaint_and_img2img_write_one_image_per_seed(saved_tiny):
    from hf_ddpm.cli import main

    model, d = str(saved_tiny / "model"), saved_tiny
    args = ["--image", str(d / "digit.png"), "--num-inference-steps", "4", "--num-images", "3"]
    assert (
        main(
            [
                "inpaint",
                model,
                *args,
                "--mask",
                str(d / "mask.png"),
                "--output",
                str(d / "a.png"),
                "--jump-length",
                "2",
                "--jump-n-sample",
                "2",
            ]
        )
        == 0
    )
    assert main(["img2img", model, *args, "--strength", "0.5", "--output", str(d / "b.png")]) == 0
    for name in ("a.png", "b.png"):
        with PIL.Image.open(d / name) as written:
            assert written.size == (3 * SIZE, SIZE) and written.mode == "L"
    # The known (upper) half of every inpainted image is the input's.
    row = np.asarray(PIL.Image.open(d / "a.png"))
    digit = np.asarray(PIL.Image.open(d / "digit.png"))
    for i in range(3):
        np.testing.assert_array_equal(
            row[: SIZE // 2, i * SIZE : (i + 1) * SIZE], digit[: SIZE // 2]
        )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"--image": "missing.png"}, FileNotFoundError, r"--image .*missing.png: no such file"),
        ({"--image": "fake.png"}, ValueError, r"--image .*fake.png is not an image"),
        ({"--mask": "missing.png"}, FileNotFoundError, r"--mask .*missing.png: no such file"),
        ({"--mask": "black.png"}, ValueError, "all black: nothing to fill"),
        # The command line's words for a mask that keeps nothing: its flag and command, not the
        # pipeline's argument and class.
        (
            {"--mask": "white.png"},
            ValueError,
            r"--mask \S*white.png is all white: nothing of the image is kept. Leave black \(0\) the "
            r"pixels to keep, or draw new images with `hf-ddpm sample`\.$",
        ),
        # A mask of another shape, resized and cropped by itself, would no longer line up.
        (
            {"--mask": "tall.png"},
            ValueError,
            r"--mask \S*tall.png is 8x12 pixels, but --image \S*digit.png is 8x8: give a mask of the "
            "image's size$",
        ),
        ({"--output": "out.jpg"}, ValueError, r"--output must be a \.png file"),
    ],
)
def test_cli_inpaint_errors_name_the_flag_and_file(
    saved_tiny, change, error, message, monkeypatch, capsys
):
    from hf_ddpm.cli import main

    d = saved_tiny
    (d / "fake.png").write_text("not a png")
    PIL.Image.new("L", (SIZE, SIZE)).save(d / "black.png")
    PIL.Image.new("L", (SIZE, SIZE), 255).save(d / "white.png")
    tall = np.zeros((12, SIZE), np.uint8)
    tall[6:] = 255  # its lower half; cropped alone to 8x8 it would be rows 2..9
    PIL.Image.fromarray(tall).save(d / "tall.png")
    flags = {"--image": "digit.png", "--mask": "mask.png", "--output": "out.png"}
    flags.update(change)
    argv = ["inpaint", str(d / "model"), "--num-inference-steps", "2"]
    for flag, name in flags.items():
        argv += [flag, str(d / name)]
    # one line and exit 2 (cli.py); HF_DDPM_DEBUG=1 re-raises the error itself
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    monkeypatch.setenv("HF_DDPM_DEBUG", "1")
    with pytest.raises(error, match=message):
        main(argv)
    assert not (d / "out.png").exists()


@pytest.mark.parametrize(
    ("command", "pipeline", "flags"),
    [
        ("inpaint", "HFDDPMInpaintPipeline", ["--mask", "mask.png"]),
        ("img2img", "HFDDPMImg2ImgPipeline", ["--strength", "0.5"]),
    ],
)
@pytest.mark.parametrize(("train_steps", "steps"), [(200, 100), (50, 50)])
def test_edit_commands_default_to_the_steps_of_hf_ddpm_sample(
    tiny_unet, tmp_path, monkeypatch, capsys, command, pipeline, flags, train_steps, steps
):
    """inpaint drew 250 steps and img2img 1000 by default (their pipelines' Python defaults, the
    papers'), sample 100: the commands now take sample's DEFAULT_SAMPLING_STEPS, or T where the model
    has fewer, and say so in --help; the pipelines called from Python keep theirs."""
    import functools

    import hf_ddpm
    from hf_ddpm.cli import main
    from hf_ddpm.sampling.edit_files import pipeline_default
    from hf_ddpm.sampling.samplers import DEFAULT_SAMPLING_STEPS, default_sampling_steps_in_words

    assert DEFAULT_SAMPLING_STEPS == 100
    scheduler = HFDDPMScheduler(num_train_timesteps=train_steps)
    HFDDPMPipeline(tiny_unet(in_channels=1), scheduler).save_pretrained(tmp_path / "model")
    PIL.Image.new("L", (SIZE, SIZE), 128).save(tmp_path / "digit.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[SIZE // 2 :] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    cls = getattr(hf_ddpm, pipeline)
    assert (
        pipeline_default(cls, "num_inference_steps") == {"inpaint": 250, "img2img": 1000}[command]
    )
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"fewer are faster (default: {default_sampling_steps_in_words()})" in help_text
    seen = {}

    @functools.wraps(cls.__call__)  # the command reads the pipeline's other defaults from it
    def spy(self, **kwargs):
        seen.update(kwargs)
        raise _Drawn

    monkeypatch.setattr(cls, "__call__", spy)
    argv = [command, str(tmp_path / "model"), "--image", str(tmp_path / "digit.png")]
    argv += [*(str(tmp_path / f) if f.endswith(".png") else f for f in flags)]
    with pytest.raises(_Drawn):
        main([*argv, "--output", str(tmp_path / "out.png")])
    assert seen["num_inference_steps"] == steps


def test_cli_img2img_rejects_a_bad_strength(saved_tiny, capsys):
    from hf_ddpm.cli import main

    d = saved_tiny
    argv = [
        "img2img",
        str(d / "model"),
        "--image",
        str(d / "digit.png"),
        "--output",
        str(d / "o.png"),
    ]
    assert main([*argv, "--strength", "1.5", "--num-inference-steps", "2"]) == 2
    assert re.search(r"strength must be a number in \(0, 1\]", capsys.readouterr().err)


class _Drawn(Exception):
    """Raised in place of a pipeline's chain: what it would have run with is enough."""


@pytest.mark.skipif(
    __import__("hf_ddpm.hub.bundled", fromlist=["x"]).bundled_model_path() is None,
    reason="this checkout ships no bundled model",
)
def test_edits_sample_the_bundled_model_with_the_variance_and_spacing_of_sample(
    tmp_path, monkeypatch
):
    """The bundled model carries eps_second_moment (hf-ddpm calibrate) over a fixed_small config, so
    `hf-ddpm sample` draws it with the analytic variance; inpaint and img2img ran fixed_small. Each
    command now reaches its chain with the same scheduler, and --variance-type overrides it."""
    import functools
    import json

    from hf_ddpm.cli import main
    from hf_ddpm.core.pipeline_img2img import HFDDPMImg2ImgPipeline
    from hf_ddpm.core.pipeline_inpaint import HFDDPMInpaintPipeline
    from hf_ddpm.hub.bundled import bundled_model_path

    config = json.loads(
        (bundled_model_path() / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")
    )
    assert config["variance_type"] == "fixed_small" and config["eps_second_moment"]
    seen = {}
    for name, cls in (
        ("sample", HFDDPMPipeline),
        ("inpaint", HFDDPMInpaintPipeline),
        ("img2img", HFDDPMImg2ImgPipeline),
    ):

        @functools.wraps(cls.__call__)  # the edit commands read their defaults from its signature
        def chain(self, *args, _name=name, **kwargs):
            seen[_name] = (
                self.scheduler.config.variance_type,
                self.scheduler.config.timestep_spacing,
            )
            raise _Drawn

        monkeypatch.setattr(cls, "__call__", chain)
    PIL.Image.new("L", (32, 32), 255).save(tmp_path / "digit.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[16:] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    edit = ["--image", str(tmp_path / "digit.png"), "--output", str(tmp_path / "out.png")]
    argvs = {
        "sample": ["sample", "--output", str(tmp_path / "grid.png"), "--num-images", "1"],
        "inpaint": ["inpaint", *edit, "--mask", str(tmp_path / "mask.png")],
        "img2img": ["img2img", *edit],
    }
    for flags, expected in (([], "analytic"), (["--variance-type", "fixed_small"], "fixed_small")):
        seen.clear()
        for argv in argvs.values():
            with pytest.raises(_Drawn):
                main([*argv, "--threads", "1", *flags])
        assert seen == dict.fromkeys(argvs, (expected, config["timestep_spacing"]))


@pytest.mark.skipif(
    __import__("hf_ddpm.hub.bundled", fromlist=["x"]).bundled_model_path() is None,
    reason="this checkout ships no bundled model",
)
@pytest.mark.parametrize("variance_type", [None, "npr"])
def test_an_edit_of_the_bundled_model_keeps_its_covariance_head_silently(
    variance_type, tmp_path, capfd
):
    """The bundled model ships a covariance head. diffusers' from_pipe dropped it from the edit pipeline
    ("component covariance_head is not switched over ..." on every edit), so an edit could not use it."""
    from hf_ddpm.cli import main

    PIL.Image.new("L", (32, 32), 255).save(tmp_path / "digit.png")
    argv = ["img2img", "--image", str(tmp_path / "digit.png"), "--output", str(tmp_path / "o.png")]
    argv += ["--strength", "0.5", "--num-inference-steps", "2", "--threads", "1"]
    argv += ["--variance-type", variance_type] if variance_type else []
    # diffusers logs to its own handler (its library logger does not propagate): listen there too.
    said = []
    listener = logging.Handler(logging.WARNING)
    listener.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(listener)
    try:
        assert main(argv) == 0
    finally:
        logging.getLogger("diffusers").removeHandler(listener)
    said.append(capfd.readouterr().err)
    assert not [line for line in said if "covariance_head" in line], said
    assert PIL.Image.open(tmp_path / "o.png").size == (32, 32)
