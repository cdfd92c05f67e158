"""The Space with a model trained on class folders (issue 22): classes offered by the names the model
records, no MNIST examples for a model of photos, and Gradio's files in a folder of the process's own."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import _tiny_unet

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
from spaces_app import app


@pytest.fixture(scope="module")
def pets_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pets")
    unet = _tiny_unet(in_channels=1, num_class_embeds=3)
    pipe = HFDDPMPipeline(
        unet=unet,
        scheduler=HFDDPMScheduler(num_train_timesteps=10),
        null_class_label=2,
        class_names=["cats", "dogs"],
    )
    pipe.save_pretrained(folder)
    # What hf-ddpm train --train-data-dir writes beside it (grey photos: the examples' own mode).
    record = {
        "train_data_dir": "photos",
        "dataset": None,
        "data": {"class_names": ["cats", "dogs"]},
    }
    (folder / "train_config.json").write_text(json.dumps(record))
    return folder


def _dropdown_choices(demo, label):
    found = [
        c["props"]["choices"]
        for c in demo.config["components"]
        if c.get("props", {}).get("label") == label
    ]
    assert found, f"no component labelled {label!r}"
    return [[name, value] for name, value in found[0]]


def test_the_class_picker_names_the_models_classes(pets_model):
    state = app.load_model(str(pets_model))
    assert state.model is not None, state.message
    assert state.model.class_names == ("cats", "dogs")
    demo = app.build_demo(state)
    assert _dropdown_choices(demo, "Class") == [["cats", 0], ["dogs", 1]]
    condition = _dropdown_choices(demo, "Condition on")
    assert condition[1:] == [["cats", 0], ["dogs", 1]] and condition[0][1] == app.NO_CLASS


def test_a_model_without_names_offers_numbered_classes(tmp_path):
    unet = _tiny_unet(in_channels=1, num_class_embeds=3)
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=10)).save_pretrained(
        tmp_path
    )
    state = app.load_model(str(tmp_path))
    assert state.model.class_names == ("class 0", "class 1")
    # no train_config.json: the examples follow the model's channels, as before
    assert app.examples_for(state.model)


def test_a_model_of_photos_gets_no_digit_examples(pets_model):
    state = app.load_model(str(pets_model))
    assert state.model.channels == 1 and state.model.trained_on == "image folder"
    assert app.examples_for(state.model) == [] and app.edit_examples(state.model) == []


def test_gradio_writes_into_a_folder_of_this_process_removed_at_exit():
    code = (
        "import os; from spaces_app import app; from gradio.utils import get_upload_folder; "
        "assert get_upload_folder() == os.environ['GRADIO_TEMP_DIR']; "
        "print(os.environ['GRADIO_TEMP_DIR'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("hf-ddpm-space-gradio-")
    assert folder.parent == Path(tempfile.gettempdir()) and not folder.exists()


def test_without_hf_ddpm_a_class_is_still_read_by_name_or_number(pets_model, run_without_hf_ddpm):
    """A Space made from spaces_app/ alone reads a class as hf-ddpm sample does, with its own fallback."""
    code = f"""
import sys
sys.path.insert(0, {str(app._HERE)!r})
import gradio as gr
import app
from ddpm_space import inputs

assert inputs.resolve_class_label.__module__ == "ddpm_space.inputs"  # the fallback, not hf_ddpm's
state = app.load_model({str(pets_model)!r})
assert state.model is not None, state.message
assert [inputs.requested_class(state, v, False) for v in ("dogs", "1", 1, 0.0)] == [1, 1, 1, 0]
assert inputs.requested_class(state, "-1", True) == inputs.NO_CLASS
for value, none_allowed in (("flower", False), ("-1", False), ("2", True)):
    try:
        inputs.requested_class(state, value, none_allowed)
    except gr.Error as error:
        print("REFUSED:", error.message)
"""
    out = run_without_hf_ddpm(code).stdout
    refused = [line for line in out.splitlines() if line.startswith("REFUSED:")]
    assert len(refused) == 3, out
    assert all("by name or number: cats (0), dogs (1)" in line for line in refused), out
