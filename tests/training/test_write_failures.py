"""Failed writes keep the last good state (issue 21, item 2), by injection (tests/fault_injection.py): a
full disk (ENOSPC) or an I/O error (EIO) while writing a periodic checkpoint, the SIGTERM checkpoint or
the final pipeline. Each is one line naming the path and the error; nothing half-written is left where
``--resume-from-checkpoint latest`` would pick it up; the previous checkpoint stays loadable; training
stops with exit 1, after one retry for a transient error. (The calibration written into the scheduler
config: tests/training/test_end_of_run.py.)"""

import errno
import os
import shlex
import signal
from functools import partial
from pathlib import Path

import pytest
from conftest import tiny_train_config
from fault_injection import inject_write_faults

from hf_ddpm.cli import main
from hf_ddpm.training.checkpointing import (
    OutputWriteError,
    latest_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from hf_ddpm.training.train import train

# model, ema and training_state: the safetensors files of one checkpoint.
FILES_PER_CHECKPOINT = 3


_tiny = partial(
    tiny_train_config,
    max_steps=6,
    lr_warmup_steps=1,
    checkpoint_every=2,
    calibrate=False,
    grid=False,
)


def _errors(err: str) -> list[str]:
    # The progress bar shares stderr without newlines.
    prefix = "hf-ddpm train:"
    return [line[line.index(prefix) :] for line in err.splitlines() if prefix in line]


@pytest.mark.parametrize("code, failed_writes", [(errno.ENOSPC, 1), (errno.EIO, 2)])
def test_a_failed_periodic_checkpoint_stops_with_one_line_and_keeps_the_previous(
    tmp_path, monkeypatch, capsys, code, failed_writes
):
    """ENOSPC is not retried; EIO is, once (and fails again: the disk stays broken)."""
    config = _tiny(tmp_path)
    out = Path(config.output_dir)
    faults = inject_write_faults(
        monkeypatch, out, nth=FILES_PER_CHECKPOINT + 1, error=code, kinds=("save_file",)
    )
    assert main(shlex.split(config.command())[1:]) == 1
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert f"writing {out / 'checkpoint-4'} failed: [Errno {code}] {os.strerror(code)}" in lines[0]
    assert f"the last complete checkpoint, {out / 'checkpoint-2'}, is intact" in lines[0]
    assert len(faults.failed) == failed_writes
    faults.enabled = False
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    verify_checkpoint(out / "checkpoint-2")
    assert not list(out.glob(".tmp*")) and not (out / "model_index.json").exists()


def test_a_transient_error_is_retried_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    config = _tiny(tmp_path)
    out = Path(config.output_dir)
    faults = inject_write_faults(
        monkeypatch,
        out,
        nth=FILES_PER_CHECKPOINT + 1,
        error=errno.EIO,
        times=1,
        kinds=("save_file",),
    )
    result = train(config)
    assert result.step == 6 and len(faults.failed) == 1
    assert "writing checkpoint-4 failed ([Errno 5] Input/output error" in caplog.text
    assert "retrying once" in caplog.text
    faults.enabled = False
    for step in (2, 4, 6):
        verify_checkpoint(out / f"checkpoint-{step}")


def test_a_failed_sigterm_checkpoint_keeps_the_previous(tmp_path, monkeypatch):
    from diffusers import UNet2DModel

    forward, calls = UNet2DModel.forward, [0]

    def signalled(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", signalled)
    config = _tiny(tmp_path)
    out = Path(config.output_dir)
    # checkpoint-2 is written; the stop checkpoint after step 3 meets a full disk.
    inject_write_faults(monkeypatch, out, nth=FILES_PER_CHECKPOINT + 1, kinds=("save_file",))
    with pytest.raises(OutputWriteError, match=r"checkpoint-3 failed: \[Errno 28\]"):
        train(config)
    assert latest_checkpoint(out) == out / "checkpoint-2"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]


def test_a_failed_final_pipeline_stops_with_one_line_and_resume_saves_it(
    tmp_path, monkeypatch, capsys
):
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    config = _tiny(tmp_path, max_steps=4)
    out = Path(config.output_dir)
    # Two checkpoints, then the pipeline's UNet weights.
    faults = inject_write_faults(
        monkeypatch, out, nth=2 * FILES_PER_CHECKPOINT + 1, kinds=("save_file",)
    )
    assert main(shlex.split(config.command())[1:]) == 1
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1 and f"writing the final pipeline into {out} failed" in lines[0], lines
    assert "No space left on device" in lines[0] and "checkpoint-4 holds the trained" in lines[0]
    assert faults.failed and not (out / "model_index.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    faults.enabled = False
    verify_checkpoint(out / "checkpoint-4")
    # Once there is space: resuming trains nothing more and saves the pipeline.
    resumed = shlex.split(config.command())[1:] + ["--resume-from-checkpoint", "latest"]
    assert main(resumed) == 0
    assert HFDDPMPipeline.from_pretrained(out).unet is not None
