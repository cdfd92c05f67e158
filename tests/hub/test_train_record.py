"""The train_config.json of a model on the Hub (``model_train_record``), read by ``hf-ddpm evaluate`` and
``calibrate`` for the model's own data and by ``hf-ddpm space`` for the example digits: a repo without
the file has no record, while a refused (401) or failed (5xx) read is that error, in one line, not "no
train_config.json" just before the real error. Against the loopback Hub."""

from __future__ import annotations

import json

import pytest
from conftest import _tiny_unet

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.data.image_datasets import TRAIN_RECORD, model_train_record

MODEL = "tester/digits"


@pytest.fixture
def pushed(hub_server, tmp_path):
    """A model on the loopback Hub with the train_config.json of hf-ddpm train, and one without."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url)
    folder = tmp_path / "model"
    pipe = HFDDPMPipeline(_tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(folder)
    api.create_repo("tester/bare")
    api.upload_folder(folder_path=str(folder), repo_id="tester/bare")
    (folder / TRAIN_RECORD).write_text(json.dumps({"dataset": "mnist-5k"}))
    api.create_repo(MODEL)
    api.upload_folder(folder_path=str(folder), repo_id=MODEL)
    return hub_server


def test_the_record_is_read_and_a_repo_without_one_has_none(pushed):
    assert model_train_record(MODEL) == ({"dataset": "mnist-5k"}, f"the Hub repo {MODEL}")
    assert model_train_record("tester/bare") == (None, "the Hub repo tester/bare")
    assert model_train_record("tester/absent") == (None, "the Hub repo tester/absent")


@pytest.mark.parametrize(
    ("status", "words"), [(401, "401 Unauthorized"), (403, "403 Forbidden"), (500, "500")]
)
def test_a_refused_or_failed_read_is_the_hubs_error_in_one_line(
    pushed, no_hub_retry_sleep, status, words
):
    """It was (None, ...): "no train_config.json", whatever the Hub had answered."""
    pushed.refuse_files(TRAIN_RECORD, status)
    with pytest.raises(OSError) as raised:
        model_train_record(MODEL)
    message = str(raised.value)
    assert message.startswith(f"could not read {TRAIN_RECORD} from the Hub repo {MODEL}: ")
    assert words in message and "\n" not in message, message
    assert raised.value.__cause__ is not None  # the Hub's own error, for HF_DDPM_DEBUG=1


def test_evaluate_and_calibrate_say_the_hub_refused_not_that_the_model_has_no_record(pushed):
    """Their data default (the model's own data) asked for a data flag, "the model has no
    train_config.json", when the Hub had refused to say. (Run end to end, they download the record with
    the model, whose load then fails first.)"""
    import argparse

    from hf_ddpm.evaluation.data_options import resolve_data_flags

    pushed.refuse_files(TRAIN_RECORD, 401)
    args = argparse.Namespace(
        model=MODEL, dataset=None, train_data_dir=None, image_column=None, split="test"
    )
    with pytest.raises(OSError, match=f"could not read {TRAIN_RECORD} .*401 Unauthorized"):
        resolve_data_flags(args, "evaluate")


def test_space_says_the_hub_refused_and_uploads_nothing(pushed, capsys):
    pushed.refuse_files(TRAIN_RECORD, 401)
    assert cli.main(["space", "tester/demo", "--model", MODEL]) == 1
    captured = capsys.readouterr()
    assert f"no {TRAIN_RECORD}" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "401 Unauthorized" in lines[0], lines
    assert "spaces/tester/demo" not in pushed.repos
