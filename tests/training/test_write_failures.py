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
    latest_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from hf_ddpm.training.preemption import EXIT_STOPPED
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


def _sigterm_at_forward_call(monkeypatch, call: int) -> None:
    """Send this process SIGTERM from inside UNet forward call ``call`` (step ``call``, with no
    gradient accumulation), so that the run stops after that step."""
    from diffusers import UNet2DModel

    forward, calls = UNet2DModel.forward, [0]

    def signalled(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", signalled)


@pytest.mark.parametrize("code, failed_writes", [(errno.ENOSPC, 1), (errno.EIO, 2)])
def test_a_failed_sigterm_checkpoint_stops_with_one_line_and_keeps_the_previous(
    tmp_path, monkeypatch, capsys, code, failed_writes
):
    """checkpoint-2 is written; the stop checkpoint after step 3 meets a disk that stays broken: ENOSPC
    is not retried, EIO is, once."""
    _sigterm_at_forward_call(monkeypatch, 3)
    config = _tiny(tmp_path)
    out = Path(config.output_dir)
    faults = inject_write_faults(
        monkeypatch, out, nth=FILES_PER_CHECKPOINT + 1, error=code, kinds=("save_file",)
    )
    assert main(shlex.split(config.command())[1:]) == 1
    err = capsys.readouterr().err
    lines = [line for line in _errors(err) if "SIGTERM received" not in line]
    assert len(lines) == 1, lines
    assert f"writing {out / 'checkpoint-3'} failed: [Errno {code}] {os.strerror(code)}" in lines[0]
    assert f"the last complete checkpoint, {out / 'checkpoint-2'}, is intact" in lines[0]
    assert "stopped by SIGTERM" not in err
    assert len(faults.failed) == failed_writes
    assert all(path.startswith(str(out / ".tmp-checkpoint-3-")) for _, path in faults.failed)
    faults.enabled = False
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert latest_checkpoint(out) == out / "checkpoint-2"
    verify_checkpoint(out / "checkpoint-2")
    assert not list(out.glob(".tmp*")) and not (out / "model_index.json").exists()


def test_a_transient_error_in_the_sigterm_checkpoint_is_retried_and_the_run_stops_cleanly(
    tmp_path, monkeypatch, capsys, caplog
):
    _sigterm_at_forward_call(monkeypatch, 3)
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
    assert main(shlex.split(config.command())[1:]) == EXIT_STOPPED
    assert len(faults.failed) == 1
    assert "writing checkpoint-3 failed ([Errno 5] Input/output error" in caplog.text
    assert "retrying once" in caplog.text
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at step 3; resume with --resume-from-checkpoint latest" in err
    faults.enabled = False
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    verify_checkpoint(out / "checkpoint-3")
    assert not list(out.glob(".tmp*"))


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
    # ENOSPC is not transient: one try, no retry.
    assert len(faults.failed) == 1 and not (out / "model_index.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    faults.enabled = False
    verify_checkpoint(out / "checkpoint-4")
    # Once there is space: resuming trains nothing more and saves the pipeline.
    resumed = shlex.split(config.command())[1:] + ["--resume-from-checkpoint", "latest"]
    assert main(resumed) == 0
    assert HFDDPMPipeline.from_pretrained(out).unet is not None


def test_a_transient_error_in_the_final_pipeline_is_retried_once_and_saves_it(
    tmp_path, monkeypatch, capsys, caplog
):
    """The final pipeline follows the checkpoints' rule: one EIO, one retry, the model is saved, exit 0
    (before, the first EIO stopped the run with exit 1 and no pipeline)."""
    import torch

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.training.checkpointing import load_checkpoint

    config = _tiny(tmp_path, max_steps=4)
    out = Path(config.output_dir)
    faults = inject_write_faults(
        monkeypatch,
        out,
        nth=2 * FILES_PER_CHECKPOINT + 1,
        error=errno.EIO,
        times=1,
        kinds=("save_file",),
    )
    assert main(shlex.split(config.command())[1:]) == 0
    assert len(faults.failed) == 1 and faults.failed[0][1].endswith(".safetensors")
    assert "writing the final pipeline failed ([Errno 5] Input/output error" in caplog.text
    assert "retrying once" in caplog.text
    assert "hf-ddpm train: done at step 4" in capsys.readouterr().out
    faults.enabled = False
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    saved = HFDDPMPipeline.from_pretrained(out).unet.state_dict()
    tensors, _ = load_checkpoint(out / "checkpoint-4")
    assert saved.keys() == tensors["ema"].keys()
    assert all(torch.equal(saved[k], tensors["ema"][k]) for k in saved)
