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


def _count_unet_images(monkeypatch):
    from diffusers import UNet2DModel

    seen = {"images": 0}
    forward = UNet2DModel.forward

    def counting(self, sample, *args, **kwargs):
        seen["images"] += int(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", counting)
    return seen


def test_samples_dir_resumes_a_folder_of_hf_ddpm_sample(model_and_dinov2, tmp_path, monkeypatch):
    """A folder drawn by ``hf-ddpm sample --output-dir`` with the settings evaluate uses is evaluate's
    ``--samples-dir``: its images are scored, not drawn again. (It was refused: evaluate recorded no
    model and no dtype.)"""
    model, dinov2 = model_and_dinov2
    folder = tmp_path / "drawn"
    shared = ["--num-inference-steps", "2", "--seed", "5", "--device", "cpu"]
    sample = ["sample", str(model), "--output-dir", str(folder), "--num-images", "6", *shared]
    assert main([*sample, "--batch-size", "4"]) == 0
    seen = _count_unet_images(monkeypatch)
    argv = _argv(model, dinov2, tmp_path, "r", "--samples-dir", str(folder), "--metrics")
    with pytest.warns(UserWarning, match="samples of 16-dimensional features"):
        assert main([*argv, "fd-dinov2", *shared]) == 0
    assert seen["images"] == 0
    assert json.loads((tmp_path / "r.json").read_text())["num_samples"] == 6


def test_samples_dir_drawn_in_float32_is_refused_under_bfloat16(model_and_dinov2, tmp_path, capsys):
    """The dtype the UNet ran in is one of the folder's settings: bf16 images are not mixed into a folder
    drawn in float32. (evaluate recorded no dtype, and resumed silently.)"""
    model, dinov2 = model_and_dinov2
    folder = tmp_path / "kept"
    argv = _argv(model, dinov2, tmp_path, "r", "--samples-dir", str(folder), "--metrics")
    argv += ["fd-dinov2", "--num-inference-steps", "2"]
    with pytest.warns(UserWarning):
        assert main([*argv, "--num-samples", "4"]) == 0
    settings = json.loads((folder / "sample_config.json").read_text())["settings"]
    assert settings["dtype"] == "float32" and settings["model"] == str(model.resolve())
    capsys.readouterr()
    assert main([*argv, "--num-samples", "6", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after DINOv2's loading bar
    assert err.startswith(f"hf-ddpm evaluate: error: --samples-dir {folder} holds images made with")
    assert "dtype 'float32' (folder) vs 'bfloat16' (now)" in err and "--overwrite" not in err, err
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]


def test_a_bad_samples_is_refused_before_the_nll_pass(
    model_and_dinov2, tmp_path, capsys, monkeypatch
):
    """--samples is read and checked against the reference split before any UNet call: a wrong shape, a
    file that is not a sample set and a missing path each fail at once. (They were reported after the
    whole NLL pass.)"""
    model, dinov2 = model_and_dinov2
    np.savez(tmp_path / "wrong.npz", np.zeros((4, 16, 16, 1), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    seen = _count_unet_images(monkeypatch)
    for source, message in (
        ("wrong.npz", "16x16x1 (H x W x C), the reference split's 8x8x1"),
        ("notes.txt", "neither a folder of numbered PNGs nor a .npz"),
        ("missing", "no such folder or file"),
    ):
        argv = _argv(model, dinov2, tmp_path, "x", "--samples", str(tmp_path / source))
        assert main(argv) == 2  # nll,fd-dinov2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("hf-ddpm evaluate: error: --samples") and message in err, err
    assert seen["images"] == 0
