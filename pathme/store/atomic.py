"""Atomic files: written under a unique locked temporary name beside the target, renamed into place at the end.

A killed run leaves only a temporary file, never a partial file at the target. Each writer holds an exclusive
``flock`` on its temporary file for its whole life, so the next writer of the same target can tell a stale one
(unlocked: its process died) from one that is still being written, and removes only the stale ones.
"""

from __future__ import annotations

import fcntl
import glob
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import h5py
import pandas as pd

SUFFIX = ".tmp"


def _temp_pattern(path: Path) -> str:
    return os.path.join(glob.escape(str(path.parent)), glob.escape(f".{path.name}.") + "*" + SUFFIX)


def _remove_stale(path: Path) -> None:
    """Remove temporary files of ``path`` left by dead writers (nobody holds their lock)."""
    for name in glob.glob(_temp_pattern(path)):
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer
        else:
            Path(name).unlink(missing_ok=True)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicTarget:
    """A locked temporary sibling of ``path``: :meth:`publish` renames it into place, :meth:`discard` removes it."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        self.temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}{SUFFIX}")
        # a file object, not a bare descriptor: if the owner is dropped without discard(), the lock goes with it
        self._lock: BinaryIO | None = open(self.temp, "xb")  # noqa: SIM115
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def publish(self) -> Path:
        """Make the temporary file durable and rename it to ``path`` (replacing any older file there)."""
        if self._lock is None:
            raise RuntimeError(f"{self.temp}: already published or discarded")
        os.fsync(self._lock.fileno())
        os.replace(self.temp, self.path)
        _fsync_dir(self.path.parent)
        self._release()
        return self.path

    def discard(self) -> None:
        """Remove the temporary file; nothing appears at ``path``."""
        if self._lock is not None:
            self.temp.unlink(missing_ok=True)
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def open_h5(target: AtomicTarget) -> h5py.File:
    """Open the target's temporary file for writing; HDF5's own locking is off because the target holds one.

    File format of HDF5 1.10 (2017) and later: its chunk indexes cost a few hundred bytes per dataset where the
    1.8 format's B-trees cost kilobytes, which is most of a small store."""
    return h5py.File(target.temp, "w", locking=False, libver=("v110", "v110"))


@contextmanager
def atomic_h5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """An HDF5 file that appears at ``path`` only if the ``with`` block finishes without an error."""
    target = AtomicTarget(path)
    try:
        with open_h5(target) as file:
            yield file
    except BaseException:
        target.discard()
        raise
    target.publish()


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object] | str | bytes) -> Path:
    """Write ``path`` through a temporary sibling renamed into place: readers never see half a file.

    ``write``: a callable that writes the file at the path it is given (``frame.to_csv``, ``image.save``,
    ``torch.save``, ...), or the whole content as text (UTF-8, line endings as given) or bytes. Folders above
    ``path`` are created. When the writer raises, the temporary file is removed, any older file at ``path`` stays as
    it was, and the error propagates. Returns ``path``.
    """
    target = AtomicTarget(path)
    try:
        if isinstance(write, str):
            target.temp.write_text(write, encoding="utf-8", newline="")
        elif isinstance(write, bytes):
            target.temp.write_bytes(write)
        else:
            write(target.temp)
    except BaseException:
        target.discard()
        raise
    return target.publish()


def write_csv_atomic(path: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """Write ``table`` as CSV (header, no index column) through :func:`write_atomic`; returns ``path``."""
    return write_atomic(path, lambda temp: table.to_csv(temp, index=False))


def copy_atomic(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy the bytes of ``source`` to ``path`` through :func:`write_atomic`; returns ``path``. Raises
    FileNotFoundError when ``source`` is missing (nothing is written then)."""
    return write_atomic(path, lambda temp: shutil.copyfile(source, temp))


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (``.damaged.1``, ... when taken) beside it, so it is out of the
    way of a rerun but never deleted; returns the new path."""
    path = Path(path)
    target, number = path.with_name(f"{path.name}.damaged"), 0
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.damaged.{number}")
    os.replace(path, target)
    return target
