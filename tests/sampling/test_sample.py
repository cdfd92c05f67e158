"""``hf-ddpm sample``: the README's main command, on tiny pipelines saved by the test."""

import logging
import re

import pytest
import torch
from conftest import run_subprocess
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.sampling import sample


def _save(tmp_path, tiny_unet, **unet_kwargs):
    pipe = HFDDPMPipeline(
        unet=tiny_unet(**unet_kwargs), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    )
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_sample_writes_a_grid_of_the_requested_size(tmp_path, tiny_unet):
    model = _save(tmp_path, tiny_unet)
    out = tmp_path / "grid.png"
    argv = ["sample", "--model", str(model), "--output", str(out), "--num-images", "5"]
    assert cli.main([*argv, "--num-inference-steps", "3"]) == 0
    grid = Image.open(out)
    assert grid.size == (3 * 8, 2 * 8)  # 5 images in a 3 x 2 grid of 8 x 8 tiles


@pytest.fixture
def pipeline_call(monkeypatch):
    """The keyword arguments of the last HFDDPMPipeline call."""
    seen = {}
    original = HFDDPMPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFDDPMPipeline, "__call__", spy)
    return seen


def test_class_conditional_model_draws_every_class_by_default(tmp_path, tiny_unet, pipeline_call):
    model = _save(tmp_path, tiny_unet, num_class_embeds=4)  # 3 classes + the null label
    seen = pipeline_call
    out = tmp_path / "grid.png"
    argv = ["sample", "--model", str(model), "--output", str(out), "--num-images", "4"]
    assert cli.main([*argv, "--num-inference-steps", "2"]) == 0
    assert list(seen["class_labels"]) == [0, 1, 2, 0]


def test_class_label_on_an_unconditional_model_is_an_error(tmp_path, tiny_unet):
    pipe = HFDDPMPipeline.from_pretrained(_save(tmp_path, tiny_unet))
    with pytest.raises(ValueError, match="class-conditional"):
        sample.sample_grid(pipe, num_images=2, num_inference_steps=2, class_label=1)


def test_without_a_model_it_samples_an_untrained_unet_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sample, "bundled_model_path", lambda: None)
    pipe = sample.load_for_sampling(None)
    assert "freshly initialised" in caplog.text
    assert isinstance(pipe.scheduler, HFDDPMScheduler)
    grid = sample.sample_grid(pipe, num_images=1, num_inference_steps=1)
    assert grid.size == (32, 32)


def test_output_must_be_png(tmp_path, tiny_unet, capsys):
    argv = [
        "sample",
        "--model",
        str(_save(tmp_path, tiny_unet)),
        "--output",
        str(tmp_path / "a.jpg"),
    ]
    assert cli.main(argv) == 2
    assert "--output must be a .png file" in capsys.readouterr().err
    assert not (tmp_path / "a.jpg").exists()


def test_steps_default_to_the_models_T(tmp_path, tiny_unet, pipeline_call):
    """A model with T = 10 samples in 10 steps by default (1000 used to be fixed, and failed)."""
    model = _save(tmp_path, tiny_unet)
    seen = pipeline_call
    out = tmp_path / "grid.png"
    assert (
        cli.main(["sample", "--model", str(model), "--output", str(out), "--num-images", "1"]) == 0
    )
    assert seen["num_inference_steps"] == 10
    assert Image.open(out).size == (8, 8)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


# ------------------------------------------------------------------ --sampler, --variance-type, spacing


class _Stop(Exception):
    """Raised by the spy to end a run once the pipeline call has been seen."""


@pytest.fixture
def stop_at_pipeline_call(monkeypatch):
    """The scheduler and keyword arguments of the first HFDDPMPipeline call, which then stops."""
    seen = {}

    def spy(self, *args, **kwargs):
        seen.update(kwargs, scheduler=self.scheduler)
        raise _Stop

    monkeypatch.setattr(HFDDPMPipeline, "__call__", spy)
    return seen


def _sample_log(argv, caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger=sample.__name__), pytest.raises(_Stop):
        cli.main(["sample", "--output", str(tmp_path / "g.png"), "--num-images", "2", *argv])
    return caplog.text


def test_a_calibrated_model_samples_with_the_analytic_variance_in_the_default_steps(
    tmp_path, caplog, stop_at_pipeline_call
):
    """The bundled model carries eps_second_moment: without --variance-type it samples analytic, in
    DEFAULT_SAMPLING_STEPS steps, and the log says so."""
    from hf_ddpm.sampling.samplers import DEFAULT_SAMPLING_STEPS

    text = _sample_log([], caplog, tmp_path)
    seen = stop_at_pipeline_call
    assert seen["scheduler"].config.variance_type == "analytic"
    assert seen["num_inference_steps"] == DEFAULT_SAMPLING_STEPS
    assert (
        f"ddpm sampler, analytic variance (the model's eps_second_moment), leading spacing, "
        f"{DEFAULT_SAMPLING_STEPS} steps" in text
    ), text
    caplog.clear()
    text = _sample_log(
        ["--variance-type", "fixed_small", "--timestep-spacing", "trailing"], caplog, tmp_path
    )
    assert seen["scheduler"].config.variance_type == "fixed_small"
    assert seen["scheduler"].config.timestep_spacing == "trailing"
    assert "ddpm sampler, fixed_small variance, trailing spacing" in text, text


def test_an_uncalibrated_model_keeps_its_own_variance(tmp_path, tiny_unet, stop_at_pipeline_call):
    model = _save(tmp_path, tiny_unet)
    with pytest.raises(_Stop):
        cli.main(["sample", "--model", str(model), "--output", str(tmp_path / "g.png")])
    assert stop_at_pipeline_call["scheduler"].config.variance_type == "fixed_small"


@pytest.mark.parametrize("sampler", ["diffusers-ddim", "dpm-solver++"])
def test_diffusers_samplers_give_what_diffusers_own_scheduler_gives(tmp_path, sampler, caplog):
    """--sampler diffusers-ddim / dpm-solver++ on the bundled (class-conditional) model: the same images as a
    plain loop over diffusers' DDIMScheduler / DPMSolverMultistepScheduler(dpmsolver++, order 2) built
    from the model's config, drawing every class in turn."""
    import numpy as np
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from hf_ddpm.data.image_grid import image_grid

    out = tmp_path / "g.png"
    argv = ["sample", "--output", str(out), "--num-images", "2", "--num-inference-steps", "3"]
    with caplog.at_level(logging.INFO, logger=sample.__name__):
        assert cli.main([*argv, "--sampler", sampler, "--seed", "5"]) == 0
    assert f"{sampler} sampler (diffusers), leading spacing, 3 steps" in caplog.text
    ours = np.asarray(Image.open(out).convert("L"), dtype=np.int16)

    pipe = sample.load_for_sampling(None)
    config = {k: v for k, v in pipe.scheduler.config.items() if k != "eps_second_moment"}
    scheduler = (
        DDIMScheduler.from_config(config)
        if sampler == "diffusers-ddim"
        else DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2
        )
    )
    scheduler.set_timesteps(3)
    unet = pipe.unet
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(5)
    x = randn_tensor((2, unet.config.in_channels, size, size), generator=generator)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(x, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
    theirs = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    expected = np.asarray(image_grid(theirs).convert("L"), dtype=np.int16)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1, np.abs(ours - expected).max()


def test_ddim_with_fixed_small_is_diffusers_ddim(tmp_path):
    """--sampler ddim (HFDDIMScheduler) --variance-type fixed_small draws what --sampler diffusers-ddim
    draws (eta 0), within a gray level of 8-bit rounding."""
    import numpy as np

    images = []
    for extra in (
        ["--sampler", "ddim", "--variance-type", "fixed_small"],
        ["--sampler", "diffusers-ddim"],
    ):
        out = tmp_path / f"{extra[1]}.png"
        argv = ["sample", "--output", str(out), "--num-images", "2", "--num-inference-steps", "4"]
        assert cli.main([*argv, *extra, "--seed", "2"]) == 0
        images.append(np.asarray(Image.open(out).convert("L"), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--sampler", "euler"], ["--sampler", "ddpm", "ddim", "diffusers-ddim", "unipc"]),
        (["--variance-type", "huge"], ["--variance-type", "fixed_small", "analytic"]),
        (["--timestep-spacing", "even"], ["--timestep-spacing", "leading", "optimal"]),
        (["--variance-type", "analytic"], ["--variance-type analytic", "hf-ddpm calibrate"]),
        (["--timestep-spacing", "optimal"], ["--timestep-spacing optimal", "hf-ddpm calibrate"]),
        (["--variance-type", "learned"], ["--variance-type learned", "output channels"]),
        (
            ["--sampler", "diffusers-ddim", "--variance-type", "fixed_large"],
            ["--variance-type", "diffusers-ddim"],
        ),
        (
            ["--sampler", "ddim", "--variance-type", "fixed_large"],
            ["--variance-type", "fixed_small, analytic, sn, npr"],
        ),
        (["--sampler", "ddim", "--timestep-spacing", "optimal"], ["optimal", "--sampler ddpm"]),
    ],
)
def test_bad_sampling_choices_are_one_line_errors(tmp_path, tiny_unet, capsys, extra, words):
    model = _save(tmp_path, tiny_unet)  # not calibrated
    argv = ["sample", "--model", str(model), "--output", str(tmp_path / "g.png"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("sampler", ["unipc", "dpm-solver++-sde"])
def test_more_diffusers_samplers_run_and_draw_the_same_with_the_same_seed(
    tmp_path, tiny_unet, sampler
):
    """UniPC (deterministic: its step takes no generator) and SDE-DPM-Solver++ (stochastic) run through
    the pipeline; the same seed draws the same grid, another seed another one for the SDE."""
    import numpy as np

    model = _save(tmp_path, tiny_unet)
    grids = []
    for seed in ("1", "1", "2"):
        out = tmp_path / f"{sampler}-{seed}-{len(grids)}.png"
        argv = ["sample", "--model", str(model), "--output", str(out), "--num-images", "2"]
        assert (
            cli.main([*argv, "--num-inference-steps", "4", "--sampler", sampler, "--seed", seed])
            == 0
        )
        grids.append(np.asarray(Image.open(out), dtype=np.int16))
    assert np.array_equal(grids[0], grids[1])
    if sampler == "dpm-solver++-sde":
        assert not np.array_equal(grids[0], grids[2])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-images", "0"], "--num-images must be >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--dtype", "float16", "--device", "cpu"], "--dtype float16 is not supported on CPU"),
        (["--output", "x.png"], "--output writes one grid and --output-dir one PNG per image"),
    ],
)
def test_sample_folder_bad_input_is_one_line_naming_the_flag(
    tmp_path, tiny_unet, capsys, extra, message
):
    model = _save(tmp_path, tiny_unet)
    argv = ["sample", str(model), "--output-dir", str(tmp_path / "s"), "--num-inference-steps", "2"]
    assert cli.main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-ddpm sample: error: ") and message in err
    assert "\n" not in err


def test_an_unwritable_output_dir_is_one_line_naming_it(tmp_path, tiny_unet, capsys):
    model = _save(tmp_path, tiny_unet)
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "sub"
    argv = ["sample", str(model), "--output-dir", str(target), "--num-inference-steps", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"--output-dir {target}: cannot create it" in err and "\n" not in err


def test_a_full_disk_is_one_line_naming_the_file_and_exit_1(
    tmp_path, tiny_unet, capsys, monkeypatch
):
    import errno

    model = _save(tmp_path, tiny_unet)

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    folder = tmp_path / "s"
    argv = ["sample", str(model), "--output-dir", str(folder), "--num-inference-steps", "2"]
    assert cli.main([*argv, "--num-images", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert (
        err
        == f"hf-ddpm sample: error: could not write {folder / '000000.png'}: No space left on device"
    )


def test_a_rerun_with_other_settings_is_refused_in_one_line(tmp_path, tiny_unet, capsys):
    model = _save(tmp_path, tiny_unet)
    argv = ["sample", str(model), "--output-dir", str(tmp_path / "s"), "--num-images", "2"]
    assert cli.main([*argv, "--num-inference-steps", "2"]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--num-inference-steps", "3", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "num_inference_steps 2 (folder) vs 3 (now)" in err and "seed 0 (folder) vs 1 (now)" in err
    )
    assert cli.main([*argv, "--num-inference-steps", "3", "--seed", "1", "--overwrite"]) == 0


def test_a_refused_class_is_named_in_words(tmp_path, tiny_unet, capsys):
    """A folder drawn with every class in turn, resumed with one class: the refusal says so in words (it
    printed "class_label None (folder)")."""
    pipe = HFDDPMPipeline(
        unet=tiny_unet(num_class_embeds=3), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    )
    pipe.save_pretrained(tmp_path / "model")
    argv = ["sample", str(tmp_path / "model"), "--output-dir", str(tmp_path / "s")]
    argv += ["--num-images", "2", "--num-inference-steps", "2"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--class-label", "1"]) == 2
    assert "class_label every class in turn (folder) vs 1 (now)" in capsys.readouterr().err


def test_guided_sampling_makes_one_unet_call_per_step_for_both_halves(tmp_path, tiny_unet):
    pipe = HFDDPMPipeline(
        unet=tiny_unet(num_class_embeds=4), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    )
    batches = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k)
    pipe(batch_size=3, class_labels=[0, 1, 2], guidance_scale=2.0, num_inference_steps=4)
    assert batches == [6, 6, 6, 6]


# ------------------------------------------------------------------ sample folders: every sampling flag

CLASS_NAMES = ["ant", "bee", "cat", "dog"]


def _save_conditional(tmp_path, tiny_unet):
    """A class-conditional model trained for guidance, as hf-ddpm train lays it out: 4 named classes and
    the null label 4."""
    pipe = HFDDPMPipeline(
        unet=tiny_unet(num_class_embeds=5),
        scheduler=HFDDPMScheduler(num_train_timesteps=10),
        null_class_label=4,
        class_names=CLASS_NAMES,
    )
    pipe.save_pretrained(tmp_path / "cond")
    return tmp_path / "cond"


def _one_at_a_time(model, num_images, seed, steps, labels, scheduler=None, **call):
    """The images of a sample folder drawn independently of it: the saved pipeline called once per image
    with that image's own generator (numpy's SeedSequence with the index as spawn key) and its class."""
    import numpy as np

    pipe = HFDDPMPipeline.from_pretrained(model)
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i in range(num_images):
        state = np.random.SeedSequence(entropy=seed, spawn_key=(i,)).generate_state(1, np.uint64)
        image = pipe(
            batch_size=1,
            generator=[torch.Generator().manual_seed(int(state[0]))],
            num_inference_steps=steps,
            output_type="np",
            class_labels=[labels(i)],
            **call,
        ).images[0]
        images.append(np.rint(np.clip(image, 0, 1) * 255))
    return np.stack(images)


@pytest.mark.parametrize(
    ("extra", "labels", "guidance", "recorded_label"),
    [
        (["--class-label", "3"], lambda i: 3, 1.0, 3),
        (["--class-label", "cat"], lambda i: 2, 1.0, 2),
        (["--class-label", "dog", "--guidance-scale", "3"], lambda i: 3, 3.0, 3),
        (["--guidance-scale", "2"], lambda i: i % 4, 2.0, None),
    ],
    ids=["number", "name", "name-guided", "every-class-guided"],
)
def test_sample_folder_takes_the_class_label_and_guidance_flags(
    tmp_path, tiny_unet, extra, labels, guidance, recorded_label
):
    """--class-label by number or by the model's class name, and --guidance-scale, in folder mode: the
    images are those of the pipeline called one image at a time. (--class-label crashed here with a
    TypeError: the folder mode never turned the flag's text into a label.)"""
    import json

    import numpy as np

    from hf_ddpm.sampling.sample_folder import read_samples

    model = _save_conditional(tmp_path, tiny_unet)
    folder = tmp_path / "s"
    argv = ["sample", str(model), "--output-dir", str(folder), "--num-images", "5"]
    argv += ["--batch-size", "2", "--num-inference-steps", "3", "--seed", "4"]
    assert cli.main([*argv, *extra]) == 0
    expected = _one_at_a_time(model, 5, 4, 3, labels, guidance_scale=guidance)
    drawn = read_samples(folder).astype(int)
    assert np.abs(drawn - expected).max() <= 1
    settings = json.loads((folder / "sample_config.json").read_text())["settings"]
    assert (settings["class_label"], settings["guidance_scale"]) == (recorded_label, guidance)


def test_sample_folder_takes_the_sampler_flags(tmp_path, tiny_unet):
    """--sampler ddim --variance-type fixed_small --timestep-spacing trailing in folder mode: the images
    of the pipeline with that HFDDIMScheduler, built here from the saved scheduler config, one image at a
    time; and not those of the model's own DDPM scheduler."""
    import numpy as np

    from hf_ddpm.core.scheduling_ddim import HFDDIMScheduler
    from hf_ddpm.sampling.sample_folder import read_samples

    model = _save_conditional(tmp_path, tiny_unet)
    folder = tmp_path / "s"
    argv = ["sample", str(model), "--output-dir", str(folder), "--num-images", "3"]
    argv += ["--batch-size", "2", "--num-inference-steps", "3", "--seed", "1"]
    flags = [
        "--sampler",
        "ddim",
        "--variance-type",
        "fixed_small",
        "--timestep-spacing",
        "trailing",
    ]
    assert cli.main([*argv, *flags]) == 0
    config = HFDDPMPipeline.from_pretrained(model).scheduler.config
    ddim = HFDDIMScheduler.from_config(
        config, variance_type="fixed_small", timestep_spacing="trailing"
    )
    expected = _one_at_a_time(model, 3, 1, 3, lambda i: i % 4, scheduler=ddim)
    drawn = read_samples(folder).astype(int)
    assert np.abs(drawn - expected).max() <= 1
    own = _one_at_a_time(model, 3, 1, 3, lambda i: i % 4)
    assert np.abs(drawn - own).max() > 8


def test_a_folder_is_resumed_with_the_same_weights_from_another_path_and_refused_with_others(
    tmp_path, tiny_unet, capsys
):
    """The model is compared by the content of its weights: a copy of the folder, or a symlink to it,
    resumes the folder; other weights are refused, naming both models. (A copy was refused: the folder
    compared the model's absolute path.)"""
    import shutil

    model = _save(tmp_path, tiny_unet)
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    (tmp_path / "link").symlink_to(model, target_is_directory=True)
    folder = tmp_path / "s"
    argv = ["sample", "--output-dir", str(folder), "--num-inference-steps", "2"]
    assert cli.main([*argv, "--model", str(model), "--num-images", "2"]) == 0
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    for other, count in ((copy, 3), (tmp_path / "link", 4)):
        capsys.readouterr()
        assert cli.main([*argv, "--model", str(other), "--num-images", str(count)]) == 0
        assert f"({count - 2 if other == copy else 1} drawn now" in capsys.readouterr().out
    assert all((folder / name).read_bytes() == data for name, data in before.items())

    retrained = HFDDPMPipeline(
        unet=tiny_unet(seed=1), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    )
    retrained.save_pretrained(tmp_path / "retrained")
    assert cli.main([*argv, "--model", str(tmp_path / "retrained"), "--num-images", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the model's weights" in err, err
    assert f"{model} (folder" in err and f"{tmp_path / 'retrained'} (now" in err, err


def _installed_hf_ddpm(*argv):
    """The installed ``hf-ddpm`` entry point in a subprocess, running this tree: its real stderr, which
    pytest's log capture cannot swallow."""
    import sys
    from pathlib import Path

    command = Path(sys.executable).with_name("hf-ddpm")
    if not command.exists():
        pytest.skip(f"no hf-ddpm entry point beside {sys.executable}")
    return run_subprocess([str(command), *argv])


def test_a_refused_folder_prints_one_line_and_nothing_before_it(tmp_path, tiny_unet):
    """Refusals of the folder print exactly one line on the command's real stderr: no 'sampling N images'
    line before it (the log line came first, and the CLI tests missed it because pytest's log handler
    took basicConfig's output)."""
    model = _save(tmp_path, tiny_unet)
    folder = tmp_path / "s"
    argv = [
        "sample",
        str(model),
        "--output-dir",
        str(folder),
        "--num-images",
        "2",
        "--threads",
        "1",
    ]
    assert cli.main([*argv, "--num-inference-steps", "2"]) == 0
    refused = _installed_hf_ddpm(*argv, "--num-inference-steps", "3")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"hf-ddpm sample: error: --output-dir {folder} holds images made with other settings: "
        "num_inference_steps 2 (folder) vs 3 (now). Pass --overwrite to replace them, or choose "
        "another --output-dir"
    ], refused.stderr
    assert refused.stdout == ""


def test_compile_warms_up_once_the_folder_is_accepted_and_not_for_a_refused_one(
    tmp_path, tiny_unet, monkeypatch
):
    """--compile's warm-up (minutes for a large UNet) runs after the folder's checks, on the batch the run
    will draw; a refused folder costs none. torch.compile itself is stubbed: only the order is tested."""
    warmups = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    monkeypatch.setattr(sample, "compile_warm_up", lambda pipe, batch: warmups.append(batch))
    model = _save(tmp_path, tiny_unet)
    argv = ["sample", str(model), "--output-dir", str(tmp_path / "s"), "--compile"]
    argv += ["--num-inference-steps", "2", "--num-images", "5", "--batch-size", "4"]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--num-images", "7"]) == 0  # 2 missing: a batch of 2
    assert cli.main([*argv, "--seed", "1"]) == 2
    assert warmups == [4, 2]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--batch-size", "4"], "--batch-size is"),
        (["--npz"], "--npz is"),
        (["--overwrite", "--npz"], "--npz and --overwrite are"),
    ],
)
def test_folder_flags_in_grid_mode_are_refused_naming_output_dir(
    tmp_path, tiny_unet, capsys, extra, named
):
    """--batch-size, --npz and --overwrite act on a sample folder only; with a grid they were silently
    ignored."""
    out = tmp_path / "grid.png"
    argv = ["sample", str(_save(tmp_path, tiny_unet)), "--output", str(out), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"hf-ddpm sample: error: {named} for a sample folder: give --output-dir DIR (--output writes "
        "one grid, in one pipeline call)"
    )
    assert not out.exists()


def test_a_model_recalibrated_in_place_is_refused_naming_its_scheduler_config(
    tmp_path, tiny_unet, capsys
):
    """Gamma 0.9, 2 images drawn, recalibrated in place to Gamma 0.1 (hf-ddpm calibrate rewrites
    scheduler_config.json): the analytic variance differs, so asking for 4 images is refused, naming the
    scheduler config. (It said "2 kept" and drew 2 more with the other variance: the folder recorded the
    UNet's hash and the sampler's name only.) The unchanged config resumes."""
    import json

    import numpy as np

    from hf_ddpm.sampling.sample_folder import read_samples

    scheduler = HFDDPMScheduler(num_train_timesteps=10, eps_second_moment=[0.9] * 10)
    HFDDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    calibrated = json.loads(config_file.read_text())
    argv = ["sample", str(tmp_path / "model"), "--num-inference-steps", "3", "--seed", "2"]
    folder = tmp_path / "s"
    assert cli.main([*argv, "--output-dir", str(folder), "--num-images", "2"]) == 0
    config_file.write_text(json.dumps({**calibrated, "eps_second_moment": [0.1] * 10}))
    capsys.readouterr()
    assert cli.main([*argv, "--output-dir", str(folder), "--num-images", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err
        and "holds images made with other settings: the scheduler config differs (" in err
    )
    assert sorted(p.name for p in folder.glob("*.png")) == ["000000.png", "000001.png"]
    # The refusal matters: the recalibrated model draws other images from the same seeds.
    assert cli.main([*argv, "--output-dir", str(tmp_path / "gamma01"), "--num-images", "2"]) == 0
    assert not np.array_equal(read_samples(folder), read_samples(tmp_path / "gamma01"))

    config_file.write_text(json.dumps(calibrated))
    capsys.readouterr()
    assert cli.main([*argv, "--output-dir", str(folder), "--num-images", "3"]) == 0
    assert "(1 drawn now, 2 kept from an earlier run)" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["--output", "--output-dir"])
def test_zero_steps_are_refused_alike_in_grid_and_folder_mode(tmp_path, tiny_unet, capsys, mode):
    """--num-inference-steps 0 is out of 1..T in both modes, in the same words. (The folder mode drew the
    default steps: it read the flag with ``or``.)"""
    model = _save(tmp_path, tiny_unet)
    target = tmp_path / ("g.png" if mode == "--output" else "s")
    argv = ["sample", str(model), mode, str(target), "--num-images", "2"]
    assert cli.main([*argv, "--num-inference-steps", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "hf-ddpm sample: error: --num-inference-steps must be in 1..10 (the model's "
        "num_train_timesteps), got 0"
    ]
    assert not target.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"settings": 5}', 'its "settings" is a number, not an object'),
        ('{"settings": [1, 2]}', 'its "settings" is an array, not an object'),
        ('{"settings": null}', 'its "settings" is null, not an object'),
        ("[1, 2]", "it holds an array, not an object"),
        ('"settings"', "it holds a string, not an object"),
        ('{"num_images": 2}', 'it has no "settings"'),
        (
            '{"settings": {"seed": 0, "dtype": "float32"}}',
            "its settings lack class_label, covariance_head_sha256, guidance_scale, image_shape, "
            "num_inference_steps, sampler, scheduler_config_sha256, unet_sha256: written by an older "
            "hf-ddpm, or edited",
        ),
        ('{"settings": ', "Expecting value: line 1 column 14 (char 13)"),
    ],
    ids=["number", "array", "null", "top-array", "top-string", "no-settings", "lacks-keys", "cut"],
)
def test_a_malformed_sample_config_is_refused_in_one_line(
    tmp_path, tiny_unet, capsys, content, reason
):
    """Every shape of a broken sample_config.json gets the one line of an unreadable one, exit 2. (A
    "settings" that was not an object escaped as a TypeError or AttributeError traceback.) --overwrite
    replaces it."""
    model = _save(tmp_path, tiny_unet)
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "sample_config.json").write_text(content)
    argv = ["sample", str(model), "--output-dir", str(folder), "--num-inference-steps", "2"]
    assert cli.main([*argv, "--num-images", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"hf-ddpm sample: error: --output-dir {folder}: sample_config.json cannot be read "
        f"({reason}): pass --overwrite to replace them, or choose another --output-dir"
    ]
    assert cli.main([*argv, "--num-images", "1", "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("mode", "extra", "warmups"),
    [
        ("grid", ["--class-label", "emu"], []),
        ("folder", ["--class-label", "emu"], []),
        ("grid", ["--guidance-scale", "1"], [3]),
        ("grid", ["--guidance-scale", "2"], [6]),
        ("folder", ["--guidance-scale", "2"], [4]),
    ],
)
def test_compile_warms_up_after_the_checks_at_the_batch_the_unet_sees(
    tmp_path, tiny_unet, monkeypatch, mode, extra, warmups
):
    """A bad --class-label is refused before --compile's warm-up (minutes for a large UNet), in both modes;
    the warm-up's batch is the UNet's: 3 images, or 6 with guidance, whose two halves share one call; a
    folder's batch of 2, doubled. (Grid mode compiled before resolving the class label, and warmed a
    guided model up at N for a run at 2N.) torch.compile itself is stubbed: only order and sizes are
    tested."""
    from hf_ddpm.sampling import unet_speed

    seen = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    for module in (sample, unet_speed):  # apply_unet_speed warmed up through its own module's name
        monkeypatch.setattr(module, "compile_warm_up", lambda pipe, batch: seen.append(batch))
    model = _save_conditional(tmp_path, tiny_unet)
    folder = ["--output-dir", str(tmp_path / "s"), "--batch-size", "2"]
    target = ["--output", str(tmp_path / "g.png")] if mode == "grid" else folder
    argv = ["sample", str(model), *target, "--compile", "--num-images", "3"]
    assert cli.main([*argv, "--num-inference-steps", "2", *extra]) == (0 if warmups else 2)
    assert seen == warmups


@pytest.mark.parametrize("command", ["sample", "img2img"])
def test_the_optimal_spacing_on_an_uncalibrated_model_names_itself(
    tmp_path, tiny_unet, capsys, command
):
    """--timestep-spacing optimal without the model's eps_second_moment is refused naming that flag and
    hf-ddpm calibrate. (It said "--variance-type fixed_small --timestep-spacing optimal: variance_type
    'analytic' needs eps_second_moment": a flag not given, and a variance not asked for.)"""
    model = _save(tmp_path, tiny_unet)
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    argv = [
        command,
        str(model),
        "--output",
        str(tmp_path / "out.png"),
        "--timestep-spacing",
        "optimal",
    ]
    extra = ["--image", str(tmp_path / "in.png")] if command == "img2img" else []
    assert cli.main([*argv, *extra]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"hf-ddpm {command}: error: --timestep-spacing optimal: timestep_spacing 'optimal' needs "
        "eps_second_moment (Gamma_n); with hf_ddpm installed, compute it with `hf-ddpm calibrate "
        "MODEL --dataset ...`, which writes eps_second_moment into the model's scheduler_config.json"
    ]


@pytest.mark.parametrize("command", ["grid", "folder", "inpaint", "img2img"])
def test_the_log_line_of_a_draw_names_its_class_and_guidance(tmp_path, tiny_unet, caplog, command):
    """The one line naming sampler, variance, spacing and steps names the class (by the name the model
    records) and the guidance too, in sample (grid and folder), inpaint and img2img."""
    import numpy as np

    unet = tiny_unet(in_channels=1, num_class_embeds=3)
    scheduler = HFDDPMScheduler(num_train_timesteps=10)
    pipe = HFDDPMPipeline(unet, scheduler, null_class_label=2, class_names=["cats", "dogs"])
    pipe.save_pretrained(tmp_path / "named")
    HFDDPMPipeline(tiny_unet(in_channels=1), scheduler).save_pretrained(tmp_path / "plain")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = str(tmp_path / "out.png")
    tails = {
        "grid": ["sample", "--output", out],
        "folder": ["sample", "--output-dir", str(tmp_path / "folder"), "--overwrite"],
        "inpaint": ["inpaint", "--image", str(tmp_path / "in.png"), "--output", out]
        + ["--mask", str(tmp_path / "mask.png"), "--jump-n-sample", "1"],
        "img2img": ["img2img", "--image", str(tmp_path / "in.png"), "--output", out],
    }
    unset = "every class in turn" if command in ("grid", "folder") else "no class (the null label)"

    def draw_line(model, *extra):
        caplog.clear()
        argv = [*tails[command], "--model", str(tmp_path / model), "--num-images", "2"]
        with caplog.at_level(logging.INFO):
            assert cli.main([*argv, "--num-inference-steps", "3", *extra]) == 0
        lines = [r.getMessage() for r in caplog.records if "ddpm sampler" in r.getMessage()]
        assert len(lines) == 1, caplog.text
        assert "fixed_small variance, leading spacing, 3 steps" in lines[0], lines[0]
        return lines[0]

    assert ", 3 steps, class dogs (1), guidance 2" in draw_line(
        "named", "--class-label", "dogs", "--guidance-scale", "2"
    )
    assert f", 3 steps, {unset}, no guidance (1)" in draw_line("named")
    # An unconditional model: nothing after the steps but the folder's UNet.
    assert re.search(r", 3 steps(, UNet in [^,]*)?$", draw_line("plain"))
