"""Slides copied to node-local disk before they are read (``--stage-dir``), one slide ahead, removed after use.

Extraction reads a slide region by region, thousands of small reads that are slow over a network file system;
one sequential copy to the node's own disk is fast, and copying the next slide while this one is encoded hides
it. A slide in several files (MIRAX ``.mrxs`` with its folder, Hamamatsu ``.vms``/``.vmu``) or a folder is read
where it is.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pathme.store.atomic import copy_atomic

logger = logging.getLogger(__name__)

#: formats whose pixels live in files beside the one a manifest names
MULTI_FILE = {".mrxs", ".vms", ".vmu"}
AHEAD = 1  # slides copied ahead of the one being read


def _remove_copy(copy: Future[Path]) -> None:
    if not copy.cancelled() and copy.exception() is None:
        copy.result().unlink(missing_ok=True)


class StageError(ValueError):
    """A stage folder that cannot hold the slides: names the folder, the room it has and what it needs."""


def stageable(path: Path) -> bool:
    """Whether ``path`` is one self-contained file that can be read from a copy."""
    return path.is_file() and path.suffix.lower() not in MULTI_FILE


def check_room(stage_dir: str | Path, sizes: Iterable[int]) -> None:
    """StageError unless ``stage_dir`` is a folder with room for the largest ``AHEAD + 1`` of ``sizes`` (bytes) at
    once, which is the most staging holds; call it before anything is written."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        raise StageError(f"--stage-dir {stage_dir}: no such folder; give a node-local folder such as $TMPDIR")
    need = sum(sorted(sizes, reverse=True)[: AHEAD + 1])
    free = shutil.disk_usage(stage_dir).free
    if free < need:
        raise StageError(
            f"--stage-dir {stage_dir}: {free / 1e9:.2f} GB free, but staging this shard's largest slides "
            f"({AHEAD + 1} at a time) needs {need / 1e9:.2f} GB; give a folder with more room or leave --stage-dir out"
        )


class Stager:
    """Copies of slides in a private folder under ``stage_dir``, made by a background thread: :meth:`expect` names
    the slides coming next, :meth:`local` copies a slide (then starts on the next ones, which copy while this one is
    read) and waits for its copy, :meth:`release` removes it; closing removes the folder and all in it. A slide
    whose output turns out valid is never asked for, so a rerun of a finished shard copies nothing."""

    def __init__(self, stage_dir: str | Path):
        self.folder = Path(tempfile.mkdtemp(prefix="pathme-stage-", dir=stage_dir))
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pathme-stage")
        self._copies: dict[Path, Future[Path]] = {}
        self._numbers = itertools.count()  # copies are numbered: two slides may share a file name
        self._upcoming: list[Path] = []

    def __enter__(self) -> Stager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, paths: Iterable[Path]) -> None:
        """The slides read after the next :meth:`local` one, in order: the first :data:`AHEAD` are copied then."""
        self._upcoming = list(paths)

    def _start(self, path: Path) -> None:
        if path not in self._copies and stageable(path):
            target = self.folder / f"{next(self._numbers)}-{path.name}"
            self._copies[path] = self._copier.submit(copy_atomic, path, target)

    def local(self, path: Path) -> Path:
        """The staged copy of ``path`` (copied now unless it was copied ahead), or ``path`` itself when it cannot be
        staged; the expected next slides start copying behind it. WriteError when the copy fails (a full stage
        folder): the slide fails, the run goes on."""
        for wanted in [path, *self._upcoming[:AHEAD]]:
            self._start(wanted)
        copy = self._copies.get(path)
        if copy is None:
            logger.info("%s is not one self-contained file: read where it is, not staged", path)
            return path
        return copy.result()

    def release(self, path: Path) -> None:
        """Drop the staged copy of ``path`` without waiting: a copy not started is cancelled, one in progress is
        removed when it finishes, a finished one now."""
        copy = self._copies.pop(path, None)
        if copy is not None and not copy.cancel():
            copy.add_done_callback(_remove_copy)

    def close(self) -> None:
        """Wait for a copy in progress, then remove the stage folder with every copy in it."""
        self._copier.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)
