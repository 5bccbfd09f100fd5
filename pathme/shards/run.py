"""One task's share of a per-slide run (extraction, previews, embedding): claims, records, staging, throughput.

Each slide is worked on under its output's :func:`~pathme.store.atomic.writer_lock` (an ``flock`` through the
``filelock`` package; the kernel releases it when its task dies, and a network file system when the dead node's
lease expires, so a dead task's claim never outlives it): a slide another task is on is put off to the end of
this task's list and then waited for, and whatever that task left is checked like any other output (the caller
skips a valid one). So two tasks given the same slide (a retry while the first still runs, an overlapping manual
run, two runs started at once) never both do it. Each slide's row is recorded as it finishes and the shard's
record when it starts and ends (:mod:`pathme.shards.records`); SIGTERM (``scancel``, a job's time limit) stops
the task between two writes, its shard recorded ``interrupted``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import Timeout
from tqdm import tqdm

from pathme.console import announce
from pathme.shards.records import Plan, RunRecords, now, task_identity
from pathme.shards.shard import Shard
from pathme.shards.staging import AHEAD, Stager
from pathme.shards.status import write_merged
from pathme.shards.throughput import DONE, FAILED, Throughput, describe, peak_memory_mb
from pathme.store.atomic import writer_lock
from pathme.wsi.readers import slide_files

logger = logging.getLogger(__name__)


#: what a run does to one item: ``process(item, local)`` -> its summary row (see :meth:`ShardRun.run`)
Process = Callable[["WorkItem", Callable[[], Path]], dict]


class Interrupted(KeyboardInterrupt):
    """The task was told to stop (SIGTERM: ``scancel``, a time limit); ``signal`` is the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signal = signum


@dataclass(frozen=True)
class WorkItem:
    """One slide of a run: its id, the file it reads (a slide or a region store) and the output it makes."""

    key: str
    path: Path
    target: Path


_STOP = threading.Event()  # set by SIGTERM while a shard runs (signals are the whole process's)


def raise_if_stopped() -> None:
    """Raise :class:`Interrupted` once SIGTERM has arrived: long loops (a slide's regions) call it, because the
    signal handler's own exception is lost when the signal lands in a finaliser or a fork callback (starting the
    region readers), which Python runs with exceptions ignored."""
    if _STOP.is_set():
        raise Interrupted(signal.SIGTERM)


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Interrupted` in the main thread (so writes in progress are
    discarded, claims released and the shard recorded as interrupted), once: a second SIGTERM does not break the
    clean-up of the first. In a thread other than the main one nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _stop(signum: int, frame: object) -> None:
        if not _STOP.is_set():
            _STOP.set()
            raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.clear()


def _size(path: Path) -> int:
    """Bytes of a slide's files (a DICOM series' instances together)."""
    try:
        return sum(file.stat().st_size for file in slide_files(path))
    except OSError:
        return 0  # a missing slide fails fast wherever it lands


class ShardRun:
    """A task's run over its shard of the slides: :meth:`share` (reads only), then :meth:`run`.

    ``kind`` names the run in records (``extract``, ``preview``, ``embed``); ``summary`` is the file of the merged
    rows of every slide in ``output_dir``; ``columns`` the caller's row columns (the slide id's first), to which a
    ``shard`` column is added."""

    def __init__(
        self,
        kind: str,
        output_dir: str | Path,
        shard: Shard,
        summary: str,
        columns: Sequence[str],
    ):
        self.kind, self.shard, self.summary = kind, shard, summary
        self.output_dir = Path(output_dir)
        self.columns = [*columns, "shard"]
        self.records = RunRecords(self.output_dir, kind)
        self.plan: Plan | None = None

    def share(self, items: Sequence[WorkItem], source: str | Path) -> list[WorkItem]:
        """This shard's items, in their order: the recorded plan of the same slides and shard count when there is
        one, else shards balanced by file size (:func:`~pathme.shards.shard.assign`). Writes nothing; ShardError
        for a scheduler's shard that contradicts the recorded plan (:meth:`RunRecords.check_plan`)."""
        work = {item.key: _size(item.path) for item in items}
        self.plan = self.records.check_plan(Plan.make(str(source), work, self.shard.count), self.shard)
        mine = set(self.plan.keys_of(self.shard.index))
        return [item for item in items if item.key in mine]

    def run(self, items: Sequence[WorkItem], process: Process, stager: Stager | None = None) -> pd.DataFrame:
        """``process(item, local)`` -> the row of each item, under the item's claim (``local()``: the file to read, a
        staged copy when ``stager`` is given, copied on that call unless copied ahead, so a slide skipped without
        reading is never waited for); returns this task's rows, writes the records and the merged
        summary. :class:`Interrupted` when the task is stopped by SIGTERM."""
        if self.plan is None:
            raise RuntimeError("ShardRun.run before share")
        self.plan = self.records.write_plan(self.plan)
        lock = self.records.shard_lock(self.shard)
        try:
            lock.acquire(timeout=0)
            held = True
        except Timeout:
            logger.warning("shard %s: another task is on it too; each slide is still done once", self.shard)
            held = False
        except OSError as error:  # no flock on this file system: `pathme status` cannot tell running from dead
            logger.warning("shard %s: its lock cannot be taken (%s); pathme status may call it died", self.shard, error)
            held = False
        started, clock = now(), time.perf_counter()
        record = {"kind": self.kind, "shard": str(self.shard), "origin": self.shard.origin, "started": started}
        record |= {"summary": self.summary, "columns": self.columns}
        record |= task_identity() | {"slides": [item.key for item in items], "state": "running"}
        self.records.write_shard(self.shard, record)
        throughput, state = Throughput(), "interrupted"
        rows: dict[int, dict] = {}
        try:
            with _stop_on_sigterm():
                self._work(items, process, stager, throughput, rows)
            state = "finished"
        finally:
            figures = throughput.row(time.perf_counter() - clock) | peak_memory_mb()
            self.records.write_shard(self.shard, record | {"state": state, "ended": now(), "throughput": figures})
            if held:
                lock.release()
            if state == "finished":
                write_merged(self.records, self.plan, self.output_dir, self.summary, self.columns)
            line = ("%s shard %s %s: %s", self.kind, self.shard, state, describe(figures))
            if throughput.tiles:  # an extraction's figures are shown; a preview's or an embedding's logged
                announce(logger, *line)
            else:
                logger.info(*line)
        return pd.DataFrame([rows[position] for position in sorted(rows)], columns=self.columns)

    def _work(
        self,
        items: Sequence[WorkItem],
        process: Process,
        stager: Stager | None,
        throughput: Throughput,
        rows: dict[int, dict],
    ) -> None:
        queue = deque((position, False) for position in range(len(items)))  # (position, wait for its claim)
        desc = self.kind if self.shard.count == 1 else f"{self.kind} (shard {self.shard})"
        with tqdm(total=len(items), desc=desc, unit="slide", disable=None) as bar:
            while queue:
                position, wait = queue.popleft()
                if stager is not None:
                    stager.expect(items[p].path for p, _ in list(queue)[:AHEAD])
                row = self._claimed(items[position], process, stager, wait)
                if row is None:
                    logger.info("slide %s: another task is on it; put off to the end", items[position].key)
                    queue.append((position, True))
                    continue
                rows[position] = row
                throughput.add(row)
                bar.update()
                bar.set_postfix(status=row.get("status") or ("failed" if row.get("error") else DONE))

    def _claimed(self, item: WorkItem, process: Process, stager: Stager | None, wait: bool) -> dict | None:
        """The item's row, done under its claim; None when another task holds the claim and ``wait`` is False. A
        claim that cannot be taken at all (no room for its file) is done without: claims only save work."""
        lock = writer_lock(item.target)
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not wait:
                    return None
                announce(logger, "slide %s: waiting for the other task that is on it", item.key)
                lock.acquire()
        except OSError as error:  # (filelock's Timeout is one too, but is handled above)
            logger.warning("slide %s: done without a claim, which cannot be taken (%s)", item.key, error)
            return self._done(item, process, stager)
        try:
            return self._done(item, process, stager)
        finally:
            lock.release()

    def _done(self, item: WorkItem, process: Process, stager: Stager | None) -> dict:
        started = now()
        try:
            row = process(item, (lambda: stager.local(item.path)) if stager is not None else (lambda: item.path))
        finally:
            if stager is not None:
                stager.release(item.path)
        failed = row.get("status") == FAILED or bool(row.get("error"))
        if not (_STOP.is_set() and failed):  # a failure during a stop is the stop's (a reader killed by it)
            row |= {"shard": str(self.shard)}
            self._record(item.key, row | {"started": started, "finished": now()} | task_identity())
        raise_if_stopped()
        return row

    def _record(self, key: str, record: dict) -> None:
        """Record a slide's row; a skip (the output was there) does not hide the record of the run that made it."""
        if str(record.get("status", "")).startswith("skipped"):
            earlier = self.records.read_slide(key)
            if earlier is not None and earlier.get("status") != FAILED:
                return
        self.records.write_slide(key, record)
