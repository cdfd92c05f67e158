"""hf_ddpm.training.checkpointing: atomic writes, manifests, corrupt/partial detection, pruning, state round trips,
and the end-to-end guarantee: a run killed with SIGKILL and resumed ends where an uninterrupted one does."""

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING, run_subprocess
from conftest import checkpoint_weights as _weights

from hf_ddpm.training.checkpointing import (
    CorruptCheckpointError,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    unflatten_state,
)
from hf_ddpm.training.train import TrainConfig, train

HELPER = Path(__file__).with_name("train_helper.py")


def _save(tmp_path, step, value=None):
    value = float(step) if value is None else value
    return save_checkpoint(
        tmp_path, step, {"model": {"w": torch.full((3,), value)}}, {"step": step, "note": "x"}
    )


def test_round_trip_and_manifest(tmp_path):
    path = _save(tmp_path, 7)
    assert path.name == "checkpoint-7"
    tensors, state = load_checkpoint(path)
    torch.testing.assert_close(tensors["model"]["w"], torch.full((3,), 7.0))
    assert state == {"step": 7, "note": "x"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"model.safetensors", "state.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_latest_skips_partial_and_corrupt_with_a_warning(tmp_path, caplog):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / "checkpoint-3" / "manifest.json").unlink()  # partial: died before the manifest
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the tensor data
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hf_ddpm.training.checkpointing"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert "checkpoint-3" in caplog.text and "no manifest.json" in caplog.text
    assert "checkpoint-2" in caplog.text and "checksum" in caplog.text
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-1"
    with pytest.raises(CorruptCheckpointError, match="does not match its checksum"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-2"))


def test_resume_argument_errors_and_fresh_start(tmp_path):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError, match="--resume-from-checkpoint .* does not exist"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-99"))


def test_crash_while_writing_leaves_previous_checkpoint(tmp_path, monkeypatch):
    from fault_injection import inject_write_faults

    _save(tmp_path, 1)
    faults = inject_write_faults(monkeypatch, tmp_path, nth=2, kinds=("save_file",))
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(
            tmp_path, 2, {"a": {"x": torch.ones(1)}, "b": {"y": torch.ones(1)}}, {"step": 2}
        )
    assert len(faults.failed) == 1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    # The partial folder is gone already.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_rewriting_a_step_replaces_it(tmp_path):
    _save(tmp_path, 4, value=1.0)
    _save(tmp_path, 4, value=2.0)
    tensors, _ = load_checkpoint(tmp_path / "checkpoint-4")
    torch.testing.assert_close(tensors["model"]["w"], torch.full((3,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


def test_prune_keeps_the_newest(tmp_path):
    for step in (5, 10, 15, 20):
        _save(tmp_path, step)
    deleted = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in deleted] == ["checkpoint-5", "checkpoint-10"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-15", "checkpoint-20"]


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    skeleton, tensors = flatten_state(
        {"opt": optimizer.state_dict(), "np": np.arange(5.0), "t": (1, "a", None)}
    )
    path = save_checkpoint(
        tmp_path, 3, {"model": model.state_dict(), "state": tensors}, {"s": skeleton}
    )
    loaded_tensors, loaded_state = load_checkpoint(path)
    restored = unflatten_state(loaded_state["s"], loaded_tensors["state"])
    np.testing.assert_array_equal(restored["np"], np.arange(5.0))
    assert restored["t"] == (1, "a", None)

    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(loaded_tensors["model"])
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.1)
    twin_opt.load_state_dict(restored["opt"])
    for m, opt in ((model, optimizer), (twin, twin_opt)):
        for _ in range(2):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(twin.weight, model.weight, rtol=0, atol=0)


def test_flatten_rejects_unknown_types():
    with pytest.raises(TypeError, match="cannot checkpoint a value of type object"):
        flatten_state({"a": object()})


def test_no_pickle_anywhere(tmp_path):
    path = _save(tmp_path, 1)
    assert sorted(os.listdir(path)) == ["manifest.json", "model.safetensors", "state.json"]


def _run_helper(config: dict, tmp_path: Path, name: str, kill_at: int | None = None):
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    cmd = [sys.executable, str(HELPER), str(config_path), str(tmp_path / f"{name}-report")]
    if kill_at is not None:
        cmd.append(str(kill_at))
    return run_subprocess(cmd, tmp_path)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    n, k = 4, 2
    base = {
        **TINY_TRAINING,
        "max_steps": 2 * n,
        "lr_warmup_steps": 2,
        "learning_rate": 1e-3,
        "random_flip": True,
        "checkpoint_every": n,
        "num_samples": 2,
    }
    # The uninterrupted run in this process; the interrupted one in a subprocess that SIGKILLs itself.
    straight = train(TrainConfig(**base, output_dir=str(tmp_path / "straight")))
    assert straight.step == 2 * n

    interrupted = {**base, "output_dir": str(tmp_path / "interrupted")}
    killed = _run_helper(interrupted, tmp_path, "killed", kill_at=n + k)  # forward of step n + k
    assert killed.returncode == -9, killed.stderr[-3000:]
    out = tmp_path / "interrupted"
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{n}"]

    resumed = _run_helper({**interrupted, "resume_from_checkpoint": "latest"}, tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _weights(tmp_path / "straight" / f"checkpoint-{2 * n}")
    b = _weights(out / f"checkpoint-{2 * n}")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
    # And the run really moved: the weights differ from those at the resume point.
    mid = _weights(out / f"checkpoint-{n}")
    assert any(not torch.equal(mid[key], b[key]) for key in a)
