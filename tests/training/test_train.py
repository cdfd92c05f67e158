"""hf-ddpm train: presets, EMA, options, data order, end-to-end run, NaN stop, push (ok and failed),
checkpoints pushed while training runs and resumed from the Hub."""

import hashlib
import json
import logging
import math
import shlex
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checkpoint_weights as _weights_of
from conftest import tiny_train_config

from hf_ddpm.training.determinism import EpochBatchSampler
from hf_ddpm.training.ema import EMA
from hf_ddpm.training.train import TrainingDivergedError, train
from hf_ddpm.training.unet_presets import PRESETS, build_unet, unet_config

_tiny = partial(
    tiny_train_config,
    max_steps=6,
    lr_warmup_steps=2,
    learning_rate=1e-3,
    checkpoint_every=3,
    num_samples=4,
)


# ---------------------------------------------------------------------------------------- presets


def test_ddpm_cifar10_preset_has_the_papers_35_7m_parameters():
    unet = build_unet(
        unet_config("ddpm-cifar10", None, resolution=32, in_channels=3, out_channels=3)
    )
    count = sum(p.numel() for p in unet.parameters())
    assert abs(count - 35.7e6) < 0.05e6  # Ho et al. 2020, appendix B
    assert unet.config.dropout == 0.1
    # Attention sits at the 16x16 level only (the second of 32, 16, 8, 4), plus the middle block.
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
    ]


def test_learned_variance_and_classes_shape_the_unet():
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    scheduler = HFDDPMScheduler(num_train_timesteps=10, variance_type="learned_range")
    config = unet_config(
        "tiny",
        None,
        resolution=8,
        in_channels=1,
        out_channels=scheduler.model_output_channels(1),
        num_class_embeds=11,
    )
    unet = build_unet(config)
    out = unet(torch.zeros(2, 1, 8, 8), torch.tensor([1, 2]), class_labels=torch.tensor([0, 10]))
    assert out.sample.shape == (2, 2, 8, 8)
    assert unet.config.num_class_embeds == 11


def test_unet_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'; choose one of"):
        unet_config("huge", None, resolution=8, in_channels=1, out_channels=1)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"block_out_channels": [8, 16], "widht": 3}))
    with pytest.raises(ValueError, match=r"unknown UNet2DModel config keys \['widht'\]"):
        unet_config(None, bad, resolution=8, in_channels=1, out_channels=1)
    clash = {**PRESETS["tiny"], "in_channels": 3}
    with pytest.raises(ValueError, match="sets in_channels=3, but the data and scheduler need 1"):
        unet_config(None, clash, resolution=8, in_channels=1, out_channels=1)
    with pytest.raises(
        ValueError, match="resolution 6 must be a positive multiple of 8 for a UNet with 4"
    ):
        unet_config("ddpm-cifar10", None, resolution=6, in_channels=1, out_channels=1)
    with pytest.raises(FileNotFoundError, match="--unet-config"):
        unet_config(None, tmp_path / "missing.json", resolution=8, in_channels=1, out_channels=1)


def test_unet_config_json_file_is_used(tmp_path):
    path = tmp_path / "unet.json"
    path.write_text(
        json.dumps({**PRESETS["tiny"], "block_out_channels": [8, 16], "norm_num_groups": 4})
    )
    config = unet_config(None, path, resolution=8, in_channels=1, out_channels=1)
    assert list(build_unet(config).config.block_out_channels) == [8, 16]


# -------------------------------------------------------------------------------------------- EMA


def _constant_model(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def test_ema_with_warmup_matches_closed_form():
    # shadow_0 = 0 and constant weights 1: shadow_n = 1 - prod_{k=1..n} d_k, and with
    # d_k = (1 + k) / (10 + k) (below 0.9999 for these n) the product telescopes to (n + 1)! 10! / (n + 10)!.
    model = _constant_model(0.0)
    ema = EMA(model, decay=0.9999)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    n = 30
    for _ in range(n):
        ema.update(model)
    product = math.factorial(n + 1) * math.factorial(10) / math.factorial(n + 10)
    for value in ema.shadow.values():
        torch.testing.assert_close(value, torch.full_like(value, 1.0 - product))


def test_ema_without_warmup_is_geometric_and_round_trips():
    model = _constant_model(2.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    for _ in range(7):
        ema.update(model)
    expected = 5.0 + (2.0 - 5.0) * 0.9**7
    for value in ema.shadow.values():
        torch.testing.assert_close(value, torch.full_like(value, expected))
    twin = EMA(_constant_model(0.0), decay=0.5)
    twin.load_state_dict(ema.state_dict())
    assert (twin.num_updates, twin.decay, twin.warmup) == (7, 0.9, False)
    target = _constant_model(0.0)
    twin.copy_to(target)
    torch.testing.assert_close(target.weight, torch.full_like(target.weight, expected))


def test_ema_rejects_bad_decay_and_mismatched_state():
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\)"):
        EMA(_constant_model(0.0), decay=1.0)
    with pytest.raises(ValueError, match="EMA state does not match the model"):
        EMA(torch.nn.Linear(2, 1)).load_state_dict(EMA(torch.nn.Conv1d(1, 1, 1)).state_dict())


# ------------------------------------------------------------------------------- options and data


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"model_preset": "huge"},
            r"--model-preset 'huge' is not one of ddpm-cifar10, small, tiny",
        ),
        ({"loss": "l1"}, r"--loss 'l1' is not one of simple, vlb, hybrid"),
        ({"prediction_type": "score"}, r"--prediction-type 'score' is not one of epsilon"),
        ({"variance_type": "big"}, r"--variance-type 'big' is not one of fixed_small"),
        ({"beta_schedule": "cosine"}, r"--beta-schedule 'cosine' is not one of linear"),
        ({"mixed_precision": "fp8"}, r"--mixed-precision 'fp8' is not one of no, fp16, bf16"),
        ({"resolution": 0}, r"--resolution must be >= 1, got 0"),
        ({"batch_size": 0}, r"--batch-size must be >= 1, got 0"),
        ({"max_steps": 0}, r"--max-steps must be >= 1"),
        ({"log_every": 0}, r"--log-every must be >= 1, got 0"),
        ({"gradient_accumulation_steps": 0}, r"--gradient-accumulation-steps must be >= 1"),
        ({"checkpoints_total_limit": 0}, r"--checkpoints-total-limit must be >= 1"),
        ({"learning_rate": 0.0}, r"--learning-rate must be > 0"),
        ({"loss": "hybrid"}, r"--loss hybrid trains a learned variance"),
        ({"push_to_hub": True}, r"--push-to-hub needs --hub-model-id"),
        (
            {"hub_strategy": "often"},
            r"--hub-strategy 'often' is not one of end, checkpoint, every_save",
        ),
        ({"hub_strategy": "checkpoint"}, r"--hub-strategy checkpoint uploads checkpoints with"),
        ({"resume_from_checkpoint": "hub"}, r"--resume-from-checkpoint hub needs --hub-model-id"),
        (
            {"push_to_hub": True, "hub_model_id": "me/bad id!!"},
            r"--hub-model-id 'me/bad id!!' is not a Hub repo id \(user/name",
        ),
        ({"sample_steps": 21}, r"--sample-steps must be in 1..20"),
    ],
)
def test_bad_options_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(_tiny(tmp_path, **overrides))


def test_bad_data_and_resume_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train-data-dir"):
        train(_tiny(tmp_path, train_data_dir=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="--resume-from-checkpoint .* does not exist"):
        train(_tiny(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-3")))
    with pytest.raises(
        ValueError, match=r"class column 'digit' not found; the columns are \['image', 'label'\]"
    ):
        train(_tiny(tmp_path, class_column="digit"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_tiny(tmp_path, batch_size=4096))


def test_cli_reports_bad_input_and_config_file_precedence(tmp_path, capsys):
    from hf_ddpm.cli import main
    from hf_ddpm.training.train import add_arguments, config_from_args

    assert main(["train", "--model-preset", "huge", "--output-dir", str(tmp_path)]) == 2
    assert "--model-preset 'huge' is not one of" in capsys.readouterr().err

    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"batch-size": 4, "max_steps": 7, "loss": "vlb"}))
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(config_file), "--max-steps", "9", "--random-flip"])
    config = config_from_args(args)
    assert (config.batch_size, config.max_steps, config.loss, config.random_flip) == (
        4,
        9,
        "vlb",
        True,
    )
    assert config.learning_rate == 2e-4  # untouched default
    config_file.write_text(json.dumps({"batch_sise": 4}))
    assert main(["train", "--config", str(config_file)]) == 2
    assert "unknown train options ['batch_sise']" in capsys.readouterr().err


def test_data_order_is_a_function_of_seed_and_epoch_and_ranks_partition_it():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    single = take(EpochBatchSampler(20, 4, 1, 0, seed=3, start=0), 10)  # 5 batches per epoch
    for epoch in (0, 1):
        assert sorted(sum(single[5 * epoch : 5 * epoch + 5], [])) == list(range(20))
    assert single[:5] != single[5:]
    assert take(EpochBatchSampler(20, 4, 1, 0, seed=3, start=7), 3) == single[7:10]
    assert take(EpochBatchSampler(20, 4, 1, 0, seed=4, start=0), 5) != single[:5]
    rank0 = take(EpochBatchSampler(20, 2, 2, 0, seed=3, start=0), 5)
    rank1 = take(EpochBatchSampler(20, 2, 2, 1, seed=3, start=0), 5)
    assert [a + b for a, b in zip(rank0, rank1)] == single[:5]


def test_learning_rate_warms_up_linearly_then_stays():
    from hf_ddpm.training.setup import linear_warmup

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(4))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    np.testing.assert_allclose(seen, [5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4])
    assert linear_warmup(0)(0) == 1.0


# ----------------------------------------------------------------------------------------- runs


def test_tiny_run_end_to_end(tmp_path):
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.training.checkpointing import load_checkpoint

    config = _tiny(
        tmp_path,
        class_column="label",
        random_flip=True,
        sample_every=3,
        logger="tensorboard",
        checkpoints_total_limit=1,
    )
    result = train(config)
    out = Path(config.output_dir)
    assert result.step == 6 and math.isfinite(result.final_loss)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    assert (out / "samples.png").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-0000003.png",
        "step-0000006.png",
    ]
    assert list((out / "logs").rglob("events.out.tfevents*"))
    assert json.loads((out / "train_config.json").read_text())["class_column"] == "label"
    card = (out / "README.md").read_text()
    assert "hf-ddpm train --dataset sklearn-digits" in card
    assert "Steps: 6" in card and f"{result.final_loss:.5f}" in card and "samples.png" in card

    # The saved pipeline holds the EMA weights of the final checkpoint.
    tensors, state = load_checkpoint(out / "checkpoint-6")
    pipe = HFDDPMPipeline.from_pretrained(out)
    saved = pipe.unet.state_dict()
    for name, value in tensors["ema"].items():
        torch.testing.assert_close(saved[name], value)
    assert pipe.unet.config.num_class_embeds == 11
    images = pipe(batch_size=2, num_inference_steps=5, output_type="np", class_labels=[1, 2]).images
    assert images.shape == (2, 8, 8, 1)
    assert state["step"] == 6 and state["batches_seen"] == 6


def test_training_ends_by_calibrating_the_ema_model_for_analytic_sampling(tmp_path, caplog):
    """The saved scheduler config carries T moments; an independent Monte Carlo estimate of
    E ||eps_theta(x_t, t)||^2 / d over the same 16 training images agrees; the final grid and a reloaded
    pipeline sample with the analytic variance; --no-calibrate saves no moments."""
    from hf_ddpm.core.pipeline import HFDDPMPipeline
    from hf_ddpm.data.image_datasets import collate, load_image_dataset, preprocess
    from hf_ddpm.sampling.sample import sampling_scheduler

    config = _tiny(tmp_path, max_steps=2, checkpoint_every=0)
    with caplog.at_level(logging.INFO):
        train(config)
    out = Path(config.output_dir)
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    moments = np.asarray(saved["eps_second_moment"], dtype=np.float64)
    assert saved["variance_type"] == "fixed_small"  # the trained default is kept
    assert moments.shape == (20,) and np.isfinite(moments).all() and (moments >= 0).all(), moments
    assert "16 x 20 = 320 network calls" in caplog.text, caplog.text
    assert "analytic variance from the calibrated eps_second_moment" in caplog.text, caplog.text

    # Brute force: fresh noise, plain means over images (no control variate), all timesteps at once.
    pipe = HFDDPMPipeline.from_pretrained(out)
    x0 = collate([preprocess(load_image_dataset("sklearn-digits"), 8)[i] for i in range(16)])
    x0 = x0["pixel_values"].repeat(20, 1, 1, 1)
    t = torch.arange(20).repeat_interleave(16)
    ab = torch.cumprod(1 - pipe.scheduler.betas.double(), 0)[t].view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).float()
    with torch.no_grad():
        eps = pipe.unet(x_t, t).sample.double()
    brute = eps.pow(2).flatten(1).mean(1).view(20, 16).mean(1).numpy()
    assert abs(brute.mean() - moments.mean()) < 0.05 * moments.mean(), (brute, moments)

    scheduler = sampling_scheduler(pipe).scheduler
    assert scheduler.config.variance_type == "analytic"
    pipe.scheduler = scheduler
    images = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert np.isfinite(images).all()

    plain = _tiny(tmp_path / "plain", max_steps=2, checkpoint_every=0, calibrate=False, grid=False)
    train(plain)
    saved = json.loads((Path(plain.output_dir) / "scheduler" / "scheduler_config.json").read_text())
    assert saved.get("eps_second_moment") is None


def _poison_loss_at_call(monkeypatch, bad_call: int) -> None:
    """Make the ``bad_call``-th training loss NaN (one micro-batch per step: the loss of that step)."""
    from hf_ddpm.core.scheduling import HFDDPMScheduler

    real = HFDDPMScheduler.training_loss
    calls = [0]

    def poisoned(self, *args, **kwargs):
        calls[0] += 1
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if calls[0] == bad_call else loss

    monkeypatch.setattr(HFDDPMScheduler, "training_loss", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from hf_ddpm.training.checkpointing import latest_checkpoint

    _poison_loss_at_call(monkeypatch, 5)
    config = _tiny(tmp_path, checkpoint_every=2)
    with pytest.raises(TrainingDivergedError, match=r"the loss became nan at step 5.*checkpoint-4"):
        train(config)
    out = Path(config.output_dir)
    assert latest_checkpoint(out) == out / "checkpoint-4"
    assert not (out / "model_index.json").exists()


def test_nan_between_loss_reads_is_caught_before_the_next_checkpoint(tmp_path, monkeypatch):
    """Losses stay on the device between reads (every --log-every steps), but a checkpoint forces a read
    first: a loss that went NaN at step 3 stops the run before checkpoint-4 holds its weights."""
    from hf_ddpm.training.checkpointing import latest_checkpoint

    _poison_loss_at_call(monkeypatch, 3)
    config = _tiny(tmp_path, checkpoint_every=2, log_every=50, max_steps=8)
    with pytest.raises(TrainingDivergedError, match=r"the loss became nan at step 3.*checkpoint-2"):
        train(config)
    out = Path(config.output_dir)
    assert latest_checkpoint(out) == out / "checkpoint-2"
    assert not (out / "checkpoint-4").exists()


def _logged_scalars(out: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # accelerate writes the hyperparameters to a folder of their own beside the scalars.
    for events in sorted({p.parent for p in (out / "logs").rglob("events.out.tfevents*")}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            return [(e.step, e.value) for e in accumulator.Scalars(tag)]
    raise AssertionError(f"no {tag!r} scalars under {out / 'logs'}")


def test_batched_loss_reads_log_every_step_as_reading_each_step_does(tmp_path):
    """--log-every only changes when losses are read from the device: every step is still logged, with
    the same loss, learning rate and gradient norm as a run that reads after each step."""
    logs = {}
    for log_every in (1, 4):
        config = _tiny(
            tmp_path / str(log_every),
            max_steps=7,
            checkpoint_every=0,
            logger="tensorboard",
            log_every=log_every,
        )
        train(config)
        logs[log_every] = {
            tag: _logged_scalars(Path(config.output_dir), tag)
            for tag in ("loss", "lr", "grad_norm")
        }
    assert [step for step, _ in logs[4]["loss"]] == list(range(1, 8))
    assert logs[4] == logs[1]
    assert all(value > 0 for _, value in logs[4]["grad_norm"])


def test_failed_push_keeps_the_output_and_says_how_to_retry_once(
    tmp_path, hub_server, no_hub_retry_sleep, capsys, caplog
):
    from hf_ddpm.cli import main
    from hf_ddpm.training.end_of_run import EXIT_PARTIAL

    hub_server.fail_next_commits(1000, "500")
    config = _tiny(tmp_path, max_steps=2, push_to_hub=True, hub_model_id="tester/down")
    out = Path(config.output_dir)
    with caplog.at_level(logging.INFO):
        assert main(shlex.split(config.command())[1:]) == EXIT_PARTIAL
    err = capsys.readouterr().err
    # Said once, on stderr, as one warning with the command that redoes it: not also logged.
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "the push to the Hub failed" in warnings[0], err
    assert f"redo it with: hf upload tester/down {out.resolve()} ." in warnings[0], err
    assert not [r for r in caplog.records if "redo" in r.getMessage()]
    assert (out / "model_index.json").is_file() and (out / "samples.png").is_file()
    assert (out / "checkpoint-2" / "manifest.json").is_file()


def test_push_to_loopback_hub_and_reload(tmp_path, hub_server):
    from hf_ddpm.core.pipeline import HFDDPMPipeline

    repo = "tester/tiny-digits"
    config = _tiny(tmp_path, max_steps=2, push_to_hub=True, hub_model_id=repo)
    result = train(config)
    assert result.warnings == [] and result.hub_url.endswith(hub_server.repos[repo].head)
    remote = hub_server.files(repo)
    out = Path(config.output_dir)
    for name in ("model_index.json", "samples.png", "train_config.json"):
        assert remote[name] == (out / name).read_bytes(), name
    card = remote["README.md"].decode()
    assert repo in card and "Steps: 2" in card
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert not [name for name in remote if name.startswith(("checkpoint-", "logs/"))]
    downloaded = HFDDPMPipeline.from_pretrained(repo)
    local = HFDDPMPipeline.from_pretrained(out)
    for name, value in local.unet.state_dict().items():
        torch.testing.assert_close(downloaded.unet.state_dict()[name], value)


# ------------------------------------------------------------------------- checkpoints on the Hub


def _remote_folder(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    prefix = f"{folder}/"
    return {name[len(prefix) :]: data for name, data in files.items() if name.startswith(prefix)}


def _local_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _assert_whole_checkpoint(files: dict[str, bytes], step: int) -> None:
    """hashlib's SHA-256 of every file equals the manifest's, and the manifest names them all."""
    manifest = json.loads(files["manifest.json"])
    assert manifest["step"] == step
    assert sorted(files) == sorted([*manifest["sha256"], "manifest.json"])
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name


def test_checkpoint_strategy_keeps_the_newest_checkpoint_in_last_checkpoint(tmp_path, hub_server):
    from huggingface_hub import HfApi

    repo = "tester/live"
    # A file left in last-checkpoint/ by an older run must not survive the replacement.
    api = HfApi()
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"old", path_in_repo="last-checkpoint/stale.bin", repo_id=repo)
    config = _tiny(
        tmp_path,
        checkpoint_every=2,
        checkpoints_total_limit=1,
        push_to_hub=True,
        hub_model_id=repo,
        hub_strategy="checkpoint",
    )
    result = train(config)
    out = Path(config.output_dir)
    assert result.warnings == [] and result.checkpoint_push_errors == []
    remote = hub_server.files(repo)
    assert _remote_folder(remote, "last-checkpoint") == _local_folder(out / "checkpoint-6")
    for name in ("model_index.json", "samples.png", "train_config.json"):
        assert remote[name] == (out / name).read_bytes(), name
    assert not [n for n in remote if n.startswith(("checkpoint-", ".hub-upload-", "logs/"))]
    assert not list(out.glob(".hub-upload-*"))


def test_every_save_strategy_uploads_each_checkpoint_to_its_own_folder(
    tmp_path, hub_server, monkeypatch
):
    import time

    from huggingface_hub import HfApi

    repo = "tester/every"
    config = _tiny(
        tmp_path,
        checkpoint_every=2,
        checkpoints_total_limit=1,
        push_to_hub=True,
        hub_model_id=repo,
        hub_strategy="every_save",
    )
    out = Path(config.output_dir)
    real_create_repo = HfApi.create_repo
    held_until_the_last_checkpoint = []

    def create_repo_on_a_slow_network(self, *args, **kwargs):
        # The uploads queue behind this first job: hold it until the last checkpoint is written, so
        # that checkpoint-2 and checkpoint-4 are pruned locally before their uploads start.
        for _ in range(1200):
            if (out / "checkpoint-6").exists():
                held_until_the_last_checkpoint.append(True)
                break
            time.sleep(0.05)
        return real_create_repo(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_repo", create_repo_on_a_slow_network)
    result = train(config)
    # Otherwise the uploads ran before the pruning and the case below was not tested.
    assert held_until_the_last_checkpoint, "checkpoint-6 was not written within 60 s"
    assert result.warnings == [] and result.checkpoint_push_errors == []
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    remote = hub_server.files(repo)
    folders = {name.split("/")[0] for name in remote if "/" in name}
    assert {f for f in folders if f.startswith("checkpoint-")} == {
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    }
    assert "last-checkpoint" not in folders
    for step in (2, 4, 6):
        _assert_whole_checkpoint(_remote_folder(remote, f"checkpoint-{step}"), step)
    assert _remote_folder(remote, "checkpoint-6") == _local_folder(out / "checkpoint-6")
    assert "model_index.json" in remote


def test_failed_checkpoint_uploads_warn_and_training_finishes(
    tmp_path, hub_server, monkeypatch, caplog, no_hub_retry_sleep
):
    import hf_ddpm.core.pushing
    from hf_ddpm.training.checkpointing import verify_checkpoint

    class _FailWhileTraining:
        """Every commit fails with a 500 until the final push begins."""

        mode = "500"
        active = True

        @property
        def remaining(self):
            return 1 if self.active else 0

        @remaining.setter
        def remaining(self, value):
            pass

    failure = _FailWhileTraining()
    hub_server.commit_failure = failure
    real_push = hf_ddpm.core.pushing.push_folder_to_hub

    def push_after_outage(*args, **kwargs):
        failure.active = False
        return real_push(*args, **kwargs)

    monkeypatch.setattr(hf_ddpm.core.pushing, "push_folder_to_hub", push_after_outage)
    repo = "tester/flaky"
    config = _tiny(
        tmp_path, checkpoint_every=2, push_to_hub=True, hub_model_id=repo, hub_strategy="checkpoint"
    )
    with caplog.at_level("WARNING", logger="hf_ddpm.training.hub_checkpoints"):
        result = train(config)
    out = Path(config.output_dir)
    assert result.step == 6
    for step in (2, 4, 6):
        verify_checkpoint(out / f"checkpoint-{step}")
    assert result.checkpoint_push_errors
    for error in result.checkpoint_push_errors:
        assert "to the Hub repo tester/flaky as last-checkpoint/ failed" in error and "500" in error
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("checkpoint-" in w and "failed" in w and "500" in w for w in warnings), warnings
    # The final push still happened, after the outage.
    assert result.warnings == [] and result.hub_url is not None
    remote = hub_server.files(repo)
    assert "model_index.json" in remote
    assert not [n for n in remote if n.startswith("last-checkpoint/")]
    assert not list(out.glob(".hub-upload-*"))


def test_resume_from_the_hub_copy_matches_an_uninterrupted_run(tmp_path, hub_server):
    repo = "tester/preempted"
    hub = dict(push_to_hub=True, hub_model_id=repo, hub_strategy="checkpoint")
    straight = train(_tiny(tmp_path / "straight", checkpoint_every=3))
    # The first machine trains 3 of the 6 steps, pushes, and is lost with its disk.
    train(_tiny(tmp_path / "lost", checkpoint_every=3, max_steps=3, **hub))
    pushed = _remote_folder(hub_server.files(repo), "last-checkpoint")
    out = tmp_path / "lost" / "out"
    shutil.rmtree(out)
    resumed = train(
        _tiny(tmp_path / "lost", checkpoint_every=3, resume_from_checkpoint="hub", **hub)
    )
    assert resumed.step == straight.step == 6
    # The Hub copy itself, not a re-trained one: a fresh start would have re-written checkpoint-3 with
    # this run's config (max_steps 6) in its state.json.
    assert _local_folder(out / "checkpoint-3") == pushed
    assert json.loads(pushed["state.json"])["config"]["max_steps"] == 3
    a = _weights_of(tmp_path / "straight" / "out" / "checkpoint-6")
    b = _weights_of(out / "checkpoint-6")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
    assert any(not torch.equal(_weights_of(out / "checkpoint-3")[key], b[key]) for key in a)
    assert _remote_folder(hub_server.files(repo), "last-checkpoint") == _local_folder(
        out / "checkpoint-6"
    )


def test_resume_from_the_hub_checks_the_manifest_and_starts_fresh_without_a_checkpoint(
    tmp_path, hub_server
):
    from huggingface_hub import HfApi

    from hf_ddpm.training.checkpointing import (
        TRAINING_GROUPS,
        CorruptCheckpointError,
        save_checkpoint,
    )
    from hf_ddpm.training.hub_checkpoints import download_hub_checkpoint

    assert download_hub_checkpoint(tmp_path / "a", "tester/absent") is None
    repo = "tester/pushed"
    api = HfApi()
    api.create_repo(repo)
    assert download_hub_checkpoint(tmp_path / "a", repo) is None  # a repo without checkpoints
    # The groups every training checkpoint has, which the download requires.
    groups = {group: {"w": torch.arange(4.0)} for group in TRAINING_GROUPS}
    source = save_checkpoint(tmp_path / "src", 7, groups, {"step": 7})
    api.upload_folder(repo_id=repo, folder_path=source, path_in_repo="last-checkpoint")
    got = download_hub_checkpoint(tmp_path / "a", repo)
    assert got == tmp_path / "a" / "checkpoint-7"
    assert _local_folder(got) == _local_folder(source)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint-7"]

    # One flipped byte on the Hub: the download is refused and nothing is left behind.
    files = hub_server.files(repo)
    weights = bytearray(files["last-checkpoint/model.safetensors"])
    weights[-1] ^= 0xFF
    files["last-checkpoint/model.safetensors"] = bytes(weights)
    hub_server.repos[repo].commit(files, "corrupt")
    with pytest.raises(
        CorruptCheckpointError, match="model.safetensors does not match its checksum"
    ):
        download_hub_checkpoint(tmp_path / "b", repo)
    assert list((tmp_path / "b").iterdir()) == []
    with pytest.raises(CorruptCheckpointError, match="tester/pushed"):
        train(_tiny(tmp_path, resume_from_checkpoint="hub", hub_model_id=repo))
    assert not list((tmp_path / "out").glob("checkpoint-*"))
