"""Throughput of a run and of each shard: slides per hour, tiles per second per expert, where the time went, peak
memory. Written into every shard's record and ``throughput.csv`` and logged, so a slow node, a slow file system
(reading dominates) or a slow expert shows without a profiler.

A slide's record may carry ``tiles`` and its ``read_s`` (waiting for the region readers), ``encode_s_by_expert``
(a mapping expert -> seconds in its forward passes) and ``write_s`` (writing the store), as extraction records
them.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

#: statuses of a slide record: newly done, skipped (a valid output was there), failed
DONE, FAILED = "done", "failed"


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory (MB) of this process and of its largest finished child (a region reader), and the peak
    GPU memory torch allocated when it used a GPU."""
    peaks = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "peak_reader_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    torch = sys.modules.get("torch")  # only when the run imported it; a preview never does
    if torch is not None and torch.cuda.is_initialized():
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {name: round(value, 1) for name, value in peaks.items()}


@dataclass
class Throughput:
    """Sums over the slides of one task: call :meth:`add` with each slide's record."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    tiles: int = 0
    read_s: float = 0.0
    write_s: float = 0.0
    encode_s: dict[str, float] = field(default_factory=dict)

    def add(self, record: Mapping[str, object]) -> None:
        """Count one slide's record: done, skipped or failed, and a done slide's tiles and seconds."""
        status = str(record.get("status", DONE if not record.get("error") else FAILED))
        if status == DONE:
            self.done += 1
        elif status == FAILED:
            self.failed += 1
        else:
            self.skipped += 1
        if status != DONE:
            return
        self.tiles += int(record.get("tiles") or 0)
        self.read_s += float(record.get("read_s") or 0.0)
        self.write_s += float(record.get("write_s") or 0.0)
        for name, seconds in dict(record.get("encode_s_by_expert") or {}).items():
            self.encode_s[name] = self.encode_s.get(name, 0.0) + float(seconds)

    def row(self, wall_s: float) -> dict[str, object]:
        """The figures of a task that ran ``wall_s`` seconds (see :func:`rates`)."""
        sums = {
            "wall_s": round(wall_s, 1),
            "slides_done": self.done,
            "slides_skipped": self.skipped,
            "slides_failed": self.failed,
            "tiles": self.tiles,
            "read_s": round(self.read_s, 1),
            "encode_s": round(sum(self.encode_s.values()), 1),
            "write_s": round(self.write_s, 1),
        }
        sums |= {f"encode_s:{name}": round(s, 2) for name, s in self.encode_s.items()}
        return sums | rates(sums)


def rates(row: Mapping[str, object]) -> dict[str, object]:
    """Slides per hour and tiles per second of wall time, and each expert's own rate (its tiles over the seconds
    of its forward passes); ``row`` holds sums (``wall_s``, ``slides_done``, ``tiles``, ``encode_s:<expert>``)."""
    wall = max(float(row["wall_s"]), 0.1)  # (wall_s is rounded to 0.1 s)
    found = {
        "slides_per_hour": round(float(row["slides_done"]) * 3600 / wall, 1),
        "tiles_per_s": round(float(row["tiles"]) / wall, 1),
    }
    for key, seconds in row.items():
        if key.startswith("encode_s:") and float(seconds) > 0:
            found[f"tiles_per_s:{key.split(':', 1)[1]}"] = round(float(row["tiles"]) / float(seconds), 1)
    return found


def total_row(rows: Iterable[Mapping[str, object]], span_s: float) -> dict[str, object]:
    """The cohort's figures from its shards' rows: counts, tiles and seconds summed, peaks maximised, rates over
    ``span_s`` (first start to last end) while the shards ran side by side."""
    frame = pd.DataFrame(list(rows))
    sums = [c for c in frame.columns if c.startswith(("slides_", "tiles", "read_s", "write_s", "encode_s"))]
    sums = [c for c in sums if not c.startswith(("slides_per_hour", "tiles_per_s"))]
    total: dict[str, object] = {column: round(frame[column].fillna(0).sum().item(), 2) for column in sums}
    peaks = [c for c in frame.columns if c.startswith("peak_")]
    total |= {column: frame[column].max().item() for column in peaks}
    total["wall_s"] = round(span_s, 1)
    return total | rates(total)


def describe(row: Mapping[str, object]) -> str:
    """One line for the log: slides per hour, tiles per second (overall and per expert), time shares, peaks."""
    spent = {part: float(row.get(f"{part}_s") or 0.0) for part in ("read", "encode", "write")}
    busy = sum(spent.values()) or 1.0
    experts = ", ".join(f"{k.split(':', 1)[1]} {v:g}" for k, v in row.items() if k.startswith("tiles_per_s:"))
    peaks = {k.removeprefix("peak_").removesuffix("_mb"): v for k, v in row.items() if k.startswith("peak_")}
    memory = ", ".join(f"{name} {value:g} MB" for name, value in peaks.items())
    return (
        f"{row['slides_done']} slide(s) done in {float(row['wall_s']):.0f} s ({row['slides_per_hour']:g} slides/h), "
        f"{row['tiles']} tiles ({row['tiles_per_s']:g}/s; per expert's own time: {experts or '-'}); time reading "
        f"{spent['read'] / busy:.0%}, encoding {spent['encode'] / busy:.0%}, writing {spent['write'] / busy:.0%}; "
        f"peak memory: {memory}"
    )
