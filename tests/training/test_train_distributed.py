"""hf-ddpm train with 2 processes on CPU (gloo, launched by torchrun): ranks stay in sync, only rank 0 writes.

``accelerate launch --cpu --num_processes 2`` silently runs one process (see docs), so torchrun it is.
"""

import json
from pathlib import Path

from conftest import TINY_TRAINING, TORCHRUN_TWO, run_subprocess

HELPER = Path(__file__).with_name("train_helper.py")


def test_two_processes_step_in_sync_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "out"
    config = {
        **TINY_TRAINING,
        "batch_size": 4,
        "max_steps": 4,
        "lr_warmup_steps": 1,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "output_dir": str(out),
        "checkpoint_every": 2,
        "num_samples": 2,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    report = tmp_path / "report"
    done = run_subprocess([*TORCHRUN_TWO, str(HELPER), str(config_path), str(report)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((report / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["step"] for r in ranks] == [4, 4]
    # DDP averages the gradients, so both ranks must hold bit-identical weights.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[1]["writes"] == []
    assert ranks[0]["writes"].count("save_checkpoint") == 2
    assert {"save_pretrained", "write_text", "image_save"} <= set(ranks[0]["writes"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "checkpoint-4" / "state.json").read_text())
    assert state["global_batch"] == 8 and state["batches_seen"] == 8
    assert not list(out.glob(".tmp*"))
