"""A user's photos in class folders (issue 22): --class-from-folders trains a class-conditional model that
records its class names, sampled by name; a resumed run finds its folder by content, not by how its path
is written; the start-up log estimates the run's time."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from class_folders import class_folders
from conftest import checkpoint_weights as _weights
from PIL import Image
from test_train import _tiny

from hf_ddpm import HFDDPMPipeline, cli
from hf_ddpm.data.image_datasets import load_image_dataset
from hf_ddpm.training.train import TrainConfig, train

TINY = [
    "--model-preset", "tiny", "--resolution", "8", "--num-train-timesteps", "20", "--batch-size", "2",
    "--lr-warmup-steps", "1", "--checkpoint-every", "0", "--sample-every", "0", "--no-grid",
    "--no-calibrate", "--logger", "none", "--dataloader-num-workers", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def cats_and_dogs(tmp_path_factory):
    """A cats/ dogs/ folder of colour pictures, and a model trained on it by `hf-ddpm train
    --class-from-folders` (2 steps, tiny)."""
    root = tmp_path_factory.mktemp("pets")
    data = class_folders(root / "photos", per_class=3)
    out = root / "model"
    argv = ["train", "--train-data-dir", str(data), "--class-from-folders", *TINY]
    assert cli.main([*argv, "--max-steps", "2", "--output-dir", str(out)]) == 0
    return data, out


def test_class_folders_become_named_classes_recorded_with_the_model(cats_and_dogs):
    _, out = cats_and_dogs
    record = json.loads((out / "train_config.json").read_text())
    assert record["class_from_folders"] is True
    assert record["data"]["class_names"] == ["cats", "dogs"]
    assert json.loads((out / "model_index.json").read_text())["class_names"] == ["cats", "dogs"]
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.config.class_names == ["cats", "dogs"]
    # 2 classes and hf-ddpm train's null label
    assert pipe.unet.config.num_class_embeds == 3 and pipe.config.null_class_label == 2
    card = (out / "README.md").read_text()
    assert 'class_labels=["cats", "dogs", "cats", "dogs"], guidance_scale=2.0' in card
    assert "- classes: cats, dogs" in card and "2 classes: cats, dogs" in card
    from spaces_app import app

    assert app.load_model(str(out)).model.class_names == ("cats", "dogs")


def test_sample_takes_the_class_by_name(cats_and_dogs, tmp_path, capsys):
    _, out = cats_and_dogs
    common = ["sample", str(out), "--num-images", "2", "--num-inference-steps", "3"]
    written = {}
    for label in ("dogs", "1", "cats"):
        path = tmp_path / f"{label}.png"
        assert cli.main([*common, "--class-label", label, "--output", str(path)]) == 0
        written[label] = np.asarray(Image.open(path))
    # By name or by number, the same class and seed draw the same pixels; another class draws others.
    np.testing.assert_array_equal(written["dogs"], written["1"])
    assert not np.array_equal(written["dogs"], written["cats"])

    capsys.readouterr()
    assert cli.main([*common, "--class-label", "cow", "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--class-label 'cow'" in err and "cats (0), dogs (1)" in err


def test_inpaint_takes_the_class_by_name(cats_and_dogs, tmp_path):
    data, out = cats_and_dogs
    photo = next((data / "dogs").glob("*.png"))
    width, height = Image.open(photo).size
    # The edit commands take a mask of the image's own size.
    mask = np.zeros((height, width), np.uint8)
    mask[height // 2 :] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["inpaint", str(out), "--image", str(photo), "--mask", str(tmp_path / "mask.png")]
    argv += ["--num-inference-steps", "2", "--output", str(tmp_path / "o.png")]
    assert cli.main([*argv, "--class-label", "dogs"]) == 0
    assert Image.open(tmp_path / "o.png").size == (8, 8)


def test_images_outside_the_class_folders_are_named(tmp_path):
    data = class_folders(tmp_path / "photos", per_class=2)
    Image.new("RGB", (9, 9)).save(data / "stray.png")
    with pytest.raises(ValueError) as raised:
        load_image_dataset(train_data_dir=str(data), class_from_folders=True)
    message = str(raised.value)
    assert "--class-from-folders" in message and "stray.png" in message
    assert "cats, dogs" in message
    # --class-column label on the same folder: the imagefolder builder made no label column; say why.
    with pytest.raises(ValueError) as raised:
        load_image_dataset(train_data_dir=str(data), class_column="label")
    message = str(raised.value)
    assert "class column 'label' not found" in message
    assert "stray.png" in message and "--class-from-folders" in message


def test_class_folders_below_a_split_folder_and_nested_ones(tmp_path):
    class_folders(tmp_path / "photos" / "train", per_class=2)
    nested = tmp_path / "photos" / "train" / "cats" / "indoor"
    nested.mkdir()
    Image.new("RGB", (9, 9), (200, 40, 30)).save(nested / "sofa.png")
    data = load_image_dataset(train_data_dir=str(tmp_path / "photos"), class_from_folders=True)
    assert data.class_names == ("cats", "dogs") and data.num_classes == 2
    assert sorted(data.dataset["label"]) == [0, 0, 0, 1, 1]


def test_the_class_counts_are_of_the_images_used(tmp_path, caplog):
    """The log's per-class counts ("cats (3 images)") counted the files --skip-bad-images left out."""
    data = class_folders(tmp_path / "photos", per_class=3)
    (data / "cats" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level(logging.INFO, logger="hf_ddpm.data.image_datasets"):
        used = load_image_dataset(
            train_data_dir=str(data), class_from_folders=True, skip_bad_images=True
        )
    assert sorted(used.dataset["label"]) == [0, 0, 0, 1, 1, 1]
    counts = [r.getMessage() for r in caplog.records if "classes:" in r.getMessage()]
    assert counts == ["--class-from-folders: 2 classes: cats (3 images), dogs (3 images)"], counts


def test_class_from_folders_needs_a_folder_and_no_class_column(tmp_path, capsys):
    assert cli.main(["train", "--class-from-folders", "--output-dir", str(tmp_path / "o")]) == 2
    assert "--class-from-folders" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--class-from-folders"):
        TrainConfig(train_data_dir="x", class_column="label", class_from_folders=True).validate()


def test_a_local_folder_shows_no_download_bar(tmp_path, capfd):
    data = class_folders(tmp_path / "photos", per_class=2)
    load_image_dataset(train_data_dir=str(data), class_from_folders=True)
    assert "Downloading data" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------ resume


def _folder_run(tmp_path: Path, data: Path, out: str, **overrides) -> TrainConfig:
    values = dict(train_data_dir=str(data), batch_size=2, max_steps=4, lr_warmup_steps=1)
    values.update(checkpoint_every=2, num_samples=2, grid=False, calibrate=False)
    return _tiny(tmp_path, output_dir=str(tmp_path / out), **{**values, **overrides})


def test_a_moved_folder_written_another_way_resumes_exactly(tmp_path, monkeypatch, caplog):
    data = class_folders(tmp_path / "first" / "photos", per_class=2)
    straight = train(_folder_run(tmp_path, data, "straight"))
    assert straight.step == 4
    train(_folder_run(tmp_path, data, "resumed", max_steps=2))
    # The same images, moved (times kept) and named relative to the new working folder, with a slash.
    moved = tmp_path / "second" / "photos"
    moved.parent.mkdir()
    shutil.move(str(data), str(moved))
    monkeypatch.chdir(tmp_path / "second")
    with caplog.at_level(logging.INFO, logger="hf_ddpm.training.run_checkpoint"):
        resumed = train(
            _folder_run(tmp_path, "./photos/", "resumed", resume_from_checkpoint="latest")
        )
    assert resumed.step == 4
    assert "holds the same images as the checkpoint's" in caplog.text
    assert "not bit-for-bit" not in caplog.text
    a = _weights(tmp_path / "straight" / "checkpoint-4")
    b = _weights(tmp_path / "resumed" / "checkpoint-4")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_changed_folder_is_named_on_resume(tmp_path):
    data = class_folders(tmp_path / "photos", per_class=2)
    train(_folder_run(tmp_path, data, "run", max_steps=2))
    Image.new("RGB", (9, 9), (30, 60, 200)).save(data / "dogs" / "new.png")
    with pytest.raises(ValueError) as raised:
        train(_folder_run(tmp_path, data, "run", resume_from_checkpoint="latest"))
    message = str(raised.value)
    assert f"the images of --train-data-dir {str(data)!r}" in message
    assert "4 files" in message and "now 5 files" in message
    assert "--allow-config-change" in message


# ------------------------------------------------------------------------------------- time estimate


def test_the_start_up_log_estimates_the_whole_runs_time(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hf_ddpm.training.reporting"):
        train(_tiny(tmp_path, max_steps=8, checkpoint_every=0, grid=False, calibrate=False))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time: ")]
    assert len(lines) == 1
    assert "per step over steps 2-6" in lines[0] and "the whole run of 8 steps about" in lines[0]


def test_the_time_estimate_includes_the_calibration_and_the_head_fit(tmp_path, caplog, monkeypatch):
    """The start-up estimate left out the end-of-run calibration (16 x T network calls), which took
    longer than the training in a trial. It names the calibration and the head fit and estimates each at
    a third of a training step's time per image. A clock that says each step took exactly 1 s makes
    the figures exact: 8 images per step, so 1/24 s per image; the calibration's 16 x 20 = 320 images
    take 13.3 s, the head fit's 3 steps of 8 images 1 s."""
    from itertools import count

    from hf_ddpm.training.reporting import RunTimeEstimate

    clock = count(0.0, RunTimeEstimate.steps)  # 5 s between the two readings: 1 s per step
    monkeypatch.setattr(RunTimeEstimate, "_now", lambda self: next(clock))
    config = _tiny(
        tmp_path,
        max_steps=8,
        grid=False,
        calibrate_images=16,
        covariance_head="npr",
        covariance_head_steps=3,
    )
    assert config.batch_size == 8 and config.num_train_timesteps == 20
    with caplog.at_level(logging.INFO, logger="hf_ddpm.training.reporting"):
        train(config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time: ")]
    assert len(lines) == 1
    assert "1 s per step over steps 2-6, so the 2 steps left take about 2 s" in lines[0], lines
    assert "then the calibration (16 x 20 = 320 network calls) about 13 s" in lines[0], lines
    assert "the npr covariance head fit (3 steps of 8 images) about 1 s" in lines[0], lines
