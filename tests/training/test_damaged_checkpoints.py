"""Resume refuses a damaged checkpoint and falls back (issue 21, item 3): for every file of a real
training checkpoint, a truncated file, a wrong SHA-256 (one flipped byte) and a missing file are refused
by name, and so are a file deleted together with its manifest entry and a manifest that is JSON but not
an object; ``latest`` takes the newest complete checkpoint and says which it skipped and why (through
``hf-ddpm train --resume-from-checkpoint latest`` too); an explicit path to the damaged one is refused."""

import json
import logging
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_subprocess, tiny_train_config

from hf_ddpm.training.checkpointing import (
    HEAD_FIT_GROUPS,
    MANIFEST,
    TRAINING_GROUPS,
    CorruptCheckpointError,
    load_checkpoint,
    required_files,
    resolve_resume,
    verify_checkpoint,
)
from hf_ddpm.training.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


def _config(out: Path) -> TrainConfig:
    return tiny_train_config(
        out.parent,
        output_dir=str(out),
        max_steps=4,
        lr_warmup_steps=1,
        checkpoint_every=2,
        calibrate=False,
        grid=False,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "out"
    train(_config(out))
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def _skipped(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]


FILES = [
    "model.safetensors",
    "ema.safetensors",
    "training_state.safetensors",
    "state.json",
    MANIFEST,
]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped byte":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    else:
        path.unlink()


REASONS = {
    ("truncated", MANIFEST): "unreadable manifest.json",
    ("flipped byte", MANIFEST): "unreadable manifest.json",
    ("missing", MANIFEST): "no manifest.json: it is partial",
}


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "missing"])
@pytest.mark.parametrize("name", FILES)
def test_every_file_damaged_every_way_is_refused_and_latest_falls_back(
    run, tmp_path, caplog, name, how
):
    out = _copy(run, tmp_path)
    damaged = out / "checkpoint-4"
    _damage(damaged / name, how)
    reason = REASONS.get((how, name)) or (
        f"is missing {name}" if how == "missing" else f"{name} does not match its checksum"
    )
    if (how, name) == ("flipped byte", MANIFEST):
        # The manifest's last byte is its closing brace: flipped, the JSON does not parse.
        assert not (damaged / MANIFEST).read_text().rstrip().endswith("}")
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.checkpointing"):
        assert resolve_resume(out, "latest", TRAINING_GROUPS) == out / "checkpoint-2"
    skipped = _skipped(caplog)
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and reason in skipped[0], skipped
    with pytest.raises(CorruptCheckpointError, match=reason):
        resolve_resume(out, str(damaged), TRAINING_GROUPS)


def test_a_manifest_that_parses_but_lies_is_caught_by_the_checksum(run, tmp_path):
    out = _copy(run, tmp_path)
    manifest_path = out / "checkpoint-4" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"]["model.safetensors"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert resolve_resume(out, "latest", TRAINING_GROUPS) == out / "checkpoint-2"


def test_a_training_checkpoint_has_exactly_the_files_a_resume_requires(run):
    """What run_checkpoint writes and what verification requires of a training checkpoint are the
    same set, so a new group cannot be saved without being required (or required without being saved)."""
    for step in (2, 4):
        files = {p.name for p in (run / f"checkpoint-{step}").iterdir()}
        assert files == required_files(TRAINING_GROUPS) | {MANIFEST}


def _delete_with_its_entry(checkpoint: Path, name: str) -> None:
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    del manifest["sha256"][name]
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    (checkpoint / name).unlink()


@pytest.mark.parametrize("name", sorted(required_files(TRAINING_GROUPS)))
def test_a_file_deleted_with_its_manifest_entry_is_refused_and_latest_falls_back(
    run, tmp_path, caplog, name
):
    """Before, the manifest's own list was all that was checked: the folder verified and the resume
    failed with a KeyError."""
    out = _copy(run, tmp_path)
    damaged = out / "checkpoint-4"
    _delete_with_its_entry(damaged, name)
    reason = f"is missing {name} (not listed in its {MANIFEST} either)"
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.checkpointing"):
        assert resolve_resume(out, "latest", TRAINING_GROUPS) == out / "checkpoint-2"
    skipped = _skipped(caplog)
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and reason in skipped[0], skipped
    with pytest.raises(CorruptCheckpointError, match=re.escape(reason)):
        resolve_resume(out, str(damaged), TRAINING_GROUPS)
    # A checkpoint of another kind (other groups) asks only for state.json.
    if name != "state.json":
        verify_checkpoint(damaged)


@pytest.mark.parametrize(
    "manifest, reason",
    [
        ([], "is not a JSON object (a list)"),
        (None, "is not a JSON object (a NoneType)"),
        ("sha256", "is not a JSON object (a str)"),
        ({"format_version": 1, "step": 4, "sha256": []}, "without its sha256 object"),
        (
            {"format_version": 1, "step": 4, "sha256": {"state.json": 5}},
            "without its sha256 object",
        ),
        ({"format_version": 1, "step": 4}, "without its sha256 object"),
    ],
)
def test_a_manifest_that_is_json_but_not_a_manifest_is_refused_by_name(
    run, tmp_path, caplog, manifest, reason
):
    """Before, ``[]`` crashed ``latest`` with a TypeError instead of falling back."""
    out = _copy(run, tmp_path)
    (out / "checkpoint-4" / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.checkpointing"):
        assert resolve_resume(out, "latest", TRAINING_GROUPS) == out / "checkpoint-2"
    skipped = _skipped(caplog)
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and reason in skipped[0], skipped


def test_hf_ddpm_train_resumes_latest_over_a_damaged_newest_checkpoint(run, tmp_path):
    """The real command: checkpoint-4 lost its EMA weights and their manifest entry; ``hf-ddpm train
    --resume-from-checkpoint latest`` says it skips checkpoint-4 and why, resumes from checkpoint-2, and
    (the resume being exact) writes a checkpoint-4 whose weights are the undamaged run's."""
    out = _copy(run, tmp_path)
    original, _ = load_checkpoint(run / "checkpoint-4", TRAINING_GROUPS)
    _delete_with_its_entry(out / "checkpoint-4", "ema.safetensors")
    argv = shlex.split(_config(out).command())[1:] + ["--resume-from-checkpoint", "latest"]
    result = run_subprocess([sys.executable, "-m", "hf_ddpm.cli", *argv], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    skipping = [line for line in result.stderr.splitlines() if "skipping" in line]
    assert len(skipping) == 1, result.stderr
    assert str(out / "checkpoint-4") in skipping[0]
    assert "is missing ema.safetensors (not listed in its manifest.json either)" in skipping[0]
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in result.stderr
    resumed, _ = load_checkpoint(out / "checkpoint-4", TRAINING_GROUPS)
    for group in ("model", "ema"):
        assert resumed[group].keys() == original[group].keys()
        assert all(torch.equal(resumed[group][k], original[group][k]) for k in original[group])


# ------------------------------------------------------------------- fit-covariance's checkpoints


def _head_fit(checkpoint_dir, resume_from=None):
    """A 4-step NPR head fit of a tiny pipeline, checkpointed at steps 2 and 4 into ``checkpoint_dir``."""
    from conftest import _tiny_unet

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
    from hf_ddpm.training.fit_covariance import FitOptions, fit_covariance_head

    pipeline = HFDDPMPipeline(_tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=20))
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    options = FitOptions(kind="npr", max_steps=4, batch_size=4, checkpoint_every=2)
    return fit_covariance_head(
        pipeline, images, options, checkpoint_dir, resume_from=resume_from, progress=False
    )


@pytest.fixture(scope="module")
def head_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "covariance-head"
    return out, _head_fit(out)


def test_a_head_fit_checkpoint_has_exactly_the_files_a_resume_requires(head_fit):
    out, _ = head_fit
    for step in (2, 4):
        files = {p.name for p in (out / f"checkpoint-{step}").iterdir()}
        assert files == required_files(HEAD_FIT_GROUPS) | {MANIFEST}


@pytest.mark.parametrize("name", sorted(required_files(HEAD_FIT_GROUPS)))
def test_a_head_fit_file_deleted_with_its_manifest_entry_falls_back(
    head_fit, tmp_path, caplog, name
):
    """fit-covariance resolved and loaded its checkpoints without the groups a head checkpoint holds: with
    head.safetensors deleted together with its manifest entry, the resume crashed with KeyError 'head'.
    Now 'latest' skips it, naming why, and the fit resumed from checkpoint-2 ends with the uninterrupted
    fit's head; the damaged folder given by path is refused."""
    whole_out, whole = head_fit
    out = tmp_path / "covariance-head"
    shutil.copytree(whole_out, out)
    damaged = out / "checkpoint-4"
    _delete_with_its_entry(damaged, name)
    reason = f"is missing {name} (not listed in its {MANIFEST} either)"
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.checkpointing"):
        resumed = _head_fit(out, "latest")
    skipped = _skipped(caplog)
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and reason in skipped[0], skipped
    assert resumed.step == 4 and resumed.losses == whole.losses
    for key, value in whole.head.state_dict().items():
        assert torch.equal(value, resumed.head.state_dict()[key]), key
    _delete_with_its_entry(out / "checkpoint-4", name)
    with pytest.raises(CorruptCheckpointError, match=re.escape(reason)):
        _head_fit(out, str(out / "checkpoint-4"))
