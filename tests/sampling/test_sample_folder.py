"""Sample folders (hf_ddpm.sampling.sample_folder): per-image determinism, resume, refusal of other
settings, the evaluators' .npz, and failed writes that keep what was written."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
from hf_ddpm.sampling import sample_folder
from hf_ddpm.sampling.sample_folder import (
    PipelineSampling,
    SampleFolderJob,
    SampleWriteError,
    read_samples,
    write_sample_folder,
)
from hf_ddpm.sampling.sharding import image_generator, image_seed

STEPS = 3
SETTINGS = {"model": "tiny", "seed": 7, "num_inference_steps": STEPS}


@pytest.fixture
def pipe(tiny_unet):
    pipeline = HFDDPMPipeline(
        unet=tiny_unet(in_channels=3), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _drawing(pipe, seed, steps=STEPS):
    return PipelineSampling(pipe, "ddpm sampler", steps, seed)


def _job(folder, num_images=5, batch_size=2, **kwargs):
    return SampleFolderJob(folder, num_images, batch_size, settings=SETTINGS, **kwargs)


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_image_seeds_differ_between_indices_and_seeds():
    seeds = {image_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300  # seed + i would give 102 distinct values here
    assert all(0 <= s < 2**64 for s in seeds)


def test_image_i_depends_only_on_seed_and_i_not_on_the_batch(pipe, tmp_path):
    draw = _drawing(pipe, 7)
    write_sample_folder(draw, _job(tmp_path / "b2", batch_size=2))
    write_sample_folder(draw, _job(tmp_path / "b5", batch_size=5))
    assert _pngs(tmp_path / "b2") == [f"{i:06d}.png" for i in range(5)]
    a, b = read_samples(tmp_path / "b2"), read_samples(tmp_path / "b5")
    assert a.shape == (5, 8, 8, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    # Independent of the writer: image 3 drawn alone with its own generator, converted by hand.
    alone = pipe(
        batch_size=1,
        generator=[torch.Generator().manual_seed(image_seed(7, 3))],
        num_inference_steps=STEPS,
        output_type="np",
    ).images[0]
    assert np.abs(np.round(alone * 255).astype(int) - a[3].astype(int)).max() <= 2
    assert not np.array_equal(a[0], a[1])


def test_rerun_draws_only_missing_images_and_leaves_the_rest_untouched(pipe, tmp_path):
    calls = []
    draw = _drawing(pipe, 7)

    def counting(indices):
        calls.append(list(indices))
        return draw(indices)

    folder = tmp_path / "s"
    write_sample_folder(counting, _job(folder))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("*.png")}
    (folder / "000003.png").unlink()
    calls.clear()
    report = write_sample_folder(counting, _job(folder, num_images=7))
    assert calls == [[3, 5], [6]]
    assert (report.drawn, report.kept) == (3, 4)
    for name, (mtime, data) in before.items():
        if name != "000003.png":
            assert (folder / name).stat().st_mtime_ns == mtime
            assert (folder / name).read_bytes() == data
    assert (folder / "000003.png").read_bytes() == before["000003.png"][1]
    assert json.loads((folder / "sample_config.json").read_text())["settings"] == SETTINGS


def test_other_settings_are_refused_naming_them_unless_overwrite(pipe, tmp_path):
    draw = _drawing(pipe, 7)
    folder = tmp_path / "s"
    write_sample_folder(draw, _job(folder, num_images=2))
    other = {**SETTINGS, "seed": 8}
    with pytest.raises(ValueError, match=r"seed 7 \(folder\) vs 8 \(now\).*--overwrite"):
        write_sample_folder(draw, SampleFolderJob(folder, 2, 2, settings=other))
    old = read_samples(folder)
    draw8 = _drawing(pipe, 8)
    write_sample_folder(draw8, SampleFolderJob(folder, 1, 2, settings=other, overwrite=True))
    assert _pngs(folder) == ["000000.png"]
    assert not np.array_equal(read_samples(folder)[0], old[0])


def test_numbered_pngs_without_a_config_are_refused(tmp_path, pipe):
    (tmp_path / "000000.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="no sample_config.json"):
        write_sample_folder(_drawing(pipe, 7), _job(tmp_path))


def test_npz_holds_every_png_in_the_evaluators_format(pipe, tmp_path):
    folder = tmp_path / "s"
    report = write_sample_folder(_drawing(pipe, 7), _job(folder, npz=True))
    assert report.npz_path == folder / "samples_5x8x8x3.npz"
    with np.load(report.npz_path) as data:
        assert list(data) == ["arr_0"]
        arr = data["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 8, 3)
    for i in range(5):
        assert np.array_equal(arr[i], np.asarray(Image.open(folder / f"{i:06d}.png")))
    assert np.array_equal(read_samples(report.npz_path), arr)


def test_greyscale_models_write_single_channel_pngs_and_an_nhw1_npz(tiny_unet, tmp_path):
    pipe = HFDDPMPipeline(unet=tiny_unet(in_channels=1), scheduler=HFDDPMScheduler(10))
    pipe.set_progress_bar_config(disable=True)
    report = write_sample_folder(_drawing(pipe, 0, steps=2), _job(tmp_path, 3, npz=True))
    assert Image.open(tmp_path / "000000.png").mode == "L"
    assert report.npz_path.name == "samples_3x8x8x1.npz"


def test_bad_job_values_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--num-images must be an integer >= 1, got 0"):
        SampleFolderJob(tmp_path, 0, 1)
    with pytest.raises(ValueError, match="--batch-size must be an integer >= 1, got 0"):
        SampleFolderJob(tmp_path, 1, 0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write_sample_folder(lambda i: None, SampleFolderJob(tmp_path / "file", 1, 1))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_png_write_names_the_file_and_keeps_what_was_written(
    pipe, tmp_path, monkeypatch, code
):
    folder = tmp_path / "s"
    original = Image.Image.save
    writes = []

    def failing_save(self, fp, *args, **kwargs):
        writes.append(fp)
        if len(writes) == 3:  # the third image: half a file, then the disk is full
            with open(fp, "wb") as f:
                f.write(b"\x89PNG half")
            raise OSError(code, "injected")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    draw = _drawing(pipe, 7)
    with pytest.raises(
        SampleWriteError, match=rf"could not write .*000002\.png: {os.strerror(code)}"
    ):
        write_sample_folder(draw, _job(folder))
    assert _pngs(folder) == ["000000.png", "000001.png"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]
    for name in _pngs(folder):
        Image.open(folder / name).load()  # whole PNGs only
    monkeypatch.setattr(Image.Image, "save", original)
    write_sample_folder(draw, _job(folder))
    clean = tmp_path / "clean"
    write_sample_folder(draw, _job(clean))
    assert np.array_equal(read_samples(folder), read_samples(clean))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_npz_write_keeps_the_previous_npz(pipe, tmp_path, monkeypatch, code):
    folder = tmp_path / "s"
    draw = _drawing(pipe, 7)
    first = write_sample_folder(draw, _job(folder, npz=True)).npz_path
    old = first.read_bytes()
    (folder / "000004.png").unlink()
    real_savez = np.savez

    def failing_savez(file, *arrays):
        file.write(b"PK half")
        raise OSError(code, "injected")

    monkeypatch.setattr(sample_folder.np, "savez", failing_savez)
    with pytest.raises(SampleWriteError, match=rf"samples_5x8x8x3\.npz: {os.strerror(code)}"):
        write_sample_folder(draw, _job(folder, npz=True))
    assert first.read_bytes() == old
    assert sorted(p.name for p in folder.glob("*.npz")) == [first.name]
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]
    monkeypatch.setattr(sample_folder.np, "savez", real_savez)


def test_read_samples_refuses_what_is_not_a_sample_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="--samples"):
        read_samples(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder of numbered PNGs nor a .npz"):
        read_samples(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="holds no numbered PNGs"):
        read_samples(tmp_path)
    np.savez(tmp_path / "f.npz", np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        read_samples(tmp_path / "f.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        read_samples(tmp_path / "bad.npz")


def test_image_generator_is_a_cpu_generator_seeded_per_image():
    a = torch.randn(3, generator=image_generator(1, 2))
    b = torch.randn(3, generator=torch.Generator().manual_seed(image_seed(1, 2)))
    assert torch.equal(a, b)


def test_a_grown_folder_replaces_its_npz_and_keeps_other_files(pipe, tmp_path):
    """The .npz of 6 images goes when the folder grows to 8 (it stayed, and passed for the folder); files
    not named as the evaluators name theirs, and .npz files elsewhere, stay."""
    folder = tmp_path / "s"
    write_sample_folder(_drawing(pipe, 7), _job(folder, num_images=6, npz=True))
    assert (folder / "samples_6x8x8x3.npz").exists()
    for name in ("mine.npz", "samples_6x8x8.npz", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "samples_6x8x8x3.npz").write_bytes(b"y")
    report = write_sample_folder(_drawing(pipe, 7), _job(folder, num_images=8, npz=True))
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".png")) == [
        "mine.npz",
        "notes.txt",
        "sample_config.json",
        "samples_6x8x8.npz",
        "samples_8x8x8x3.npz",
    ]
    assert report.npz_path == folder / "samples_8x8x8x3.npz"
    assert (tmp_path / "samples_6x8x8x3.npz").read_bytes() == b"y"


def test_an_npz_of_fewer_images_keeps_the_npz_of_more(pipe, tmp_path):
    """An .npz of the first 4 images of a 6-image folder leaves the 6-image .npz as it was (it deleted it:
    a 10,000-image --npz run in a 50k folder deleted the 50k .npz); growing the folder to 7 then
    supersedes both."""
    folder = tmp_path / "s"
    draw = _drawing(pipe, 7)
    six = write_sample_folder(draw, _job(folder, num_images=6, npz=True)).npz_path
    six_bytes = six.read_bytes()
    four = write_sample_folder(draw, _job(folder, num_images=4, npz=True)).npz_path
    assert sorted(p.name for p in folder.glob("*.npz")) == [four.name, six.name]
    assert six.read_bytes() == six_bytes
    with np.load(four) as small, np.load(six) as large:
        assert np.array_equal(small["arr_0"], large["arr_0"][:4])
    seven = write_sample_folder(draw, _job(folder, num_images=7, npz=True)).npz_path
    assert [p.name for p in folder.glob("*.npz")] == [seven.name]
