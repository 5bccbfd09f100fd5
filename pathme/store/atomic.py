"""Atomic files: written under a unique locked temporary name beside the target, renamed into place at the end.

A killed run leaves only a temporary file, never a partial file at the target. Each writer holds an exclusive
``flock`` on its temporary file for its whole life, so the next writer of the same target can tell a stale one
(unlocked: its process died) from one that is still being written, and removes only the stale ones.

A write that fails (a full disk, a file-size limit, a read-only folder) raises :class:`WriteError`, one line that
names the target file and the cause, after the temporary file is removed: nothing half-written is left. HDF5 files
are written through :class:`_HeldOnFailure`, so HDF5 itself never meets a failed write (see there why).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import io
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import h5py
import pandas as pd
from filelock import FileLock

from pathme.wsi.slide_error import ExplainedError

SUFFIX = ".tmp"
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the disk (or the user's quota, or the file-size limit) is full


class WriteError(ExplainedError, OSError):
    """A file that could not be written: ``str()`` is one line naming the target file (not its temporary name), the
    cause and, for a full disk or a file-size limit, the fix. ``errno`` is the cause's; ``path`` the target."""

    def __init__(self, path: str | os.PathLike[str], cause: BaseException):
        self.path = Path(path)
        code = getattr(cause, "errno", None)
        strerror = getattr(cause, "strerror", None)
        reason = f"[Errno {code}] {strerror}" if code is not None and strerror else str(cause)
        hint = " (the disk is full or a file-size limit is reached); free space and run again" if code in FULL else ""
        super().__init__(code, f"cannot write {self.path}: {reason}{hint}")

    def __str__(self) -> str:
        return str(self.strerror)


def _write_error(path: Path, temp: Path, error: OSError) -> WriteError | None:
    """``error`` as the :class:`WriteError` of ``path`` when it is about the write (it names the temporary file or
    no file); None for an error about another file (a copy's missing source), which tells its own story."""
    if isinstance(error, WriteError) or error.filename not in (None, str(temp), os.fsencode(temp)):
        return None
    return WriteError(path, error)


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
    """A locked temporary sibling of ``path``: :meth:`publish` renames it into place, :meth:`discard` removes it.

    WriteError when the temporary file cannot be created (the folder is read-only, the disk has no room)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}{SUFFIX}")
        self.error: OSError | None = None  # the first failed write of an HDF5 file (see _HeldOnFailure)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(self.path)
            # a file object, not a bare descriptor: if the owner is dropped without discard(), the lock goes with it;
            # unbuffered and readable, as HDF5 writes and reads through it (hdf5_file)
            self._lock: BinaryIO | None = open(self.temp, "x+b", buffering=0)  # noqa: SIM115
        except OSError as error:
            raise WriteError(self.path, error) from error
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def hdf5_file(self) -> _HeldOnFailure:
        """The temporary file as a file object for h5py's ``fileobj`` driver; a failed write lands in :attr:`error`.
        Close the HDF5 file before :meth:`publish` or :meth:`discard`, which close the temporary file."""
        if self._lock is None:
            raise RuntimeError(f"{self.temp}: already published or discarded")
        return _HeldOnFailure(self, self._lock)

    def raise_if_failed(self) -> None:
        """WriteError naming ``path`` and the cause when a write of the HDF5 file has failed, so a writer can stop at
        once instead of computing what cannot be stored (then close the HDF5 file and :meth:`discard`)."""
        if self.error is not None:
            raise WriteError(self.path, self.error) from self.error

    def publish(self) -> Path:
        """Make the temporary file durable and rename it to ``path`` (replacing any older file there). WriteError
        naming ``path`` and the cause when a write failed (the temporary file is removed: nothing appears at
        ``path``)."""
        if self._lock is None:
            raise RuntimeError(f"{self.temp}: already published or discarded")
        if self.error is not None:
            self.discard()
            self.raise_if_failed()
        try:
            os.fsync(self._lock.fileno())  # where a full disk shows only now (network file systems)
            os.replace(self.temp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as error:
            self.discard()
            raise WriteError(self.path, error) from error
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


class _HeldOnFailure:
    """The temporary file of an :class:`AtomicTarget` as HDF5 writes it (h5py's ``fileobj`` driver): reads and writes
    at a position, except that a write that fails is kept in the target's ``error`` and it and every later write are
    held in memory (reads see them), so HDF5 never meets a failed write.

    Why: HDF5 cannot recover from one. A dataset whose chunk cache fails to flush when it is released ("Can't
    decrement id ref count", h5py issue 1120) stays registered with a pointer to its file, the file's close frees
    that file anyway, and the next close of any HDF5 file (``H5F__dest`` flushes every open dataset) or the
    dataset's own release follows the dangling pointer: a segmentation fault that kills the whole run. The file
    descriptor of the failed file is never closed either, which keeps a full disk full. Held writes cost memory
    only until the writer notices and the file is closed and discarded: a region store checks after every region
    (:meth:`AtomicTarget.raise_if_failed`), so it holds a region's features and HDF5's chunk caches at most; files
    written in one go (token stores, interop files) at most their own size."""

    def __init__(self, target: AtomicTarget, file: BinaryIO):
        self._target, self._file, self._position = target, file, 0
        self._held: list[tuple[int, bytes]] = []  # (offset, bytes) written after the failure, in order
        self._size: int | None = None  # the file's size as HDF5 sees it once writes are held

    def __repr__(self) -> str:  # h5py gives HDF5 this as the file's name, which its error messages show
        return f"<temporary file of {self._target.path}>"

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._end()}[whence]
        self._position = base + offset
        return self._position

    def _end(self) -> int:
        return os.fstat(self._file.fileno()).st_size if self._size is None else self._size

    def _fail(self, error: OSError) -> None:
        if self._target.error is None:
            self._target.error = error
        if self._size is None:
            self._size = os.fstat(self._file.fileno()).st_size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        if self._size is None:
            done = 0
            try:
                while done < len(view):  # a write can be partial just before a full disk fails the next one
                    done += os.pwrite(self._file.fileno(), view[done:], self._position + done)
            except OSError as error:
                self._fail(error)
        if self._size is not None:
            self._held.append((self._position, view.tobytes()))
            self._size = max(self._size, self._position + len(view))
        self._position += len(view)
        return len(view)

    def read(self, size: int) -> bytes:
        data = bytearray(os.pread(self._file.fileno(), size, self._position))
        data.extend(bytes(size - len(data)))  # past the end reads zeros, as HDF5's own file driver does
        for offset, held in self._held:
            start, stop = max(offset, self._position), min(offset + len(held), self._position + size)
            if start < stop:
                data[start - self._position : stop - self._position] = held[start - offset : stop - offset]
        self._position += size
        return bytes(data)

    def truncate(self, size: int) -> int:
        if self._size is None:
            try:
                os.ftruncate(self._file.fileno(), size)
                return size
            except OSError as error:
                self._fail(error)
        self._size = size
        self._held = [(offset, held[: size - offset]) for offset, held in self._held if offset < size]
        return size

    def flush(self) -> None:
        """Nothing: writes are unbuffered, and :meth:`AtomicTarget.publish` makes them durable."""


def open_h5(target: AtomicTarget) -> h5py.File:
    """Open the target's temporary file for writing (through :meth:`AtomicTarget.hdf5_file`: a failed write shows in
    :meth:`AtomicTarget.raise_if_failed` and :meth:`AtomicTarget.publish`, never inside HDF5).

    File format of HDF5 1.10 (2017) and later: its chunk indexes cost a few hundred bytes per dataset where the
    1.8 format's B-trees cost kilobytes, which is most of a small store."""
    return h5py.File(target.hdf5_file(), "w", libver=("v110", "v110"))


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

    ``write``: a callable that writes the file at the path it is given (``frame.to_csv``, ``image.save``, ...), or
    the whole content as text (UTF-8, line endings as given) or bytes (:func:`save_torch` for PyTorch objects).
    Folders above ``path`` are created. When the writer raises, the temporary file is removed and any older file at
    ``path`` stays as it was; a failed write (an OSError about the temporary file or no file: a full disk, a
    file-size limit, a read-only folder) becomes a :class:`WriteError` naming ``path`` and the cause, any other error
    propagates as it is. Returns ``path``.
    """
    target = AtomicTarget(path)
    try:
        if isinstance(write, str):
            target.temp.write_text(write, encoding="utf-8", newline="")
        elif isinstance(write, bytes):
            target.temp.write_bytes(write)
        else:
            write(target.temp)
    except OSError as error:
        target.discard()
        named = _write_error(target.path, target.temp, error)
        if named is None:
            raise
        raise named from error
    except BaseException:
        target.discard()
        raise
    return target.publish()


def save_torch(path: str | os.PathLike[str], obj: object) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`write_atomic`: serialised in memory first, so a failed write is
    a :class:`WriteError` naming ``path`` and the cause (torch's own writer says only "PytorchStreamWriter failed
    writing file data/0"). Every checkpoint and model file of the package is written with it; returns ``path``."""
    import torch  # here, not at the top: reading and writing stores (and `pathme --help`) need no torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue())


def write_csv_atomic(path: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """Write ``table`` as CSV (header, no index column) through :func:`write_atomic`; returns ``path``."""
    return write_atomic(path, lambda temp: table.to_csv(temp, index=False))


def copy_atomic(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy the bytes of ``source`` to ``path`` through :func:`write_atomic`; returns ``path``. Raises
    FileNotFoundError when ``source`` is missing (nothing is written then)."""
    return write_atomic(path, lambda temp: shutil.copyfile(source, temp))


def flock(path: str | os.PathLike[str]) -> FileLock:
    """An exclusive lock on the file ``path`` (created when missing): an ``flock`` through the ``filelock`` package,
    released by the kernel when its holder's process ends, even killed; on NFS the server releases the locks of a
    dead client when its lease expires. Never filelock's marker-file fallback, which a dead holder would leave
    behind for good: on a file system without ``flock`` (Lustre mounted without it) acquiring raises OSError."""
    return FileLock(path, fallback_to_soft=False)


def writer_lock(path: str | os.PathLike[str]) -> FileLock:
    """The lock a run holds while it computes and writes ``path``, so that a second run on the same folder waits for
    it instead of doing the same work twice: :func:`flock` of ``.<name>.lock`` beside ``path``. Locking only saves
    work: the atomic write keeps ``path`` whole without it."""
    path = Path(path)
    return flock(path.with_name(f".{path.name}.lock"))


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
