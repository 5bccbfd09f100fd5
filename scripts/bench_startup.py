"""Benchmark: start-up of ``pathme extract``, from the process's start to the moment it first opens a slide.

Each run is a fresh ``python -m pathme.cli extract`` of the sample slide (tiny experts, output in a temporary
folder) whose main process stops as soon as it opens the slide file (an audit hook on ``open``: the fingerprint
read that precedes every decode). Seconds are counted from the process's start time in ``/proc`` (10 ms ticks),
so interpreter start-up, imports, the bundle config and building the experts are all in. One more run under
``python -X importtime`` gives the top-level packages' cumulative import times. Prints and writes JSON.
Usage: ``python scripts/bench_startup.py [--repeats 5] [--experts tiny-vit tiny-cnn] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pathme.store.atomic import write_atomic

#: runs in the measured process: stop at the first open() of the slide, printing seconds since process start
PROBE = """
import os, sys
slide = os.path.realpath(sys.argv[1])

def since_start():
    ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    return float(open("/proc/uptime").read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and os.path.realpath(args[0]) == slide:
        print(f"first_slide_open_s={since_start():.3f}", flush=True)
        os._exit(0)

sys.addaudithook(hook)
from pathme.cli import main
sys.argv = ["pathme", "extract", *sys.argv[2:]]
main()
"""


def run_probe(slide: Path, out: Path, experts: list[str], *python_flags: str) -> subprocess.CompletedProcess:
    manifest = out / "manifest.csv"
    manifest.write_text(f"slide_id,path\nsample,{slide}\n")
    args = ["--manifest", str(manifest), "--output-dir", str(out / "features"), "--experts", *experts]
    command = [sys.executable, *python_flags, "-c", PROBE, str(slide), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def seconds(result: subprocess.CompletedProcess) -> float:
    found = re.search(r"first_slide_open_s=([\d.]+)", result.stdout)
    if found is None:
        raise RuntimeError(f"the probe never opened the slide:\n{result.stderr[-3000:]}")
    return float(found.group(1))


def top_level_imports(stderr: str, count: int = 12) -> dict[str, float]:
    """Cumulative seconds of the slowest top-level imports in ``-X importtime`` output."""
    times = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)  # no indent: a top-level import
        if match:
            times[match.group(2)] = times.get(match.group(2), 0) + int(match.group(1)) / 1e6
    return {name: round(value, 3) for name, value in sorted(times.items(), key=lambda kv: -kv[1])[:count]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--experts", nargs="+", default=["tiny-vit", "tiny-cnn"])
    parser.add_argument("--cache", type=Path, default=Path(".cache"), help="where the sample slide is (fetched)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from pathme.demo.sample_data import fetch_sample_slide

    slide = fetch_sample_slide(args.cache).resolve()
    with tempfile.TemporaryDirectory() as folder:
        runs = [seconds(run_probe(slide, Path(folder), args.experts)) for _ in range(args.repeats)]
        imports = top_level_imports(run_probe(slide, Path(folder), args.experts, "-X", "importtime").stderr)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "experts": args.experts,
        "first_slide_open_s": {"median": statistics.median(runs), "min": min(runs), "runs": runs},
        "top_level_imports_s": imports,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
