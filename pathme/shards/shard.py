"""Which share of a cohort one task works through: ``--shard I/N``, a SLURM array task, a torchrun rank, or all.

A cluster's scheduler is the distributed engine of per-slide work: each task of a job array (or each process of
``torchrun`` / ``srun -n``) takes one shard and needs no other task to finish. The slide -> shard assignment
(:func:`assign`) depends only on the slides and their sizes, never on the manifest's row order, and is recorded
by the first task (:mod:`pathme.shards.records`), so every node and every retry agrees on it.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: what a slide costs beyond its bytes: its fingerprint reads 8 MiB and its thumbnail and tissue plan take about as
#: long whatever the slide's size, so small slides are not all piled onto one shard
PER_SLIDE_BYTES = 8 * 2**20
_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class ShardError(ValueError):
    """A shard that cannot be used: a malformed ``--shard``, or one that disagrees with the SLURM array or with the
    shards an output folder was already split into; the message says what to give instead."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based); ``origin`` says where it came from, for the log and errors."""

    index: int
    count: int
    origin: str = "--shard"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """``shard-<index>-of-<count>``: names the shard's record files."""
        return f"shard-{self.index}-of-{self.count}"

    @property
    def automatic(self) -> bool:
        """True when read from the scheduler's environment rather than given as ``--shard``."""
        return self.origin != "--shard"


WHOLE = Shard(0, 1, "the whole cohort")


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N); ShardError unless I and N are whole numbers with 0 <= I < N."""
    match = _SHARD.fullmatch(str(text))
    if match is None or not int(match[2]) or int(match[1]) >= int(match[2]):
        raise ShardError(
            f"--shard {text}: give I/N with whole numbers 0 <= I < N (the first of 4 shards is 0/4, the last 3/4)"
        )
    return Shard(int(match[1]), int(match[2]))


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def resolve_shard(given: str | None, environ: Mapping[str, str] | None = None) -> Shard:
    """The shard of this process: ``given`` (``--shard I/N``) when set, else a SLURM array task (``SLURM_ARRAY_TASK_ID``
    minus ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``), else a torchrun rank (``RANK`` of ``WORLD_SIZE``),
    else an ``srun -n`` task (``SLURM_PROCID`` of ``SLURM_NTASKS``), else :data:`WHOLE`.

    ShardError for a malformed ``given``, a SLURM array of more tasks than ``given``'s N (tasks would repeat
    shards), and an array whose task ids are not one run of numbers (a resubmission ``--array=1,3`` of some shards
    needs the N of the first submission: ``--shard $SLURM_ARRAY_TASK_ID/N``)."""
    environ = os.environ if environ is None else environ
    task, tasks = _int(environ, "SLURM_ARRAY_TASK_ID"), _int(environ, "SLURM_ARRAY_TASK_COUNT")
    job = environ.get("SLURM_ARRAY_JOB_ID", "?")
    if given:
        shard = parse_shard(given)
        if task is not None and tasks is not None and tasks > shard.count:
            raise ShardError(
                f"--shard {given}: SLURM array job {job} has {tasks} tasks for {shard.count} shards, so some tasks "
                f"would repeat a shard; submit --array=0-{shard.count - 1} (or some of those ids)"
            )
        return shard
    if task is not None:
        first, last = _int(environ, "SLURM_ARRAY_TASK_MIN"), _int(environ, "SLURM_ARRAY_TASK_MAX")
        if tasks is None or first is None or last is None or last - first + 1 != tasks:
            raise ShardError(
                f"SLURM array job {job}: its task ids {first}-{last} ({tasks} tasks) are not one run of numbers, so "
                "they cannot be read as shards 0..N-1; give --shard $SLURM_ARRAY_TASK_ID/N with the N of the first "
                "submission (a resubmission of some shards)"
            )
        return Shard(task - first, tasks, f"SLURM array job {job} task {task}")
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    if rank is not None and world:
        return Shard(rank, world, "torchrun rank")
    process, processes = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS")
    if process is not None and processes and processes > 1:
        return Shard(process, processes, f"srun task {process} of job {environ.get('SLURM_JOB_ID', '?')}")
    return WHOLE


def assign(work: Mapping[str, int], count: int) -> dict[str, int]:
    """Slide id -> shard, balancing the summed ``work`` (bytes) of the shards: the largest slides first, each to
    the shard with the least work so far (ties: the lower shard), ties between slides broken by id. So the result
    depends only on the ids and their work, not on their order; each slide counts :data:`PER_SLIDE_BYTES` more."""
    loads = [(0, shard) for shard in range(count)]
    shards: dict[str, int] = {}
    for key in sorted(work, key=lambda key: (-work[key], key)):
        load, shard = heapq.heappop(loads)
        shards[key] = shard
        heapq.heappush(loads, (load + work[key] + PER_SLIDE_BYTES, shard))
    return shards
