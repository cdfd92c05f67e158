"""hf-ddpm train on a user's own small image folder (issue 14): bad files found before anything is
written, channels decided from the whole folder, defaults that scale to the run, few-step sample grids,
output folders that are never mixed, and a start-up summary."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import _tiny

from hf_ddpm.training.train import TrainConfig, train


def _folder(path: Path, grey: int = 6, colour: int = 0, size: int = 8) -> Path:
    """``grey`` grey PNGs, then ``colour`` RGB ones, named so that a grey one sorts first."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(grey):
        Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(path / f"a{i:02d}.png")
    for i in range(colour):
        pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
        Image.fromarray(pixels).save(path / f"b{i:02d}.png")
    return path


def _truncate_copy(source: Path, target: Path) -> None:
    """What ``head -c 120 some.png > zz.png`` does to a bigger PNG: its pixel data is cut off."""
    whole = source.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])


def _config(tmp_path: Path, data: Path, **overrides) -> TrainConfig:
    """test_train's tiny run, on the image folder ``data``, two steps of batch 2."""
    values = dict(train_data_dir=str(data), batch_size=2, max_steps=2, lr_warmup_steps=1)
    values.update(checkpoint_every=0, num_samples=2, learning_rate=2e-4)
    return _tiny(tmp_path, **{**values, **overrides})


# ---------------------------------------------------------------------------------- data ingestion


def test_a_truncated_image_stops_before_training_and_is_named(tmp_path):
    data = _folder(tmp_path / "c", grey=4, colour=1)
    _truncate_copy(data / "b00.png", data / "zz.png")
    (data / "aa.png").write_bytes(b"not a png")  # sorts first
    config = _config(tmp_path, data)
    with pytest.raises(ValueError) as raised:
        train(config)
    message = str(raised.value)
    assert "\n" not in message
    assert "2 of 7 images cannot be read" in message
    assert "aa.png" in message and "zz.png" in message and "--skip-bad-images" in message
    assert not Path(config.output_dir).exists()


def test_the_error_lists_the_first_ten_bad_files_and_counts_them(tmp_path):
    data = _folder(tmp_path / "c", grey=2)
    for i in range(13):
        (data / f"bad{i:02d}.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="13 of 15 images cannot be read") as raised:
        train(_config(tmp_path, data))
    message = str(raised.value)
    assert [f"bad{i:02d}.png" in message for i in range(13)] == [True] * 10 + [False] * 3
    assert "and 3 more" in message


def test_skip_bad_images_trains_on_the_rest_and_records_them(tmp_path, caplog):
    data = _folder(tmp_path / "c", grey=4)
    _truncate_copy(data / "a00.png", data / "zz.png")
    config = _config(tmp_path, data, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.data.image_datasets"):
        result = train(config)
    assert result.step == 2
    assert "zz.png" in caplog.text
    record = json.loads((Path(config.output_dir) / "train_config.json").read_text())
    assert record["data"]["skipped_images"] == ["zz.png"]
    assert record["data"]["images"] == 4


def test_one_colour_image_makes_the_folder_rgb_unless_channels_says_otherwise(tmp_path):
    from hf_ddpm.data.image_datasets import load_image_dataset, preprocess

    data = _folder(tmp_path / "c", grey=3, colour=1)  # a grey image sorts first
    mixed = load_image_dataset(train_data_dir=str(data))
    assert mixed.channels == 3
    # The grey images are converted: three equal planes holding the grey values.
    first = preprocess(mixed, 8)[0]["pixel_values"]
    grey = np.asarray(Image.open(data / "a00.png"), dtype=np.float32) / 255 * 2 - 1
    for plane in first.numpy():
        np.testing.assert_allclose(plane, grey, atol=1e-6)
    assert load_image_dataset(train_data_dir=str(data), channels=1).channels == 1
    assert load_image_dataset(train_data_dir=str(_folder(tmp_path / "g", grey=2))).channels == 1
    with pytest.raises(ValueError, match=r"--channels must be 1 \(grey\) or 3 \(RGB\), got 2"):
        train(_config(tmp_path, data, channels=2))


def test_the_scan_decodes_every_image_on_a_thread_pool_for_big_folders(tmp_path, monkeypatch):
    import threading

    from hf_ddpm.data import ingest

    data = _folder(tmp_path / "c", grey=40)
    threads = set()
    real = ingest._decoded_mode

    def recording(path):
        threads.add(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(ingest, "_decoded_mode", recording)
    paths = sorted(str(p) for p in data.iterdir())
    scan = ingest.scan_images(data, paths)
    assert scan.readable == tuple(range(40)) and scan.unreadable == () and scan.colour == 0
    assert threads and all(name.startswith("hf-ddpm-ingest") for name in threads)


# ------------------------------------------------------------------------------ defaults that scale


def test_default_warmup_is_capped_at_a_tenth_of_max_steps_with_a_note():
    short, notes = TrainConfig(max_steps=100).with_scaled_defaults(1000, 1)
    assert short.lr_warmup_steps == 10
    assert notes == [
        "--lr-warmup-steps 10: the default 5000 is capped at 10% of --max-steps 100",
    ]
    long, notes = TrainConfig(max_steps=100_000).with_scaled_defaults(1000, 1)
    assert (long.lr_warmup_steps, notes) == (5000, [])
    given, notes = TrainConfig(max_steps=100, lr_warmup_steps=40).with_scaled_defaults(1000, 1)
    assert (given.lr_warmup_steps, notes) == (40, [])
    _, notes = TrainConfig(max_steps=100, lr_warmup_steps=400).with_scaled_defaults(1000, 1)
    assert "never reaches --learning-rate" in notes[0]


def test_a_resumed_run_keeps_its_warmup_when_max_steps_grows():
    first, _ = TrainConfig(max_steps=100).with_scaled_defaults(1000, 1)
    resumed, notes = TrainConfig(max_steps=300).with_scaled_defaults(1000, 1, first.to_dict())
    assert (resumed.lr_warmup_steps, resumed.batch_size, notes) == (10, 128, [])


def test_default_batch_is_capped_at_the_data_and_a_given_one_says_what_fits():
    one, notes = TrainConfig().with_scaled_defaults(64, 1)
    assert one.batch_size == 64
    assert notes[0] == (
        "--batch-size 64: the default 128 x 1 process(es) is more than the 64 images of the data"
    )
    two, _ = TrainConfig().with_scaled_defaults(64, 2)
    assert two.batch_size == 32
    assert TrainConfig().with_scaled_defaults(1000, 2)[0].batch_size == 128
    with pytest.raises(
        ValueError, match="--batch-size 100 x 1 process.*give --batch-size 64 or less"
    ):
        TrainConfig(batch_size=100).with_scaled_defaults(64, 1)


def test_the_readme_train_command_works_on_a_64_image_folder(tmp_path, capsys, caplog):
    import shlex

    from hf_ddpm.cli import main

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("hf-ddpm train --train-data-dir ./my_images")
    end = readme.index("\n", readme.index("\\\n", start) + 2)  # the command's two lines
    command = shlex.split(readme[start:end].replace("\\\n", " "))
    push = command.index("--push-to-hub")
    args = command[2:push]  # the run itself; pushing is tested elsewhere
    assert "--batch-size" not in args and "--lr-warmup-steps" not in args
    args[args.index("./my_images")] = str(_folder(tmp_path / "my_images", grey=40, colour=24))
    args[args.index("out/my-ddpm")] = str(tmp_path / "out")
    # Made small for a test, but with the README's batch and warm-up defaults.
    small = ["--model-preset", "tiny", "--resolution", "8", "--max-steps", "2"]
    quiet = ["--num-train-timesteps", "20", "--logger", "none", "--dataloader-num-workers", "0"]
    with caplog.at_level(logging.INFO):
        assert main(["train", *args, *small, *quiet]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert (record["batch_size"], record["lr_warmup_steps"]) == (64, 1)
    assert "--batch-size 64: the default 128" in caplog.text
    assert "--lr-warmup-steps 1: the default 5000" in caplog.text


# ------------------------------------------------------------------------------------ sample grids


def _record_sampling_steps(monkeypatch) -> list[int]:
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    steps: list[int] = []
    real = HFDDPMScheduler.set_timesteps

    def recording(self, num_inference_steps=None, *args, **kwargs):
        steps.append(num_inference_steps)
        return real(self, num_inference_steps, *args, **kwargs)

    monkeypatch.setattr(HFDDPMScheduler, "set_timesteps", recording)
    return steps


def test_grids_take_the_default_steps_and_say_so(tmp_path, monkeypatch, caplog):
    """Both grids take DEFAULT_SAMPLING_STEPS; the one during training uses the trained variance, the
    final one (after calibration) the analytic variance."""
    from hf_ddpm.sampling.samplers import DEFAULT_SAMPLING_STEPS as K

    steps = _record_sampling_steps(monkeypatch)
    data = _folder(tmp_path / "c", grey=4)
    config = _config(tmp_path, data, num_train_timesteps=2 * K, sample_every=2, num_samples=3)
    with caplog.at_level(logging.INFO, logger="hf_ddpm.training.reporting"):
        train(config)
    assert steps == [K, K]  # the grid at step 2, then the final one
    assert caplog.text.count(f"sampling 3 images, {K} steps") == 2
    periodic, final = [line for line in caplog.text.splitlines() if "sampling 3 images" in line]
    assert "the scheduler's fixed_small variance" in periodic, periodic
    assert "analytic variance from the calibrated eps_second_moment" in final, final
    out = Path(config.output_dir)
    assert (out / "samples.png").is_file() and (out / "samples" / "step-0000002.png").is_file()


def test_no_grid_and_sample_every_0_draw_nothing(tmp_path, monkeypatch):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.training.checkpointing import load_checkpoint

    steps = _record_sampling_steps(monkeypatch)
    config = _config(tmp_path, _folder(tmp_path / "c", grey=4), grid=False)
    train(config)
    out = Path(config.output_dir)
    assert steps == [] and not (out / "samples.png").exists() and not (out / "samples").exists()
    # The saved pipeline still holds the EMA weights.
    tensors, _ = load_checkpoint(out / "checkpoint-2")
    saved = HFDDPMPipeline.from_pretrained(out).unet.state_dict()
    for name, value in tensors["ema"].items():
        np.testing.assert_array_equal(saved[name].numpy(), value.numpy())


# -------------------------------------------------------------------------- output folders and resume


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_a_folder_with_another_runs_checkpoints_is_refused_or_overwritten(tmp_path):
    from hf_ddpm.training.run_checkpoint import read_run_state

    data = _folder(tmp_path / "c", grey=4)
    first = _config(tmp_path, data, max_steps=4, checkpoint_every=2, sample_every=2)
    train(first)
    out = Path(first.output_dir)
    assert _checkpoints(out) == ["checkpoint-2", "checkpoint-4"]
    before = (out / "checkpoint-4" / "state.json").read_bytes()
    again = _config(tmp_path, data, max_steps=3, seed=1)
    with pytest.raises(ValueError) as raised:
        train(again)
    message = str(raised.value)
    for words in ("already holds 2 checkpoint(s)", "checkpoint-4", "--resume-from-checkpoint"):
        assert words in message
    assert "--overwrite-output-dir" in message
    assert (out / "checkpoint-4" / "state.json").read_bytes() == before

    train(_config(tmp_path, data, max_steps=3, seed=1, overwrite_output_dir=True))
    assert _checkpoints(out) == ["checkpoint-3"]
    assert not (out / "samples").exists()  # the old run's grids went with its checkpoints
    assert read_run_state(out / "checkpoint-3")["config"]["seed"] == 1
    with pytest.raises(ValueError, match="--overwrite-output-dir deletes the checkpoints"):
        train(_config(tmp_path, data, overwrite_output_dir=True, resume_from_checkpoint="latest"))


def test_the_same_command_again_is_told_its_run_is_there(tmp_path, monkeypatch):
    """Rerunning the identical `hf-ddpm train` command on a finished run said the folder held
    "checkpoint(s) of another run". With the same options it says the run is there, where it stopped,
    and how to continue or restart it; with the batch size and warm-up left to their defaults too."""
    data = _folder(tmp_path / "c", grey=4)
    first = _config(tmp_path, data, max_steps=4, checkpoint_every=2, batch_size=None)
    train(first)
    out = Path(first.output_dir)
    with pytest.raises(ValueError) as raised:
        train(first)
    message = str(raised.value)
    assert "another run" not in message, message
    assert (
        "already holds this run, with these options: it finished at step 4 (checkpoint-4)"
        in message
    )
    assert "--resume-from-checkpoint latest continues it" in message
    assert "--overwrite-output-dir starts it again" in message
    # The folder given relative to the current one is the same folder.
    monkeypatch.chdir(data.parent)
    relative = _config(tmp_path, Path(data.name), max_steps=4, checkpoint_every=2, batch_size=None)
    with pytest.raises(ValueError, match="finished at step 4"):
        train(relative)
    shutil.rmtree(out / "checkpoint-4")
    with pytest.raises(ValueError, match="it was interrupted at step 2 .checkpoint-2.") as raised:
        train(first)
    assert "continues it;" in str(raised.value)
    with pytest.raises(ValueError, match="of another run"):
        train(_config(tmp_path, data, max_steps=4, checkpoint_every=2, seed=1))


def test_resume_refuses_options_that_break_exactness_and_names_each(tmp_path, caplog):
    data = _folder(tmp_path / "c", grey=4)
    train(_config(tmp_path, data, max_steps=2, learning_rate=1e-3))
    changed = dict(resume_from_checkpoint="latest", batch_size=4, learning_rate=2e-3)
    with pytest.raises(ValueError) as raised:
        train(_config(tmp_path, data, max_steps=4, **changed))
    message = str(raised.value)
    assert "--batch-size 2 (now 4)" in message and "--learning-rate 0.001 (now 0.002)" in message
    assert "global batch: 2 (now 4" in message and "--allow-config-change" in message
    assert "--max-steps" not in message  # running longer keeps a resume exact
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.run_checkpoint"):
        result = train(_config(tmp_path, data, max_steps=4, allow_config_change=True, **changed))
    assert result.step == 4
    assert "not bit-for-bit" in caplog.text and "--batch-size 2 (now 4)" in caplog.text


def test_resume_latest_without_a_checkpoint_says_it_starts_fresh(tmp_path, caplog):
    config = _config(tmp_path, _folder(tmp_path / "c", grey=4), resume_from_checkpoint="latest")
    with caplog.at_level(logging.INFO, logger="hf_ddpm.training.setup"):
        assert train(config).step == 2
    assert "--resume-from-checkpoint latest" in caplog.text
    assert "holds no checkpoint yet, so this run starts fresh" in caplog.text


# --------------------------------------------------------------------- start-up summary and records


def _device() -> str:
    from accelerate import PartialState

    return str(PartialState().device)


def test_one_startup_line_says_device_images_parameters_batch_steps_and_warmup(tmp_path, caplog):
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    config = _config(tmp_path, _folder(tmp_path / "c", grey=6), gradient_accumulation_steps=2)
    with caplog.at_level(logging.INFO, logger="hf_ddpm.training.train"):
        train(config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on")]
    assert len(lines) == 1
    unet = HFDDPMPipeline.from_pretrained(config.output_dir).unet
    parameters = sum(p.numel() for p in unet.parameters())
    device = _device()
    assert lines[0] == (
        f"training on {device}: 6 images (1 channel(s), 8x8), "
        f"{parameters:,} parameters, batch 2 per process x 1 process(es) x 2 accumulation = 4 "
        "images per step, 2 steps, warm-up 1 steps"
    )


def test_train_config_json_names_only_the_data_the_run_read(tmp_path):
    config = _config(tmp_path, _folder(tmp_path / "c", grey=4))
    train(config)
    record = json.loads((Path(config.output_dir) / "train_config.json").read_text())
    assert record["dataset"] is None and record["train_data_dir"] == config.train_data_dir
    assert record["data"]["source"] == f"imagefolder:{config.train_data_dir}"
    # The record reads back as --config for the same run.
    again = TrainConfig.from_dict(record)
    assert again.to_dict() == TrainConfig.from_dict(config.to_dict()).to_dict()
    assert "--dataset" not in again.command()


def test_checkpoint_files_get_the_mode_a_plain_open_gives(tmp_path):
    config = _config(tmp_path, _folder(tmp_path / "c", grey=4))
    train(config)
    umask = os.umask(0)
    os.umask(umask)
    checkpoint = Path(config.output_dir) / "checkpoint-2"
    modes = {p.name: p.stat().st_mode & 0o777 for p in checkpoint.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes
    assert "model.safetensors" in modes


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 works on an accelerator")
def test_fp16_on_cpu_warns_that_it_does_nothing(tmp_path):
    # A process of its own: accelerate's state, mixed precision included, is fixed once per process.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    args = ["--train-data-dir", str(_folder(tmp_path / "c", grey=4)), "--model-preset", "tiny"]
    args += ["--resolution", "8", "--max-steps", "1", "--num-train-timesteps", "10", "--no-grid"]
    args += [
        "--logger",
        "none",
        "--dataloader-num-workers",
        "0",
        "--output-dir",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "hf_ddpm.cli", "train", *args, "--mixed-precision", "fp16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--mixed-precision fp16 does nothing on cpu: training runs in float32" in done.stderr


def test_train_help_renders_and_states_each_default_once(capsys):
    from hf_ddpm.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "10% of --max-steps" in text  # a literal percent sign survives argparse's formatting
    assert "(default: 100, or T if the model has fewer)" in text and "(default: 0.0002)" in text
    assert "--calibrate, --no-calibrate" in text and "docs/analytic-dpm.md" in text
