"""What a sharded run leaves behind, so that any task, a retry or ``pathme status`` can tell what is done.

Under ``<output_dir>/records/<kind>/`` (kind: ``extract``, ``preview``, ``embed``):

- ``plan.json``: the slides of the run, each one's work (bytes) and shard, and the shard count; written once by
  the first task of a run (under ``plan.lock``), read by every later task and retry of the same slides and count,
  so all agree on the shards even if a file's size reads differently on another node;
- ``slides/<slide_id>.json``: one slide's summary row, written atomically as soon as the slide is finished (a
  killed task loses at most the slide it was on);
- ``shards/shard-<I>-of-<N>.json``: one shard's task (state ``running``, then ``finished`` or ``interrupted``,
  host, job, start and end, its slides, throughput), written atomically when it starts and when it ends; the task
  holds ``shards/shard-<I>-of-<N>.lock`` while it runs, so a record that still says ``running`` while nobody holds
  the lock belongs to a task that died.

All JSON, all written through :func:`pathme.store.atomic.write_atomic`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from pathme.shards.shard import Shard, ShardError, assign
from pathme.store.atomic import flock, write_atomic

RECORDS = "records"


def now() -> str:
    """The current time in UTC, ISO 8601 to the second: what records carry."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def elapsed(since: str, until: str | None = None) -> float:
    """Seconds from the record time ``since`` to ``until`` (default now)."""
    end = dt.datetime.fromisoformat(until) if until else dt.datetime.now(dt.UTC)
    return (end - dt.datetime.fromisoformat(since)).total_seconds()


def task_identity() -> dict[str, object]:
    """Where this task runs: host, process id and, under SLURM, the job (and array job and task) ids."""
    slurm = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_task_id": "SLURM_ARRAY_TASK_ID",
    }
    return {"host": socket.gethostname(), "pid": os.getpid()} | {
        key: os.environ[name] for key, name in slurm.items() if name in os.environ
    }


@dataclass(frozen=True)
class Plan:
    """The slides of a run (in the order of its source), their work and shards."""

    source: str  # the manifest (or folder of stores) the slides come from
    digest: str  # sha256 of the slide ids: another set of slides is another plan, other sizes are not
    count: int
    work: dict[str, int]
    shards: dict[str, int]

    @classmethod
    def make(cls, source: str, work: Mapping[str, int], count: int) -> Plan:
        """The plan of the slides ``work`` (slide id -> bytes, in the source's order) in ``count`` shards."""
        digest = hashlib.sha256(json.dumps(sorted(work)).encode()).hexdigest()
        return cls(source, digest, count, dict(work), assign(work, count))

    def keys_of(self, index: int) -> list[str]:
        """The slides of shard ``index``, in the order of the source."""
        return [key for key in self.work if self.shards[key] == index]

    def as_json(self) -> dict[str, object]:
        """What ``plan.json`` holds: the source, digest, count and one entry per slide (id, bytes, shard)."""
        return {
            "source": self.source,
            "digest": self.digest,
            "count": self.count,
            "slides": [{"slide_id": key, "bytes": self.work[key], "shard": self.shards[key]} for key in self.work],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Plan:
        """The plan :meth:`as_json` wrote."""
        slides = data["slides"]
        return cls(
            data["source"],
            data["digest"],
            int(data["count"]),
            {row["slide_id"]: int(row["bytes"]) for row in slides},
            {row["slide_id"]: int(row["shard"]) for row in slides},
        )


class RunRecords:
    """The records of one kind of run in one output folder (see the module docstring)."""

    def __init__(self, output_dir: str | Path, kind: str):
        self.kind = kind
        self.folder = Path(output_dir) / RECORDS / kind
        self.slides = self.folder / "slides"
        self.shards = self.folder / "shards"

    @staticmethod
    def kinds(output_dir: str | Path) -> list[str]:
        """The kinds of run that left records in ``output_dir``."""
        folder = Path(output_dir) / RECORDS
        return sorted(p.name for p in folder.iterdir() if (p / "plan.json").is_file()) if folder.is_dir() else []

    # the plan ---------------------------------------------------------------------------------------------------
    def read_plan(self) -> Plan | None:
        """The recorded plan, or None before any task of this kind wrote one here."""
        path = self.folder / "plan.json"
        return Plan.from_json(json.loads(path.read_text())) if path.is_file() else None

    def check_plan(self, plan: Plan, shard: Shard) -> Plan:
        """The plan this shard must follow, without writing anything: the recorded one when it is of the same
        slides and count (so a retry gets the shards of the first submission), else ``plan``. ShardError when
        ``shard`` was read from a scheduler and the recorded plan of the same slides has another count: a partial
        resubmission (``--array=2-3``) whose tasks would be misread as shards 0 and 1 of 2."""
        recorded = self.read_plan()
        if recorded is None or recorded.digest != plan.digest:
            return plan
        if recorded.count == plan.count:
            return recorded
        if shard.automatic:
            raise ShardError(
                f"{shard.origin} reads as shard {shard} of {shard.count}, but the {self.kind} run in "
                f"{self.folder.parent.parent} splits these slides into {recorded.count} shards "
                f"({self.folder / 'plan.json'}); resubmit with --shard $SLURM_ARRAY_TASK_ID/{recorded.count}, or give "
                "another --output-dir to split them anew"
            )
        return plan

    def write_plan(self, plan: Plan) -> Plan:
        """Record ``plan`` unless the same slides and count are recorded already (then return that one). Under a lock
        where the file system has them, so the tasks starting together keep the first task's plan."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = flock(self.folder / "plan.lock")
        try:
            lock.acquire()
        except OSError:  # no flock here: tasks of one run compute the same plan anyway, unless sizes read differently
            return self._write_plan(plan)
        try:
            return self._write_plan(plan)
        finally:
            lock.release()

    def _write_plan(self, plan: Plan) -> Plan:
        recorded = self.read_plan()
        if recorded is not None and (recorded.digest, recorded.count) == (plan.digest, plan.count):
            return recorded
        write_atomic(self.folder / "plan.json", json.dumps(plan.as_json(), indent=1))
        return plan

    # slides -----------------------------------------------------------------------------------------------------
    def write_slide(self, key: str, record: Mapping[str, object]) -> None:
        """Write the record of slide ``key`` durably (atomic, fsynced)."""
        write_atomic(self.slides / f"{key}.json", json.dumps(record, default=str))

    def read_slide(self, key: str) -> dict | None:
        """The record of slide ``key``, or None when it has none."""
        path = self.slides / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def read_slides(self) -> dict[str, dict]:
        """Every slide record, by slide id."""
        if not self.slides.is_dir():
            return {}
        return {path.stem: json.loads(path.read_text()) for path in sorted(self.slides.glob("*.json"))}

    # shards -----------------------------------------------------------------------------------------------------
    def shard_lock(self, shard: Shard) -> FileLock:
        """The lock a task holds while it works on ``shard`` (see :meth:`shard_running`)."""
        self.shards.mkdir(parents=True, exist_ok=True)
        return flock(self.shards / f"{shard.name}.lock")

    def write_shard(self, shard: Shard, record: Mapping[str, object]) -> None:
        """Write the record of ``shard``'s task atomically (replacing the one it wrote when it started)."""
        write_atomic(self.shards / f"{shard.name}.json", json.dumps(record, indent=1, default=str))

    def read_shards(self, count: int) -> dict[int, dict]:
        """Shard index -> its task's record, for the shards of a ``count``-shard run that have one."""
        found = {}
        for index in range(count):
            path = self.shards / f"{Shard(index, count).name}.json"
            if path.is_file():
                found[index] = json.loads(path.read_text())
        return found

    def shard_running(self, shard: Shard) -> bool:
        """Whether a task holds the shard's lock now (a flock: released by the kernel when its task dies, and on a
        network file system when the dead node's lease with the server expires); False where it cannot be told (a file
        system without ``flock``)."""
        path = self.shards / f"{shard.name}.lock"
        if not path.exists():
            return False
        lock = flock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return False
        lock.release()
        return False


__all__ = ["Plan", "RunRecords", "ShardError", "elapsed", "now", "task_identity"]
