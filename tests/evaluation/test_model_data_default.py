"""hf-ddpm calibrate and evaluate read the model's own data (its train_config.json) when no data flag is
given, and ask for one, saying where they looked, when the model records none (issue 22). Also: the
evaluation docs state the defaults --help states."""

import argparse
import json
from pathlib import Path

import pytest
from conftest import _tiny_unet
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.sampling.samplers import default_sampling_steps_in_words

T = 10


@pytest.fixture
def model_and_folder(tmp_path):
    images = tmp_path / "greys"
    images.mkdir()
    for i in range(4):
        Image.new("L", (10, 8), 50 * i).save(images / f"{i}.png")
    model = tmp_path / "model"
    unet = _tiny_unet(in_channels=1)
    HFDDPMPipeline(unet, HFDDPMScheduler(num_train_timesteps=T)).save_pretrained(model)
    return model, images


def _record(model: Path, **values) -> None:
    (model / "train_config.json").write_text(json.dumps({"dataset": None, **values}))


def test_calibrate_reads_the_data_the_model_was_trained_on(model_and_folder, capsys):
    model, images = model_and_folder
    _record(model, train_data_dir=str(images))
    assert cli.main(["calibrate", str(model), "--num-images", "2"]) == 0
    out = capsys.readouterr().out
    assert f"reading the model's own data, --train-data-dir {images}" in out
    assert "train_config.json" in out
    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert len(config["eps_second_moment"]) == T


def test_evaluate_reads_the_data_the_model_was_trained_on(model_and_folder, tmp_path, capsys):
    model, images = model_and_folder
    _record(model, train_data_dir=str(images))
    report = tmp_path / "r.json"
    argv = ["evaluate", str(model), "--metrics", "nll", "--split", "train", "--output", str(report)]
    assert cli.main(argv) == 0
    assert "reading the model's own data" in capsys.readouterr().out
    assert json.loads(report.read_text())["settings"]["dataset"] == f"imagefolder:{images}"


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_without_a_record_the_data_flag_is_asked_for(model_and_folder, command, capsys):
    model, _ = model_and_folder
    argv = [command, str(model)] + (["--metrics", "nll"] if command == "evaluate" else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"hf-ddpm {command}: error: which data?" in err
    assert (
        f"no train_config.json naming the data it was trained on (looked in the folder {model})"
        in err
    )
    assert "--dataset" in err and "--train-data-dir" in err


def test_a_recorded_folder_that_is_not_here_is_named(model_and_folder, capsys):
    model, _ = model_and_folder
    _record(model, train_data_dir="data/gone")
    assert cli.main(["calibrate", str(model)]) == 2
    err = capsys.readouterr().err
    assert "--train-data-dir 'data/gone', which is not a folder here" in err


def test_the_docs_state_the_defaults_that_help_states():
    from hf_ddpm.evaluation.evaluate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    docs = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    metrics_row = next(line for line in docs.splitlines() if line.startswith("| `--metrics`"))
    assert f"default: `{defaults['metrics']}`" in metrics_row
    grid_row = next(line for line in docs.splitlines() if line.startswith("| `--output`, `--grid"))
    # The grid's steps in the words --grid's help uses (the default, capped at T).
    assert default_sampling_steps_in_words() in grid_row
    steps_row = next(
        line for line in docs.splitlines() if line.startswith("| `--num-inference-steps`")
    )
    assert "default: T" in steps_row


def test_fd_dinov2_gives_up_at_once_when_the_hub_does_not_answer(monkeypatch):
    """Not cached, HF_HUB_OFFLINE unset, and nothing listening at the endpoint: the 3 s probe answers,
    not half a minute of huggingface_hub's retries."""
    from huggingface_hub import constants

    from hf_ddpm.evaluation.features import DinoV2Features

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(FileNotFoundError) as raised:
        DinoV2Features("facebook/dinov2-small", device="cpu")
    message = str(raised.value)
    assert "the Hub could not be reached" in message and "did not answer within 3 s" in message
    assert "--dinov2-model" in message


def test_the_model_s_own_folder_is_found_from_elsewhere_with_its_bad_files_skipped(
    tmp_path, monkeypatch, capsys
):
    """A run trained as `hf-ddpm train --train-data-dir photos --skip-bad-images` recorded "photos"
    (relative) in train_config.json: evaluate, calibrate and fit-covariance, reading the model's own data,
    failed from any other folder ("names --train-data-dir 'photos', which is not a folder here") and,
    from the same one, stopped on the bad file, asking for --skip-bad-images again. The record holds the
    absolute folder, and the commands skip what the run skipped, saying so."""
    from hf_ddpm.training.train import TrainConfig, train

    project = tmp_path / "project"
    photos = project / "photos" / "train"
    photos.mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), 40 * i).save(photos / f"{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(project)
    config = TrainConfig(
        train_data_dir="photos",
        skip_bad_images=True,
        model_preset="tiny",
        resolution=8,
        batch_size=2,
        max_steps=1,
        num_train_timesteps=T,
        checkpoint_every=0,
        sample_every=0,
        grid=False,
        calibrate=False,
        dataloader_num_workers=0,
        logger="none",
        output_dir="run",
    )
    train(config)
    record = json.loads((project / "run" / "train_config.json").read_text())
    assert record["train_data_dir"] == str(project / "photos") and record["skip_bad_images"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = str(project / "run")
    said = f"reading the model's own data, --train-data-dir {project / 'photos'} --skip-bad-images"
    commands = {
        "calibrate": ["--num-images", "2", "--output", "calibrated"],
        "fit-covariance": ["--kind", "npr", "--max-steps", "1", "--batch-size", "2"]
        + ["--output", "fitted"],
        "evaluate": ["--metrics", "nll", "--split", "train", "--output", "r.json"],
    }
    for command, flags in commands.items():
        capsys.readouterr()
        assert cli.main([command, model, *flags]) == 0, (command, capsys.readouterr().err)
        assert said in capsys.readouterr().out, command
