"""``hf-ddpm evaluate`` over 2 processes (torchrun, gloo on CPU) gives one process's report, and
``--samples`` scores a sample folder or an evaluators' .npz without drawing."""

import json

import numpy as np
import pytest
import torch
from conftest import TORCHRUN_TWO, _tiny_unet, run_subprocess

from hf_ddpm.cli import main
from hf_ddpm.sampling.sample_folder import read_samples


@pytest.fixture(scope="module")
def model_and_dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler

    folder = tmp_path_factory.mktemp("eval")
    HFDDPMPipeline(
        _tiny_unet(in_channels=1), HFDDPMScheduler(num_train_timesteps=10)
    ).save_pretrained(folder / "model")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    Dinov2Model(config).save_pretrained(folder / "dinov2")
    return folder / "model", str(folder / "dinov2")


def _argv(model, dinov2, tmp_path, name, *extra):
    return [
        "evaluate",
        str(model),
        "--dataset",
        "mnist-5k",
        "--metrics",
        "nll,fd-dinov2",
        "--dinov2-model",
        dinov2,
        "--num-samples",
        "6",
        "--batch-size",
        "2",
        "--max-reference-images",
        "8",
        "--stats-cache-dir",
        str(tmp_path / "stats"),
        "--output",
        str(tmp_path / f"{name}.json"),
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def test_two_processes_report_what_one_reports(model_and_dinov2, tmp_path):
    model, dinov2 = model_and_dinov2
    one_dir, two_dir = tmp_path / "samples-1", tmp_path / "samples-2"
    with pytest.warns(UserWarning, match="samples of 16-dimensional features"):
        assert main(_argv(model, dinov2, tmp_path, "one", "--samples-dir", str(one_dir))) == 0
    two = _argv(model, dinov2, tmp_path, "two", "--samples-dir", str(two_dir))
    done = run_subprocess([*TORCHRUN_TWO, "-m", "hf_ddpm.cli", *two], cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("report:") == 1  # the main process writes and prints
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    nll1, nll2 = one["metrics"]["nll"], two["metrics"]["nll"]
    assert nll1["num_images"] == nll2["num_images"] == 8
    for key in ("bpd", "bpd_stderr", "prior_bpd", "rate_bpd", "distortion_bpd"):
        assert nll2[key] == pytest.approx(nll1[key], rel=1e-6), key
    fd1, fd2 = one["metrics"]["fd-dinov2"], two["metrics"]["fd-dinov2"]
    assert fd1["num_samples"] == fd2["num_samples"] == 6
    assert fd2["value"] == pytest.approx(fd1["value"], rel=1e-4)
    diff = read_samples(one_dir).astype(int) - read_samples(two_dir).astype(int)
    assert np.abs(diff).max() <= 2


def test_samples_scores_a_folder_or_an_npz_without_drawing(model_and_dinov2, tmp_path, capsys):
    from diffusers import UNet2DModel

    model, dinov2 = model_and_dinov2
    folder = tmp_path / "kept"
    fd_only = ("--metrics", "fd-dinov2")
    with pytest.warns(UserWarning):
        assert (
            main([*_argv(model, dinov2, tmp_path, "drawn", "--samples-dir", str(folder)), *fd_only])
            == 0
        )
    drawn = json.loads((tmp_path / "drawn.json").read_text())["metrics"]["fd-dinov2"]["value"]
    npz = tmp_path / "samples_6x8x8x1.npz"
    np.savez(npz, read_samples(folder))

    forward = UNet2DModel.forward
    UNet2DModel.forward = lambda *a, **k: pytest.fail("--samples must not draw")
    try:
        for source in (folder, npz):
            with pytest.warns(UserWarning):
                argv = _argv(model, dinov2, tmp_path, "scored", "--samples", str(source))
                assert main([*argv, *fd_only]) == 0
            report = json.loads((tmp_path / "scored.json").read_text())
            assert report["samples"] == str(source) and report["num_samples"] == 6
            assert report["metrics"]["fd-dinov2"]["value"] == pytest.approx(drawn, rel=1e-9)
    finally:
        UNet2DModel.forward = forward

    capsys.readouterr()
    np.savez(tmp_path / "wrong.npz", np.zeros((4, 16, 16, 1), dtype=np.uint8))
    argv = _argv(model, dinov2, tmp_path, "x", "--samples", str(tmp_path / "wrong.npz"))
    assert main([*argv, *fd_only]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--samples" in err and "16x16x1 (H x W x C), the reference split's 8x8x1" in err
    (tmp_path / "notes.txt").write_text("x")
    argv = _argv(model, dinov2, tmp_path, "x", "--samples", str(tmp_path / "notes.txt"))
    assert main([*argv, *fd_only]) == 2
    assert "neither a folder of numbered PNGs nor a .npz" in capsys.readouterr().err
