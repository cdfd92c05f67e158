"""SIGTERM and SIGINT during hf-ddpm train (issue 21, item 1): the step finishes, a complete checkpoint is
written, a queued Hub upload finishes, the run says how to resume and exits 75; a second signal stops at
once and the last complete checkpoint stays valid; resuming ends bit-for-bit where an uninterrupted run
ends; under torchrun every rank stops after the same step and one checkpoint is written.

The signals come from inside the run (tests/training/train_helper.py sends them at a given forward call or
checkpoint save), so the step they land in is known."""

import json
import signal
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAINING, TORCHRUN_TWO, run_subprocess, subprocess_env
from conftest import checkpoint_weights as _weights

from hf_ddpm.training.checkpointing import latest_checkpoint, load_checkpoint, verify_checkpoint
from hf_ddpm.training.preemption import EXIT_STOPPED
from hf_ddpm.training.train import TrainConfig, train

HELPER = Path(__file__).with_name("train_helper.py")
BASE = {
    **TINY_TRAINING,
    "max_steps": 8,
    "lr_warmup_steps": 2,
    "learning_rate": 1e-3,
    "random_flip": True,
    "checkpoint_every": 4,
    "num_samples": 2,
    "calibrate": False,
    "grid": False,
}


def _env(**extra):
    return subprocess_env(TRAIN_HELPER_CLI="1", **extra)


def _run(config: dict, tmp_path: Path, name: str, signals: str = "", env=None, launcher=()):
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    cmd = [*launcher, str(HELPER), str(config_path), str(tmp_path / f"{name}-report"), signals]
    return run_subprocess(cmd if launcher else [sys.executable, *cmd], tmp_path, env=env or _env())


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run's final checkpoint."""
    out = tmp_path_factory.mktemp("straight") / "out"
    assert train(TrainConfig(**BASE, output_dir=str(out))).step == 8
    return _weights(out / "checkpoint-8")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_step_and_resume_matches_an_uninterrupted_run(
    tmp_path, straight, name
):
    out = tmp_path / "out"
    config = {**BASE, "output_dir": str(out)}
    stopped = _run(config, tmp_path, "stopped", f"6:{name}")  # in the forward of step 6
    assert stopped.returncode == EXIT_STOPPED, stopped.stderr[-3000:]
    message = f"stopped by {name} at step 6; resume with --resume-from-checkpoint latest"
    assert stopped.stderr.count(message) == 1, stopped.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    verify_checkpoint(out / "checkpoint-6")
    _, state = load_checkpoint(out / "checkpoint-6")
    # A checkpoint like the periodic ones: optimizer, RNG, data position, EMA.
    assert state["step"] == 6 and state["batches_seen"] == 6
    assert {"optimizer", "rng", "lr_scheduler", "ema"} <= set(state["training_state"]["__dict__"])
    assert not (out / "model_index.json").exists() and not list(out.glob(".*"))

    resumed = _run({**config, "resume_from_checkpoint": "latest"}, tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "checkpoint-6 at step 6" in resumed.stderr
    assert _max_difference(_weights(out / "checkpoint-8"), straight) == 0.0
    assert _max_difference(_weights(out / "checkpoint-6"), straight) > 0


def test_a_second_signal_stops_at_once_and_the_last_complete_checkpoint_stays_valid(tmp_path):
    out = tmp_path / "out"
    config = {**BASE, "output_dir": str(out), "checkpoint_every": 2}
    # The first SIGTERM in step 3; the second as the stop checkpoint (the 2nd save) starts.
    killed = _run(config, tmp_path, "killed", "3:SIGTERM,save#2:SIGTERM")
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    assert "SIGTERM received: stopping after this step" in killed.stderr
    assert latest_checkpoint(out) == out / "checkpoint-2"
    verify_checkpoint(out / "checkpoint-2")
    assert not (out / "checkpoint-3").exists()


def test_a_queued_checkpoint_upload_finishes_before_the_stopped_run_exits(tmp_path, hub_server):
    repo = "tester/preempted"
    out = tmp_path / "out"
    config = {
        **BASE,
        "output_dir": str(out),
        "checkpoint_every": 2,
        "push_to_hub": True,
        "hub_model_id": repo,
        "hub_strategy": "checkpoint",
    }
    stopped = _run(config, tmp_path, "stopped", "3:SIGTERM", env=_env(**hub_server.env))
    assert stopped.returncode == EXIT_STOPPED, stopped.stderr[-3000:]
    assert "waiting for the checkpoint upload to finish" in stopped.stderr
    remote = hub_server.files(repo)
    manifest = json.loads(remote["last-checkpoint/manifest.json"])
    assert manifest["step"] == 3
    local = json.loads((out / "checkpoint-3" / "manifest.json").read_text())
    assert manifest == local and "model_index.json" not in remote


def test_two_processes_stop_after_the_same_step_with_one_checkpoint(tmp_path):
    """Only rank 1 is signalled (in step 4); the ranks agree at the next loss read (--log-every 3): both
    stop after step 6, and rank 0 alone writes checkpoint-6. The resumed run ends with both ranks equal."""
    out = tmp_path / "out"
    config = {
        **BASE,
        "output_dir": str(out),
        "batch_size": 4,
        "log_every": 3,
        "checkpoint_every": 0,
    }
    torchrun = TORCHRUN_TWO
    stopped = _run(config, tmp_path, "stopped", "4:SIGTERM@1", launcher=torchrun)
    # torchrun reports a worker's non-zero status as its own failure.
    assert stopped.returncode != 0, stopped.stderr[-4000:]
    assert stopped.stderr.count("stopped by SIGTERM at step 6;") == 2, stopped.stderr[-4000:]
    ranks = [
        json.loads((tmp_path / "stopped-report" / f"rank-{r}.json").read_text()) for r in (0, 1)
    ]
    assert [r["step"] for r in ranks] == [6, 6]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["writes"].count("save_checkpoint") == 1 and ranks[1]["writes"] == []
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    verify_checkpoint(out / "checkpoint-6")

    resumed = _run(
        {**config, "resume_from_checkpoint": "latest"}, tmp_path, "resumed", launcher=torchrun
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    ranks = [
        json.loads((tmp_path / "resumed-report" / f"rank-{r}.json").read_text()) for r in (0, 1)
    ]
    assert [r["step"] for r in ranks] == [8, 8]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
