"""tests/fault_injection.py: the failing file system fails exactly the operations it is asked to, the
way a full disk does (half the data written, an OSError naming the path), and nothing outside its folder."""

import errno
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from fault_injection import inject_write_faults
from PIL import Image


def test_counting_mode_records_every_kind_and_fails_nothing(tmp_path, monkeypatch):
    faults = inject_write_faults(monkeypatch, tmp_path, nth=None)
    (tmp_path / "a.json").write_text(json.dumps({"x": 1}))
    safetensors.torch.save_file({"w": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "p.png")
    shutil.copyfile(tmp_path / "a.json", tmp_path / "b.json")
    os.replace(tmp_path / "b.json", tmp_path / "c.json")
    kinds = [kind for kind, _ in faults.operations]
    assert kinds[0] == "write" and "save_file" in kinds and kinds[-2:] == ["copy", "rename"]
    assert not faults.failed
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": 1}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_the_nth_write_fails_half_written_and_names_the_path(tmp_path, monkeypatch, code):
    (tmp_path / "first.txt").write_text("kept")
    inject_write_faults(monkeypatch, tmp_path, nth=2, error=code)
    (tmp_path / "one.txt").write_text("ok")
    with pytest.raises(OSError) as raised:
        (tmp_path / "two.txt").write_text("abcdefgh")
    assert raised.value.errno == code and raised.value.filename == str(tmp_path / "two.txt")
    assert (tmp_path / "two.txt").read_text() == "abcd"
    # A disk that stays full: every later write fails too, of any kind.
    with pytest.raises(OSError):
        safetensors.torch.save_file({"w": torch.ones(8)}, str(tmp_path / "w.safetensors"))
    assert 0 < (tmp_path / "w.safetensors").stat().st_size
    with pytest.raises(Exception):  # noqa: B017  (half a safetensors file does not load)
        safetensors.torch.load_file(str(tmp_path / "w.safetensors"))
    with pytest.raises(OSError):
        os.replace(tmp_path / "one.txt", tmp_path / "first.txt")
    assert (tmp_path / "first.txt").read_text() == "kept"


def test_a_transient_error_fails_once_and_other_folders_are_untouched(tmp_path, monkeypatch):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    faults = inject_write_faults(monkeypatch, inside, nth=1, error=errno.EIO, times=1)
    (outside / "x.txt").write_text("free")
    with pytest.raises(OSError, match="Input/output error"):
        (inside / "x.txt").write_text("first try")
    (inside / "x.txt").write_text("second try")
    assert (inside / "x.txt").read_text() == "second try"
    assert faults.failed == [("write", str(inside / "x.txt"))]
    assert [path for _, path in faults.operations] == [str(inside / "x.txt")] * 2
