"""Benchmark: peak memory and time of `pathme preview` on a slide with a pyramid and on the same slide without one.

A slide's thumbnail (tissue detection at 8 µm/px, heatmaps at 16) is read from the coarsest level finer than it;
without a pyramid that is level 0, and the thumbnail must still be read in bounded boxes (issue 23, t08: a 40x
slide of level 0 only was read 32,768 px a side at once). Builds, as ``bench_scale.py`` does, a 16,000² Aperio-style
JPEG slide at 0.25 µm/px twice: downsamples 1/4/16/32, and level 0 only; runs ``pathme preview`` on each in a fresh
process and reports its peak RSS (the child's ``ru_maxrss``) and wall seconds. ``--smallest``: 4,096 x 3,072 px.
Usage: ``python scripts/bench_thumbnail.py [--cache .cache/bench_scale] [--json out.json] [--smallest]``
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_scale import DOWNSAMPLES, build_slide

from pathme.demo.sample_data import fetch_sample_slide
from pathme.store.atomic import write_atomic

SIDES = {"full": (16000, 16000), "smallest": (4096, 3072)}
MPP = 0.25
PYRAMIDS = {"pyramid": DOWNSAMPLES, "level 0 only": (1,)}


#: runs the command it is given and prints the peak RSS of that child alone (ru_maxrss of the children, in KiB)
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def preview(slide: Path, out: Path) -> dict:
    """Peak RSS (MB) and wall seconds of `pathme preview` on ``slide`` alone, in a fresh process."""
    manifest = out / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(f"slide_id,path\n{slide.stem},{slide}\n")
    pathme = Path(sys.executable).with_name("pathme")
    preview = [str(pathme), "preview", "--manifest", str(manifest), "--output-dir", str(out)]
    command = [sys.executable, "-c", PEAK, *preview]
    start = time.perf_counter()
    peak_kib = int(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])
    return {"peak_rss_MB": round(peak_kib / 1024), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench_scale"))
    parser.add_argument("--smallest", action="store_true", help="a 4,096 x 3,072 slide, quickly")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = SIDES["smallest" if args.smallest else "full"]
    sample = fetch_sample_slide(args.cache)
    rows = []
    for name, downsamples in PYRAMIDS.items():
        label = f"{'level0' if downsamples == (1,) else 'pyramid'}_{width}x{height}"
        slide = build_slide(args.cache / f"thumbnail_{label}.svs", width, height, MPP, sample, downsamples)
        rows.append({"slide": f"{width} x {height}", "levels": name, "file_MB": round(slide.stat().st_size / 1e6)})
        rows[-1] |= preview(slide, args.cache / f"preview_{label}")
    print(f"{'slide':<14}{'levels':<14}{'file MB':>8}{'peak RSS MB':>13}{'s':>7}")
    for row in rows:
        print(f"{row['slide']:<14}{row['levels']:<14}{row['file_MB']:>8}{row['peak_rss_MB']:>13}{row['seconds']:>7}")
    if args.json:
        machine = {"machine": platform.machine(), "python": platform.python_version()}
        write_atomic(args.json, json.dumps({"rows": rows, **machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
