"""``hf-ddpm space``: the Space folder it assembles, its errors, and a deploy to the loopback Hub."""

from __future__ import annotations

import filecmp
import subprocess
import sys

import gradio
import pytest
from huggingface_hub import SpaceCard

from hf_ddpm import cli
from hf_ddpm.hub.space import DEFAULT_APP_DIR, prepare_space_folder

MODEL_ID = "tester/tiny-ddpm"


def test_space_folder_has_the_app_the_model_id_and_a_working_hf_ddpm(tmp_path, tiny_unet):
    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    folder = prepare_space_folder(DEFAULT_APP_DIR, MODEL_ID, tmp_path / "space")
    saved = tmp_path / "model"
    HFDDPMPipeline(tiny_unet(), HFDDPMScheduler(num_train_timesteps=10)).save_pretrained(saved)
    assert filecmp.cmp(folder / "app.py", DEFAULT_APP_DIR / "app.py", shallow=False)
    assert filecmp.cmp(
        folder / "requirements.txt", DEFAULT_APP_DIR / "requirements.txt", shallow=False
    )
    card = SpaceCard.load(folder / "README.md").data
    assert card.models == [MODEL_ID]
    # The Hub builds the Space with sdk_version: it must be the gradio the project runs and tests.
    assert (card.sdk, card.sdk_version, card.app_file) == ("gradio", gradio.__version__, "app.py")
    assert tuple(int(part) for part in str(card.python_version).split(".")) >= (3, 11)
    assert not list(folder.rglob("__pycache__"))
    # The copied modules import on their own, ahead of any installed hf_ddpm, as on the Space.
    probe = (
        f"import sys; sys.path.insert(0, {str(folder)!r})\n"
        "import hf_ddpm\n"
        f"assert hf_ddpm.__file__.startswith({str(folder)!r}), hf_ddpm.__file__\n"
        "from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler\n"
        "from hf_ddpm import variational_bound\n"
        # The app prepares uploads with the transform of training and evaluation.
        "from hf_ddpm.data.image_transform import ImageTransform, dataset_num_bins\n"
        # ... and offers the samplers of `hf-ddpm sample`.
        "from hf_ddpm.sampling.samplers import SAMPLERS, sampling_variance_type\n"
        "HFDDPMScheduler(num_train_timesteps=10)\n"
        # The app loads its model as the installed package does, with the copied loader.
        f"HFDDPMPipeline.from_pretrained({str(saved)!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["tester/demo", "--model", "."], "is a local folder, which a Space cannot read"),
        (["no-slash", "--model", MODEL_ID], "must be a Hub repo id of the form 'user/name'"),
        (["tester/demo", "--model", "bad//id"], "is not a valid Hub repo id"),
        (
            ["tester/demo", "--model", MODEL_ID, "--app-dir", "/nonexistent"],
            "is not a Space folder",
        ),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(argv, words, capsys):
    assert cli.main(["space", *argv]) == 2
    assert words in capsys.readouterr().err


def test_deploy_creates_a_gradio_space_and_uploads_the_folder(hub_server, capsys):
    assert cli.main(["space", "tester/demo", "--model", MODEL_ID]) == 0
    assert "tester/demo" in capsys.readouterr().out
    files = hub_server.files("spaces/tester/demo")
    space = hub_server.repos["spaces/tester/demo"]
    assert (space.kind, space.sdk) == ("space", "gradio")
    assert {
        "app.py",
        "README.md",
        "requirements.txt",
        "hf_ddpm/core/scheduling.py",
        "hf_ddpm/data/image_transform.py",
    } <= set(files)
    assert files["app.py"] == (DEFAULT_APP_DIR / "app.py").read_bytes()
    assert f"- {MODEL_ID}" in files["README.md"].decode()
    # The upload went to the Space (not a model repo of the same name).
    assert ("POST", "/api/spaces/tester/demo/commit/main") in hub_server.requests
    # A second deploy updates the same Space (exist_ok=True) rather than failing.
    assert cli.main(["space", "tester/demo", "--model", "tester/other-ddpm"]) == 0
    assert "- tester/other-ddpm" in hub_server.files("spaces/tester/demo")["README.md"].decode()


def test_a_refused_deploy_is_one_line_and_requests_are_not_logged(
    hub_server, no_hub_retry_sleep, capsys, caplog
):
    """Issue 14 item 14: at INFO every HTTP request was logged; a failure is reported once, exit 1."""
    import logging

    caplog.set_level(logging.INFO)
    hub_server.fail_next_commits(1000, "500")
    assert cli.main(["space", "tester/demo", "--model", MODEL_ID]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hf-ddpm space: error: Server error '500") and "Traceback" not in err
    assert err.count("hf-ddpm space") == 1 and err.count("Server error") == 1
    requests = [r for r in caplog.records if r.name.split(".")[0] in ("httpx", "httpx2")]
    assert requests == []
    assert any(
        "Retrying" in r.getMessage() for r in caplog.records
    )  # huggingface_hub's own warnings


@pytest.mark.parametrize(
    ("record", "examples"),
    [
        ({"dataset": "mnist-5k"}, True),
        ({"dataset": "sklearn-digits"}, True),
        ({"dataset": None, "train_data_dir": "photos/"}, False),
        ({"dataset": "someone/cat-photos"}, False),
        (None, False),
    ],
)
def test_the_example_digits_are_uploaded_only_for_a_model_of_bundled_digits(
    record, examples, hub_server, capsys
):
    """Issue 22: the Space of a photo model shipped MNIST examples. The model's train_config.json on the
    Hub decides: a bundled digit set gets them, a folder, a Hub dataset or no record does not."""
    import json

    from huggingface_hub import create_repo, upload_file

    create_repo(MODEL_ID, exist_ok=True)
    if record is not None:
        upload_file(
            path_or_fileobj=json.dumps(record).encode(),
            path_in_repo="train_config.json",
            repo_id=MODEL_ID,
        )
    assert cli.main(["space", "tester/demo", "--model", MODEL_ID]) == 0
    uploaded = {
        path for path in hub_server.files("spaces/tester/demo") if path.startswith("examples/")
    }
    shipped = {
        path.relative_to(DEFAULT_APP_DIR).as_posix()
        for path in (DEFAULT_APP_DIR / "examples").rglob("*")
        if path.is_file()
    }
    assert shipped and uploaded == (shipped if examples else set())
    out = capsys.readouterr().out
    assert f"hf-ddpm space: {'with' if examples else 'without'} the example digits" in out


@pytest.mark.parametrize(
    ("record", "uploaded", "why", "on_page"),
    [
        ({"dataset": "mnist-5k"}, True, "the model was trained on the bundled mnist-5k", True),
        (
            {"dataset": "mnist-5k", "train_data_dir": "photos/"},
            False,
            "the model was trained on the image folder photos/",
            False,
        ),
        (
            {"dataset": "someone/cat-photos"},
            False,
            "the model was trained on someone/cat-photos, not a bundled digit set",
            False,
        ),
        (
            {"seed": 0},
            False,
            "the train_config.json in the folder {model} names neither a dataset nor an image folder",
            True,
        ),
        (
            {"dataset": None, "train_data_dir": None},
            False,
            "the train_config.json in the folder {model} names neither a dataset nor an image folder",
            True,
        ),
        (None, False, "no train_config.json in the folder {model}", True),
    ],
    ids=["bundled", "folder", "hub", "no-data", "nulls", "no-record"],
)
def test_hf_ddpm_space_and_the_page_read_a_models_train_record_alike(
    tmp_path, tiny_unet, record, uploaded, why, on_page
):
    """``hf-ddpm space`` uploads the example digits for a model of a bundled set only (a model of unknown
    data gets none); the page shows them to a grey model unless its record names other data. A record
    naming no data was reported as "trained on None, not a bundled digit set"."""
    import json

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
    from hf_ddpm.hub.space import digit_examples_fit
    from spaces_app import app

    model = tmp_path / "model"
    pipe = HFDDPMPipeline(unet=tiny_unet(in_channels=1), scheduler=HFDDPMScheduler(10))
    pipe.save_pretrained(model)
    if record is not None:
        (model / "train_config.json").write_text(json.dumps(record))
    assert digit_examples_fit(str(model)) == (uploaded, why.format(model=model))
    assert bool(app.examples_for(app.load_model(str(model)).model)) is on_page
