"""A file system that fails: the Nth write under a folder raises ENOSPC, EIO, ... (tests only).

Filling a real disk is slow, needs privileges and hits every process on the machine; instead
:func:`inject_write_faults` patches the few entry points through which hf_ddpm and the libraries it calls
write files, and counts each *write operation* on a path under ``under``:

- ``write``: one ``write()`` / ``writelines()`` call on a file object opened for writing through
  ``io.open`` / ``open`` (which ``Path.write_text``, ``json.dump``, ``os.fdopen``, PIL's PNG writer, numpy's
  ``savez`` and ``zipfile`` all use); the failing call first writes half its data, as a full disk does;
- ``save_file``: one ``safetensors.torch.save_file`` call (safetensors writes from Rust, not through
  Python's files; diffusers and hf_ddpm call it through the module); the failing call leaves half a file;
- ``copy``: one ``shutil.copyfile`` (``copytree``/``copy2`` use it; it copies by ``sendfile``, below
  Python's files); the failing call leaves half a file;
- ``rename``: one ``os.replace`` / ``os.rename`` (``Path.replace`` / ``Path.rename`` call them); the
  failing call renames nothing.

Operation number ``nth`` (1-based, counted over all kinds in ``kinds``) and the ``times - 1`` after it fail
(``times=None``: every one from ``nth`` on, a disk that stays full; ``times=1``: a transient error). With
``nth=None`` nothing fails and the returned :class:`WriteFaults` only records, which is how a test learns
how many operations a piece of code makes and then sweeps ``nth`` over all of them.

Usage::

    from fault_injection import inject_write_faults

    def test_x(tmp_path, monkeypatch):
        faults = inject_write_faults(monkeypatch, tmp_path, nth=3, error=errno.ENOSPC)
        ...
        assert faults.failed  # [(kind, path), ...] of the operations that raised
"""

from __future__ import annotations

import builtins
import errno as errno_codes
import io
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KINDS = ("write", "save_file", "copy", "rename")


@dataclass
class WriteFaults:
    """What the patched file system saw: every counted operation, and the ones that failed."""

    under: Path
    nth: int | None
    error: int
    times: int | None
    kinds: frozenset[str]
    operations: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    enabled: bool = True

    def _counts(self, kind: str, path: object) -> bool:
        if not self.enabled or kind not in self.kinds:
            return False
        try:
            resolved = Path(os.fspath(path)).resolve()
        except TypeError:
            return False
        return resolved == self.under or self.under in resolved.parents

    def check(self, kind: str, path: object) -> OSError | None:
        """Count one operation of ``kind`` on ``path``; the error it must raise, or ``None``."""
        if not self._counts(kind, path):
            return None
        self.operations.append((kind, str(path)))
        number = len(self.operations)
        if self.nth is None or number < self.nth:
            return None
        if self.times is not None and number >= self.nth + self.times:
            return None
        self.failed.append((kind, str(path)))
        return OSError(self.error, os.strerror(self.error), str(path))


class _FaultyFile:
    """A writable file object whose ``write`` consults :class:`WriteFaults`; the rest is the real file's."""

    def __init__(self, real: io.IOBase, path: str, faults: WriteFaults) -> None:
        self._real = real
        self._path = path
        self._faults = faults

    def write(self, data: bytes | str) -> int:
        error = self._faults.check("write", self._path)
        if error is not None:
            self._real.write(data[: len(data) // 2])
            self._real.flush()
            raise error
        return self._real.write(data)

    def writelines(self, lines: Iterable[bytes | str]) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()

    def __iter__(self):  # noqa: ANN204
        return iter(self._real)

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def _writes(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


def _path_of(file: object) -> str | None:
    if isinstance(file, int):
        try:
            return os.readlink(f"/proc/self/fd/{file}")
        except OSError:
            return None
    try:
        return os.fspath(file)
    except TypeError:
        return None


def inject_write_faults(
    monkeypatch: pytest.MonkeyPatch,
    under: str | os.PathLike[str],
    nth: int | None = 1,
    error: int = errno_codes.ENOSPC,
    times: int | None = None,
    kinds: Iterable[str] = KINDS,
) -> WriteFaults:
    """Make write operation ``nth`` under ``under`` (and ``times - 1`` more; ``None``: all later ones)
    raise ``OSError(error)``; see the module docstring. Undone by ``monkeypatch`` at the test's end (or
    set ``faults.enabled = False``)."""
    import safetensors.torch

    kinds = frozenset(kinds)
    if not kinds <= set(KINDS):
        raise ValueError(f"kinds must be among {KINDS}, got {sorted(kinds)}")
    faults = WriteFaults(Path(under).resolve(), nth, error, times, kinds)
    real_open = io.open

    def faulty_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        opened = real_open(file, mode, *args, **kwargs)
        path = _path_of(file)
        if path is None or not _writes(mode) or not faults._counts("write", path):
            return opened
        return _FaultyFile(opened, path, faults)

    real_save_file = safetensors.torch.save_file

    def faulty_save_file(
        tensors: dict, filename: str | os.PathLike[str], *args: object, **kwargs: object
    ) -> None:
        failure = faults.check("save_file", filename)
        if failure is None:
            return real_save_file(tensors, filename, *args, **kwargs)
        data = safetensors.torch.save(tensors, *args, **kwargs)
        with real_open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise failure

    real_copyfile = shutil.copyfile

    def faulty_copyfile(src: object, dst: object, *args: object, **kwargs: object) -> object:
        failure = faults.check("copy", dst)
        if failure is None:
            return real_copyfile(src, dst, *args, **kwargs)
        data = Path(os.fspath(src)).read_bytes()
        with real_open(dst, "wb") as f:
            f.write(data[: len(data) // 2])
        raise failure

    def faulty_rename(real: Callable[..., None]) -> Callable[..., None]:
        def rename(src: object, dst: object, *args: object, **kwargs: object) -> None:
            failure = faults.check("rename", dst)
            if failure is not None:
                raise failure
            return real(src, dst, *args, **kwargs)

        return rename

    monkeypatch.setattr(io, "open", faulty_open)
    monkeypatch.setattr(builtins, "open", faulty_open)
    monkeypatch.setattr(safetensors.torch, "save_file", faulty_save_file)
    monkeypatch.setattr(shutil, "copyfile", faulty_copyfile)
    monkeypatch.setattr(os, "replace", faulty_rename(os.replace))
    monkeypatch.setattr(os, "rename", faulty_rename(os.rename))
    return faults
