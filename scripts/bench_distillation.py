"""Benchmark: regions per second and peak memory of a PatHME distillation training step.

Writes a region store of random features with the real expert sizes (expert A 1536 like Prov-GigaPath, expert
B 1024 like UNI; every tile valid), builds the run of :class:`~pathme.engines.distill_workflow.DistillationRun`
for each preset (``tiny``, and ``paper``: D 1024, depth 12, 65536 prototypes) and runs its real Ignite trainer
for ``--iterations`` steps after one warm-up step. A step is timed (wall and process CPU seconds) from
ITERATION_STARTED to ITERATION_COMPLETED: student and teacher forward, the five losses, backward, clipping,
AdamW, EMA update; loading its batch (GET_BATCH_STARTED to GET_BATCH_COMPLETED) is timed apart. Figures are
medians over the timed steps, regions/s = batch / median seconds per step. Each preset runs in its own spawned
process, so the peak resident memory (``ru_maxrss``) is that preset's alone; on CUDA also
``torch.cuda.max_memory_allocated``.

Prints a table and writes JSON.
Usage: ``python scripts/bench_distillation.py [--presets tiny paper] [--batch-size 4] [--iterations 5] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from pathme.engines.distill_workflow import DistillationRun
from pathme.store.atomic import write_atomic
from pathme.synthetic.stores import write_store

EXPERTS = {"prov-gigapath": 1536, "uni": 1024}
#: (title, key, width) of the printed table's columns
COLUMNS = (
    ("preset", "preset", 6),
    ("params M", "parameters_m", 8),
    ("batch", "batch_size", 5),
    ("s/step", "seconds_per_step", 8),
    ("CPU s/step", "cpu_seconds_per_step", 10),
    ("regions/s", "regions_per_second", 9),
    ("load s", "batch_loading_s", 6),
    ("RSS GiB", "peak_rss_gib", 7),
    ("CUDA GiB", "cuda_max_allocated_gib", 8),
)


def attach_timer(
    trainer: Engine, start: Events, end: Events, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Seconds of ``clock`` between ``start`` and ``end`` of every iteration, appended to the returned list."""
    times: list[float] = []
    began = [0.0]
    trainer.add_event_handler(start, lambda _: began.__setitem__(0, clock()))
    trainer.add_event_handler(end, lambda _: times.append(clock() - began[0]))
    return times


def bench_preset(preset: str, dataset_dir: Path, batch_size: int, iterations: int) -> dict:
    """Train ``1 + iterations`` steps of ``preset`` through the real trainer; figures exclude the first step."""
    with tempfile.TemporaryDirectory() as output_dir:
        run = DistillationRun(
            dataset_dir,
            output_dir,
            expert_a="prov-gigapath",
            expert_b="uni",
            max_iterations=1 + iterations,
            batch_size=batch_size,
            preset=preset,
            holdout_fraction=0.0,
            freeze_last_layer=0,  # the steady state: every parameter updated
        )
        parts = run.build()
        trainer: Engine = parts["trainer"]
        steps = attach_timer(trainer, Events.ITERATION_STARTED, Events.ITERATION_COMPLETED)
        cpu = attach_timer(trainer, Events.ITERATION_STARTED, Events.ITERATION_COMPLETED, time.process_time)
        loading = attach_timer(trainer, Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
            trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: torch.cuda.synchronize())
        trainer.run(parts["loader"], max_iters=1 + iterations, epoch_length=len(parts["loader"]))
        net = parts["teacher"]
        seconds = statistics.median(steps[1:])  # robust to a step slowed by other work on the machine
        return {
            "preset": preset,
            "device": str(run.device),
            "parameters_m": round(sum(p.numel() for p in parts["student"].parameters()) / 1e6, 1),
            "embed_dim": net.config.embed_dim,
            "depth": net.config.depth,
            "num_prototypes": net.config.num_prototypes,
            "batch_size": batch_size,
            "timed_steps": len(steps) - 1,
            "first_step_s": round(steps[0], 3),
            "seconds_per_step": round(seconds, 3),
            "seconds_per_step_range": [round(min(steps[1:]), 3), round(max(steps[1:]), 3)],
            "cpu_seconds_per_step": round(statistics.median(cpu[1:]), 3),
            "batch_loading_s": round(statistics.median(loading[1:]), 3),
            "regions_per_second": round(batch_size / seconds, 3),
            "final_loss": round(trainer.state.output["total"], 4),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "cuda_max_allocated_gib": (
                round(torch.cuda.max_memory_allocated() / 2**30, 2) if run.device.type == "cuda" else None
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--batch-size", type=int, default=4, help="regions per step (one process: the global batch)")
    parser.add_argument("--iterations", type=int, default=5, help="timed steps, after one warm-up step")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cuda {torch.cuda.is_available()}",
        "experts": EXPERTS,
        "load_average_before": os.getloadavg(),
        "presets": [],
    }
    print(" ".join(f"{title:>{width}}" for title, _, width in COLUMNS))
    with tempfile.TemporaryDirectory() as folder:
        regions = args.batch_size * (1 + args.iterations)  # one epoch covers every step
        write_store(Path(folder), "bench_slide", "bench_patient", ["full"] * regions, EXPERTS)
        spawn = multiprocessing.get_context("spawn")  # a fresh process per preset: its own peak memory
        for preset in args.presets:
            with spawn.Pool(1) as pool:
                row = pool.apply(bench_preset, (preset, Path(folder), args.batch_size, args.iterations))
            results["presets"].append(row)
            print(" ".join(f"{row[key]!s:>{width}}" for _, key, width in COLUMNS))
    results["load_average_after"] = os.getloadavg()  # other work on the machine slows every step
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
