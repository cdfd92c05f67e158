"""Resume refuses a damaged checkpoint and falls back (issue 21, item 3): for every file of a real
training checkpoint, a truncated file, a wrong SHA-256 (one flipped byte) and a missing file are refused
by name; ``latest`` takes the newest complete checkpoint and says which it skipped and why; an explicit
path to the damaged one is refused."""

import json
import logging
from pathlib import Path

import pytest
from conftest import tiny_train_config

from hf_ddpm.training.checkpointing import (
    MANIFEST,
    CorruptCheckpointError,
    resolve_resume,
)
from hf_ddpm.training.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "out"
    config = tiny_train_config(
        out.parent, max_steps=4, lr_warmup_steps=1, checkpoint_every=2, calibrate=False, grid=False
    )
    train(config)
    return out


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
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run, out)
    damaged = out / "checkpoint-4"
    _damage(damaged / name, how)
    reason = REASONS.get((how, name)) or (
        f"is missing {name}" if how == "missing" else f"{name} does not match its checksum"
    )
    if (how, name) == ("flipped byte", MANIFEST):
        # The manifest's last byte is its closing brace: flipped, the JSON does not parse.
        assert not (damaged / MANIFEST).read_text().rstrip().endswith("}")
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.checkpointing"):
        assert resolve_resume(out, "latest") == out / "checkpoint-2"
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and reason in skipped[0], skipped
    with pytest.raises(CorruptCheckpointError, match=reason):
        resolve_resume(out, str(damaged))


def test_a_manifest_that_parses_but_lies_is_caught_by_the_checksum(run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run, out)
    manifest_path = out / "checkpoint-4" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"]["model.safetensors"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert resolve_resume(out, "latest") == out / "checkpoint-2"
