"""Failed writes in ``hf-ddpm sample --output-dir DIR --npz`` (issue 21, item 2: the sample folders and
``.npz`` of the scale issue), on the shared failing file system (tests/fault_injection.py) rather than a
patched ``Image.save`` / ``np.savez``.

A clean run of 3 images (batches of 2) with ``--npz`` makes 46 write operations under DIR:
``sample_config.json`` (a write and a rename), each PNG (PIL's chunk writes and a rename) and the
``.npz`` (zipfile's writes and a rename). Each one is made to fail in turn, as a full disk (ENOSPC, and
every later one too) and as an I/O error: the command exits 1 with one line naming the file and the
error, no ``.partial`` file is left, every file under its own name is whole and equal to the clean
run's (the ones finished before the failure are all there), and a rerun once the disk is fixed completes
the folder as the clean run made it.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fault_injection import inject_write_faults

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler, cli

NUM_IMAGES, BATCH = 3, 2
NPZ = f"samples_{NUM_IMAGES}x8x8x3.npz"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import _tiny_unet

    folder = tmp_path_factory.mktemp("tiny_model")
    HFDDPMPipeline(
        unet=_tiny_unet(in_channels=3), scheduler=HFDDPMScheduler(num_train_timesteps=10)
    ).save_pretrained(folder)
    return folder


def _argv(model: Path, folder: Path, num_images: int = NUM_IMAGES) -> list[str]:
    return [
        "sample",
        str(model),
        "--output-dir",
        str(folder),
        "--num-images",
        str(num_images),
        "--batch-size",
        str(BATCH),
        "--num-inference-steps",
        "2",
        "--seed",
        "7",
        "--npz",
    ]


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name; the .npz by its array (zipfile stamps the time of writing)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".npz":
            with np.load(path) as data:
                files[path.name] = data["arr_0"].tobytes()
        else:
            files[path.name] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def clean(model, tmp_path_factory):
    """The folder a run without failures makes, and the write operations it makes, in order, as
    (kind, file name)."""
    folder = tmp_path_factory.mktemp("clean") / "s"
    with pytest.MonkeyPatch.context() as monkeypatch:
        faults = inject_write_faults(monkeypatch, folder, nth=None)
        assert cli.main(_argv(model, folder)) == 0
    assert len(faults.operations) == 46, faults.operations
    return _contents(folder), _named(faults.operations)


def _named(operations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(kind, Path(path).name) for kind, path in operations]


def _final_name(name: str) -> str:
    """The file a write operation is for: a hidden ``.NAME.PID.partial`` (every atomic writer's naming)
    is written, then renamed to NAME."""
    if not name.endswith(".partial"):
        return name
    return re.sub(r"\.\d+$", "", name[1 : -len(".partial")])


def _error_lines(err: str) -> list[str]:
    # The progress bar shares stderr without newlines.
    prefix = "hf-ddpm sample: error:"
    return [line[line.index(prefix) :] for line in err.splitlines() if prefix in line]


def _check_failed_run(folder: Path, clean_files: dict, operations: list, nth: int, code: int, err):
    failed_file = _final_name(operations[nth - 1][1])
    lines = _error_lines(err)
    assert lines == [
        f"hf-ddpm sample: error: could not write {folder / failed_file}: {os.strerror(code)}"
    ]
    left = _contents(folder)
    assert not [name for name in left if name.endswith(".partial")], sorted(left)
    # Nothing half-written under a real name, and every file finished before the failure is there.
    finished = {name for kind, name in operations[: nth - 1] if kind == "rename"}
    assert set(left) == finished, (sorted(left), sorted(finished))
    for name, data in left.items():
        assert data == clean_files[name], f"{name} differs from a clean run's"


@pytest.mark.parametrize("nth", range(1, 47))
def test_the_nth_write_failing_on_a_full_disk_loses_nothing_and_a_rerun_completes(
    model, clean, tmp_path, monkeypatch, capsys, nth
):
    clean_files, operations = clean
    folder = tmp_path / "s"
    faults = inject_write_faults(monkeypatch, folder, nth=nth, error=errno.ENOSPC)
    assert cli.main(_argv(model, folder)) == 1
    assert _named(faults.failed)[0] == operations[nth - 1]
    _check_failed_run(folder, clean_files, operations, nth, errno.ENOSPC, capsys.readouterr().err)
    faults.enabled = False
    assert cli.main(_argv(model, folder)) == 0
    assert _contents(folder) == clean_files


@pytest.mark.parametrize("site", ["first PNG write", "PNG rename", "npz write", "npz rename"])
def test_an_io_error_once_is_one_line_and_a_rerun_completes(
    model, clean, tmp_path, monkeypatch, capsys, site
):
    clean_files, operations = clean
    kind, name = {
        "first PNG write": ("write", f".000000.png.{os.getpid()}.partial"),
        "PNG rename": ("rename", "000001.png"),
        "npz write": ("write", f".{NPZ}.{os.getpid()}.partial"),
        "npz rename": ("rename", NPZ),
    }[site]
    nth = 1 + next(k for k, (op, path) in enumerate(operations) if (op, path) == (kind, name))
    folder = tmp_path / "s"
    inject_write_faults(monkeypatch, folder, nth=nth, error=errno.EIO, times=1)
    assert cli.main(_argv(model, folder)) == 1
    _check_failed_run(folder, clean_files, operations, nth, errno.EIO, capsys.readouterr().err)
    assert cli.main(_argv(model, folder)) == 0
    assert _contents(folder) == clean_files


def test_a_failed_npz_rewrite_keeps_the_previous_npz(model, clean, tmp_path, monkeypatch, capsys):
    """A folder with its .npz loses an image; the rerun redraws it, and its .npz write meets a full
    disk: the previous .npz stays as it was, byte for byte."""
    clean_files, _ = clean
    folder = tmp_path / "s"
    assert cli.main(_argv(model, folder)) == 0
    before = (folder / NPZ).read_bytes()
    (folder / "000001.png").unlink()
    faults = inject_write_faults(monkeypatch, folder, nth=None)
    assert cli.main(_argv(model, folder)) == 0
    faults.enabled = False
    redraw = _named(faults.operations)
    npz_first = 1 + next(k for k, (_, name) in enumerate(redraw) if NPZ in name)
    for nth in range(npz_first, len(redraw) + 1):
        (folder / NPZ).write_bytes(before)
        (folder / "000001.png").unlink()
        faults = inject_write_faults(monkeypatch, folder, nth=nth, error=errno.ENOSPC)
        assert cli.main(_argv(model, folder)) == 1
        faults.enabled = False
        assert _error_lines(capsys.readouterr().err) == [
            f"hf-ddpm sample: error: could not write {folder / NPZ}: No space left on device"
        ]
        assert (folder / NPZ).read_bytes() == before
        assert not list(folder.glob(".*"))
        assert _contents(folder) == clean_files
