"""The end of a training run (issue 21, item 6): every option is checked before step 0; the trained
pipeline is saved before any extra (calibration, grid, push), and an extra that fails costs nothing
but itself: one warning with the command that redoes it, the other extras still run, exit status 3. A
full disk while writing the calibration into the scheduler config or while saving the pipeline leaves
the previous file whole (tests/fault_injection.py)."""

import errno
import json
import shlex
from functools import partial
from pathlib import Path

import pytest
from conftest import tiny_train_config
from fault_injection import inject_write_faults

from hf_ddpm.cli import main
from hf_ddpm.training.end_of_run import EXIT_PARTIAL, EXTRAS, save_final_pipeline
from hf_ddpm.training.train import train

_tiny = partial(tiny_train_config, lr_warmup_steps=1, num_samples=4)


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"calibrate_images": 0}, "--calibrate-images"),
        ({"num_samples": 0}, "--num-samples"),
        ({"sample_steps": 0}, "--sample-steps"),
        ({"max_grad_norm": 0.0}, "--max-grad-norm"),
        ({"min_snr_gamma": -1.0}, "--min-snr-gamma"),
        ({"checkpoint_every": -1}, "--checkpoint-every"),
        ({"sample_every": -1}, "--sample-every"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"class_dropout": 1.0}, "--class-dropout"),
        ({"channels": 2}, "--channels"),
        ({"num_train_timesteps": 1}, "--num-train-timesteps"),
        ({"lr_warmup_steps": -1}, "--lr-warmup-steps"),
        ({"dataloader_num_workers": -1}, "--dataloader-num-workers"),
        ({"push_to_hub": True, "hub_model_id": "a/b/c"}, "--hub-model-id"),
    ],
)
def test_every_option_is_checked_before_anything_is_written(tmp_path, overrides, flag):
    with pytest.raises(ValueError, match=flag):
        train(_tiny(tmp_path, **overrides))
    assert not (tmp_path / "out").exists()


def test_two_calibration_images_train_calibrate_and_exit_0(tmp_path, capsys):
    """The first trial's command (--calibrate-images 2 stopped with a negative Gamma after training)."""
    config = _tiny(tmp_path, max_steps=4, calibrate_images=2)
    assert main(shlex.split(config.command())[1:]) == 0
    out = Path(config.output_dir)
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert len(saved["eps_second_moment"]) == 20 and min(saved["eps_second_moment"]) >= 0
    assert (out / "model_index.json").is_file() and (out / "samples.png").is_file()
    assert "warning" not in capsys.readouterr().err


def test_a_failing_extra_is_one_warning_with_its_redo_command_and_the_rest_still_run(
    tmp_path, monkeypatch, capsys
):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.evaluation import calibrate

    def broken(*args, **kwargs):
        raise RuntimeError("simulated calibration bug\nsecond line of detail")

    monkeypatch.setattr(calibrate, "calibrate_pipeline", broken)
    config = _tiny(tmp_path, calibrate_images=3, seed=7)
    assert main(shlex.split(config.command())[1:]) == EXIT_PARTIAL
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    out = Path(config.output_dir)
    assert len(warnings) == 1, err
    assert "calibration failed (simulated calibration bug)" in warnings[0]
    assert f"the trained model is saved in {out}" in warnings[0]
    redo = warnings[0].split("redo it with: ")[1]
    assert shlex.split(redo) == [
        "hf-ddpm",
        "calibrate",
        str(out),
        "--num-images",
        "3",
        "--dataset",
        "sklearn-digits",
        "--split",
        "train",
        "--seed",
        "7",
    ]
    # The model is whole and loads; the grid (the next extra) was still drawn.
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.eps_second_moment is None
    assert (out / "samples.png").is_file() and "samples.png" in (out / "README.md").read_text()
    # The redo command, run as printed, does the calibration.
    monkeypatch.undo()
    assert main(shlex.split(redo)[1:]) == 0
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert len(saved["eps_second_moment"]) == 20


@pytest.mark.parametrize("failure", ["mid-fit", "after the fit"])
def test_a_failed_head_fit_is_redone_by_its_printed_command(tmp_path, monkeypatch, capsys, failure):
    """Bug B: the redo command resumed from the training run's checkpoint-N ("not a fit-covariance
    checkpoint", exit 2) and left out --batch-size (the fit's checkpoint then refused a resume at 128).
    Run as printed, it finishes the head fit: afresh after a mid-fit failure, from the fit's own last
    checkpoint after one that struck once the head was fitted."""
    import torch

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.pushing import HEAD_CHECKPOINTS
    from hf_ddpm.training import fit_covariance
    from hf_ddpm.training.checkpointing import load_checkpoint

    def broken(*args, **kwargs):
        raise RuntimeError(f"simulated failure {failure}")

    name = "head_loss" if failure == "mid-fit" else "with_head"
    monkeypatch.setattr(fit_covariance, name, broken)
    config = _tiny(
        tmp_path,
        max_steps=3,
        checkpoint_every=1,
        calibrate=False,
        grid=False,
        covariance_head="npr",
        covariance_head_steps=3,
        seed=5,
    )
    assert main(shlex.split(config.command())[1:]) == EXIT_PARTIAL
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "the covariance head fit failed" in warnings[0], warnings
    out = Path(config.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        f"checkpoint-{n}" for n in (1, 2, 3)
    ]
    head_checkpoints = sorted(p.name for p in (out / HEAD_CHECKPOINTS).glob("checkpoint-*"))
    assert head_checkpoints == ([] if failure == "mid-fit" else ["checkpoint-3"])

    redo = warnings[0].split("redo it with: ")[1]
    monkeypatch.undo()
    assert main(shlex.split(redo)[1:]) == 0, capsys.readouterr().err
    pipe = HFDDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.variance_type == "npr"
    head, state = load_checkpoint(out / HEAD_CHECKPOINTS / "checkpoint-3")
    assert state["options"]["batch_size"] == config.batch_size
    for key, value in pipe.covariance_head.state_dict().items():
        assert torch.equal(value, head["head"][key]), key
    assert pipe.covariance_head.conv.weight.abs().sum() > 0


def test_a_full_disk_while_writing_the_calibration_keeps_the_saved_scheduler_config(
    tmp_path, monkeypatch, capsys
):
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    config = _tiny(tmp_path)
    out = Path(config.output_dir)
    # Only writes of file data inside scheduler/: the pipeline is written elsewhere and renamed there.
    faults = inject_write_faults(monkeypatch, out / "scheduler", kinds=("write",))
    assert main(shlex.split(config.command())[1:]) == EXIT_PARTIAL
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    config_path = out / "scheduler" / "scheduler_config.json"
    assert len(warnings) == 1 and faults.failed, err
    assert f"[Errno {errno.ENOSPC}] No space left on device: {str(config_path)!r}" in warnings[0]
    assert "redo it with: hf-ddpm calibrate" in warnings[0]
    assert _hidden(out / "scheduler") == [] and _hidden(out) == []
    faults.enabled = False
    assert HFDDPMPipeline.from_pretrained(out).scheduler.config.eps_second_moment is None


def test_extras_are_data_in_order():
    """The grid samples with the calibrated variance or the fitted head, the metrics go into the card
    the grid rewrote, and the push uploads what all of them wrote."""
    assert [extra.name for extra in EXTRAS] == [
        "calibration",
        "the covariance head fit",
        "the final sample grid",
        "the evaluation in the model card",
        "the push to the Hub",
    ]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_pipeline_save_leaves_the_previous_pipeline_loadable(tmp_path, monkeypatch, code):
    """Every write operation of the final save, failed in turn: the previous pipeline (other weights)
    comes back whole, and no hidden partial folder is left."""
    import torch
    from conftest import _tiny_unet

    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    out = tmp_path / "out"
    out.mkdir()
    card = {"description": "old"}
    old = HFDDPMPipeline(_tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=10))
    save_final_pipeline(old, out, card)
    old_weights = {k: v.clone() for k, v in old.unet.state_dict().items()}
    new = HFDDPMPipeline(_tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=10))
    with torch.no_grad():
        for parameter in new.unet.parameters():
            parameter.add_(1.0)
    counting = inject_write_faults(monkeypatch, out, nth=None)
    save_final_pipeline(new, out, {"description": "new"})
    kinds = [kind for kind, _ in counting.operations]
    assert kinds.count("rename") > 3 and len(kinds) > 10
    save_final_pipeline(old, out, card)
    # A full disk refuses every later write of data (renames need no space); a rename fails once (EIO).
    data_kinds = ("write", "save_file", "copy")
    sweeps = [(data_kinds, nth, None) for nth in range(1, len(kinds) - kinds.count("rename") + 1)]
    sweeps += [(("rename",), nth, 1) for nth in range(1, kinds.count("rename") + 1)]
    for failing, nth, times in sweeps:
        monkeypatch.undo()
        faults = inject_write_faults(
            monkeypatch, out, nth=nth, error=code, times=times, kinds=failing
        )
        with pytest.raises(OSError) as raised:
            save_final_pipeline(new, out, {"description": "new"})
        assert raised.value.errno == code and faults.failed
        faults.enabled = False
        loaded = HFDDPMPipeline.from_pretrained(out).unet.state_dict()
        assert all(torch.equal(loaded[k], old_weights[k]) for k in old_weights), faults.failed
        assert "old" in (out / "README.md").read_text(), faults.failed
        assert _hidden(out) == [], (faults.failed, _hidden(out))
    monkeypatch.undo()
    save_final_pipeline(new, out, {"description": "new"})
    loaded = HFDDPMPipeline.from_pretrained(out).unet.state_dict()
    assert not torch.equal(loaded["conv_in.weight"], old_weights["conv_in.weight"])
