"""Where a sharded run stands, from its records alone (``pathme status``): the merged summary and throughput,
each shard's state, missing and failed slides with their reasons, an ETA, and the shards to resubmit.

A shard's state: ``running`` (a task holds its lock now), ``finished``, ``interrupted`` (stopped by SIGTERM),
``died`` (its record says running but no task holds its lock: killed by SIGKILL, a lost node), ``not started``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pathme.shards.records import Plan, RunRecords, elapsed
from pathme.shards.shard import Shard
from pathme.shards.throughput import FAILED, describe, total_row
from pathme.store.atomic import write_csv_atomic


def _ok(record: dict | None) -> bool:
    """Whether a slide record says its output is there (done or skipped, for previews: no error)."""
    if record is None:
        return False
    return record.get("status", FAILED if record.get("error") else "done") != FAILED


def throughput_table(records: RunRecords, plan: Plan) -> pd.DataFrame:
    """One row per shard whose task recorded its throughput, then a ``total`` row over them all."""
    shards = records.read_shards(plan.count)
    rows = [
        {"shard": record["shard"], "host": record.get("host", ""), "state": record["state"]} | record["throughput"]
        for _, record in sorted(shards.items())
        if "throughput" in record
    ]
    if not rows:
        return pd.DataFrame(rows)
    first = min(record["started"] for record in shards.values())
    last = max(record.get("ended") or record["started"] for record in shards.values())
    span = max(elapsed(first, last), *(row["wall_s"] for row in rows))  # records' times are to the second
    total = {"shard": "total", "host": "", "state": ""} | total_row(rows, span)
    return pd.DataFrame([*rows, total])


def write_merged(records: RunRecords, plan: Plan, output_dir: Path, summary: str, columns: Sequence[str]) -> None:
    """Write the summary of every slide of ``plan`` that has a record (``summary`` in ``output_dir``, in the plan's
    order) and ``<kind>_throughput.csv``; atomic, so tasks ending together do not mix their files."""
    slides = records.read_slides()
    table = pd.DataFrame([slides[key] for key in plan.work if key in slides], columns=list(columns))
    write_csv_atomic(output_dir / summary, table.convert_dtypes())  # counts stay integers beside empty cells
    write_csv_atomic(output_dir / f"{records.kind}_throughput.csv", throughput_table(records, plan))


def array_list(indices: Sequence[int]) -> str:
    """Shard indices as SLURM's ``--array`` list: ``[0, 2, 3, 4]`` -> ``0,2-4``."""
    parts: list[str] = []
    for index in sorted(indices):
        if parts and parts[-1].split("-")[-1] == str(index - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ",".join(parts)


@dataclass
class ShardState:
    """One shard of a run: its state (see the module docstring), its task's host and start, its slides' counts, and
    for a running shard the seconds it still needs (None: not known yet)."""

    shard: Shard
    state: str
    host: str = ""
    started: str = ""
    slides: int = 0
    ok: int = 0
    failed: int = 0
    missing: int = 0
    eta_s: float | None = None


@dataclass
class RunStatus:
    """Where one kind of run in one output folder stands; :meth:`render` is what ``pathme status`` prints."""

    kind: str
    output_dir: Path
    plan: Plan
    shards: list[ShardState]
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # slide, shard, reason
    missing: list[tuple[str, int]] = field(default_factory=list)  # slide, shard
    throughput: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: Path | None = None  # the merged summary written, once a task has recorded its columns

    @property
    def complete(self) -> bool:
        """Whether every slide has its output (none missing, none failed)."""
        return not self.failed and not self.missing

    @property
    def resubmit(self) -> list[int]:
        """Shards with missing or failed slides that no task is running."""
        waiting = {shard for _, shard in self.missing} | {shard for _, shard, _ in self.failed}
        return sorted(s.shard.index for s in self.shards if s.shard.index in waiting and s.state != "running")

    def render(self) -> str:
        """The report ``pathme status`` prints: totals, one line per shard, ETA, throughput, failed and missing
        slides, what to resubmit."""
        plan, count = self.plan, self.plan.count
        ok = sum(s.ok for s in self.shards)
        lines = [
            f"{self.kind} in {self.output_dir}: {len(plan.work)} slides of {plan.source} in {count} shard(s): "
            f"{ok} done, {len(self.failed)} failed, {len(self.missing)} missing"
        ]
        table = pd.DataFrame(
            [
                {
                    "shard": str(s.shard),
                    "state": s.state,
                    "slides": s.slides,
                    "done": s.ok,
                    "failed": s.failed,
                    "missing": s.missing,
                    "host": s.host,
                    "started": s.started,
                }
                for s in self.shards
            ]
        )
        lines += ["  " + line for line in table.to_string(index=False).splitlines()]
        running = [s for s in self.shards if s.state == "running"]
        if running:
            known = [s.eta_s for s in running if s.eta_s is not None]
            eta = f"about {_duration(max(known))}" if known else "not known yet (no slide finished)"
            waiting = sum(s.state in ("not started",) for s in self.shards)
            lines.append(
                f"ETA: {eta} for the {len(running)} running shard(s)"
                + (f", then {waiting} not started" if waiting else "")
            )
        if len(self.throughput):
            lines.append("throughput: " + describe(self.throughput.iloc[-1].dropna().to_dict()))
        lines += [f"FAILED {slide} (shard {shard}/{count}): {reason}" for slide, shard, reason in self.failed]
        shown = self.missing[:20]
        lines += [f"MISSING {slide} (shard {shard}/{count})" for slide, shard in shown]
        if len(self.missing) > len(shown):
            lines.append(f"... and {len(self.missing) - len(shown)} more missing")
        if self.resubmit:
            lines.append(
                f"resubmit: sbatch --array={array_list(self.resubmit)} <your array script> "
                f"(its tasks take --shard $SLURM_ARRAY_TASK_ID/{count})"
            )
        elif self.complete:
            lines.append(f"complete: every slide has its output; summary {self.summary}")
        return "\n".join(lines)


def run_status(output_dir: str | Path, kind: str) -> RunStatus:
    """The status of the ``kind`` run in ``output_dir``; writes its merged summary and throughput table.
    FileNotFoundError when no such run left records there."""
    output_dir = Path(output_dir)
    records = RunRecords(output_dir, kind)
    plan = records.read_plan()
    if plan is None:
        raise FileNotFoundError(f"{records.folder}: no records of a {kind} run (plan.json) in {output_dir}")
    slides, tasks = records.read_slides(), records.read_shards(plan.count)
    status = RunStatus(kind, output_dir, plan, [])
    for index in range(plan.count):
        shard, task = Shard(index, plan.count), tasks.get(index)
        if records.shard_running(shard):
            state = "running"
        elif task is None:
            state = "not started"
        else:
            state = "died" if task["state"] == "running" else task["state"]
        keys = plan.keys_of(index)
        entry = ShardState(shard, state, (task or {}).get("host", ""), (task or {}).get("started", ""), len(keys))
        for key in keys:
            record = slides.get(key)
            if _ok(record):
                entry.ok += 1
            elif record is not None:
                entry.failed += 1
                status.failed.append((key, index, str(record.get("error", ""))))
            else:
                entry.missing += 1
                status.missing.append((key, index))
        if state == "running" and task is not None:
            entry.eta_s = _eta(plan, keys, slides, task["started"])
        status.shards.append(entry)
    layout = next((task for task in tasks.values() if "columns" in task), None)  # what the tasks' rows hold
    if layout is not None:
        status.summary = output_dir / layout["summary"]
        write_merged(records, plan, output_dir, layout["summary"], layout["columns"])
    status.throughput = throughput_table(records, plan)
    return status


def _duration(seconds: float) -> str:
    """``seconds`` as a person reads a wait: 40 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _eta(plan: Plan, keys: Sequence[str], slides: dict[str, dict], started: str) -> float | None:
    """Seconds a running shard still needs: its remaining bytes at the rate (bytes/s) of the slides it finished."""
    finished = [key for key in keys if key in slides and slides[key].get("finished", "") >= started]
    spent = elapsed(started)
    if not finished or spent <= 0:
        return None
    rate = sum(plan.work[key] for key in finished) / spent
    remaining = sum(plan.work[key] for key in keys if not _ok(slides.get(key)) and key not in finished)
    return remaining / rate if rate else None
