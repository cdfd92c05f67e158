"""``hf-ddpm sample --output-dir`` over 2 processes (torchrun, gloo on CPU) and after a SIGKILL.

``accelerate launch --cpu --num_processes 2`` silently runs one process (shared/DESIGN.md), so torchrun it is.
"""

import json
import sys
from pathlib import Path

import numpy as np
from conftest import TORCHRUN_TWO, run_subprocess
from diffusers import UNet2DModel

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli
from hf_ddpm.sampling.sample_folder import read_samples

HELPER = Path(__file__).with_name("sample_helper.py")
N, STEPS = 7, 3


def _model(tmp_path, tiny_unet):
    pipe = HFDDPMPipeline(unet=tiny_unet(), scheduler=HFDDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _args(model, folder, batch_size):
    return [
        "sample",
        str(model),
        "--output-dir",
        str(folder),
        "--num-images",
        str(N),
        "--batch-size",
        str(batch_size),
        "--num-inference-steps",
        str(STEPS),
        "--npz",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]


def _count_unet_images(monkeypatch):
    seen = {"images": 0}
    forward = UNet2DModel.forward

    def counting(self, sample, *args, **kwargs):
        seen["images"] += int(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", counting)
    return seen


def test_two_processes_write_the_images_of_one_and_draw_each_image_once(
    tmp_path, tiny_unet, monkeypatch
):
    model = _model(tmp_path, tiny_unet)
    seen = _count_unet_images(monkeypatch)
    assert cli.main(_args(model, tmp_path / "one", batch_size=4)) == 0
    assert seen["images"] == N * STEPS

    reports = tmp_path / "reports"
    done = run_subprocess(
        [
            *TORCHRUN_TWO,
            str(HELPER),
            str(reports),
            "--",
            *_args(model, tmp_path / "two", batch_size=2),
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]
    # No duplicated work: rank 0 draws images 0, 2, 4, 6 and rank 1 images 1, 3, 5.
    assert [r["unet_images"] for r in ranks] == [4 * STEPS, 3 * STEPS]
    assert done.stdout.count("wrote 7 samples") == 1  # the main process reports, once
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == names
    assert "samples_7x8x8x3.npz" in names
    a, b = read_samples(one), read_samples(two)
    assert a.shape == (N, 8, 8, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    with np.load(two / "samples_7x8x8x3.npz") as data:
        assert np.array_equal(data["arr_0"], b)


def test_a_run_killed_mid_write_leaves_no_half_png_and_a_rerun_completes_it(tmp_path, tiny_unet):
    model = _model(tmp_path, tiny_unet)
    folder = tmp_path / "killed"
    args = _args(model, folder, batch_size=2)
    done = run_subprocess(
        [sys.executable, str(HELPER), str(tmp_path / "reports"), "3", "--", *args]
    )
    assert done.returncode == -9, done.stderr[-3000:]
    # The third image's bytes went to a hidden temporary file only.
    assert sorted(p.name for p in folder.glob("*.png")) == ["000000.png", "000001.png"]
    assert [p.name.split(".")[1:3] for p in folder.glob(".*.partial")] == [["000002", "png"]]
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    assert cli.main(args) == 0
    assert not list(folder.glob(".*.partial"))
    for name, data in before.items():
        assert (folder / name).read_bytes() == data
    assert cli.main(_args(model, tmp_path / "clean", batch_size=2)) == 0
    diff = read_samples(folder).astype(int) - read_samples(tmp_path / "clean").astype(int)
    assert np.abs(diff).max() <= 2


def test_a_resume_splits_only_the_missing_images_over_the_processes(tmp_path, tiny_unet):
    """A folder missing every odd image, resumed by 2 processes: each draws 2 of the 4 missing images
    (rank 1 drew all 4 when range(N) was split first and the existing files dropped after), and the folder
    equals one drawn whole by one process."""
    model = _model(tmp_path, tiny_unet)
    folder = tmp_path / "resumed"
    assert cli.main([*_args(model, folder, batch_size=4), "--num-images", "8"]) == 0
    for i in (1, 3, 5, 7):
        (folder / f"{i:06d}.png").unlink()
    kept = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    reports = tmp_path / "reports"
    args = [*_args(model, folder, batch_size=4), "--num-images", "8"]
    done = run_subprocess([*TORCHRUN_TWO, str(HELPER), str(reports), "--", *args], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["unet_images"] for r in ranks] == [2 * STEPS, 2 * STEPS]
    assert "(4 drawn now, 4 kept from an earlier run)" in done.stdout
    assert all((folder / name).read_bytes() == data for name, data in kept.items())
    whole = tmp_path / "whole"
    assert cli.main([*_args(model, whole, batch_size=4), "--num-images", "8"]) == 0
    diff = read_samples(folder).astype(int) - read_samples(whole).astype(int)
    assert read_samples(folder).shape[0] == 8 and np.abs(diff).max() <= 2
