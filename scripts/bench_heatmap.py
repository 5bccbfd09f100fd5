"""Benchmark: seconds to draw one slide's attention heatmap (PNG figure, GeoJSON, NIfTI) and its top tiles, at the
default resolution (about 1,600 px on the long side) and at the demo's 8 µm/px, on a demo slide (9,000 px at
0.5 µm/px, real H&E pixels) with 5x-tile attention. Each is drawn ``--repeats`` times after one warm-up; the median
is reported with the ratio of the two. Usage: ``python scripts/bench_heatmap.py [--repeats 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pathme.demo.cohort_generator import make_demo_cohort
from pathme.demo.sample_data import fetch_sample_slide
from pathme.viz.heatmap import AttentionMap, ColourScale, default_heatmap_mpp, write_slide_heatmap, write_top_tiles
from pathme.wsi.slide import Slide

TILE = 1024  # a 5x tile at 0.5 µm/px: PatHME tokens' cell


def draw(slide: Slide, folder: Path, mpp: float | None, repeats: int) -> float:
    """Median seconds of one heatmap and its top tiles at ``mpp`` (None: the default)."""
    coords = np.array([[x, y] for y in range(0, slide.size[1], TILE) for x in range(0, slide.size[0], TILE)])
    sizes = np.full(len(coords), float(TILE))
    scores = np.random.default_rng(0).random(len(coords))
    attention = AttentionMap.paint(coords, sizes, scores, slide.size, slide.mpp)
    scale = ColourScale.of_run([attention])
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        write_slide_heatmap(slide, folder, "s", attention, scale, "bench", mpp)
        write_top_tiles(slide, folder, "s", coords, sizes, scores)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cohort = make_demo_cohort(Path(folder) / "cohort", fetch_sample_slide(Path(".cache")), n_slides=2, seed=0)
        slide = Slide.open(next((cohort.parent / "slides").glob("*.svs")))
        default = draw(slide, Path(folder), None, args.repeats)
        demo = draw(slide, Path(folder), 8.0, args.repeats)
    long_side = round(max(slide.size) * slide.mpp / default_heatmap_mpp(slide.size, slide.mpp))
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "slide_px": list(slide.size),
        "default_long_side_px": long_side,
        "default_s": round(default, 3),
        "at_8_um_per_px_s": round(demo, 3),
        "ratio": round(default / demo, 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
