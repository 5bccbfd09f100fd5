"""Benchmark: one read per region against reading each scale, or each tile, separately.

Builds slides of real H&E pixels (the CMU sample, mirrored into a 2 x 2-region mosaic at 0.5 µm/px, JPEG
tiles), once as a pyramid with downsamples 1/4/16 and once with level 0 only (as many scanners' files lack
the 5x and 1.25x levels), and times three ways of getting a region's 256 L0, 16 L1 and 1 L2 tiles:

* ``one_read``: pathme's way, one 0.5 µm/px read, L1 and L2 by area-downsampling the same pixels;
* ``per_scale``: one read per scale (0.5, 2 and 8 µm/px), each from its own pyramid level;
* ``per_tile``: one read per tile per scale (273 reads per region), as tile-by-tile pipelines do.

Prints a table (ratios against ``one_read``, measured in the same run) and writes JSON.
Usage: ``python scripts/bench_reading.py [--repeats 3] [--backend cucim] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pathme.demo.sample_data import fetch_sample_slide
from pathme.store.atomic import write_atomic
from pathme.synthetic.slides import write_pyramid
from pathme.wsi.grid import L0_SIDE, L1_SIDE, REGION_PX, TILE_PX, RegionGrid
from pathme.wsi.reading import read_at_mpp
from pathme.wsi.regions import Region, SlidePlan, plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import read_region_tiles

CACHE = Path(__file__).resolve().parents[1] / ".cache"


def mosaic_slide(folder: Path, downsamples: tuple[int, ...]) -> Path:
    """A 2 x 2-region slide (8192 x 8192 px at 0.5 µm/px) of mirrored CMU pixels."""
    source = Slide.open(fetch_sample_slide(CACHE))
    pixels = source.read_level(0, 0, 0, *source.size)
    row = np.concatenate([pixels, pixels[:, ::-1]] * 2, axis=1)
    image = np.concatenate([row, row[::-1]] * 2, axis=0)[: 2 * REGION_PX, : 2 * REGION_PX]
    path = folder / f"mosaic_{len(downsamples)}_levels.svs"
    write_pyramid(path, np.ascontiguousarray(image), 0.5, "svs", downsamples, magnification=20, compression="jpeg")
    return path


def one_read(slide: Slide, region: Region, grid: RegionGrid) -> None:
    read_region_tiles(slide, region)


def per_scale(slide: Slide, region: Region, grid: RegionGrid) -> None:
    read_at_mpp(slide, region.x, region.y, REGION_PX, REGION_PX, 0.5)
    read_at_mpp(slide, region.x, region.y, REGION_PX // 4, REGION_PX // 4, 2.0)
    read_at_mpp(slide, region.x, region.y, TILE_PX, TILE_PX, 8.0)


def per_tile(slide: Slide, region: Region, grid: RegionGrid) -> None:
    for side, mpp in ((L0_SIDE, 0.5), (L1_SIDE, 2.0), (1, 8.0)):
        for x, y, _, _ in grid.tile_boxes((region.x, region.y), side):
            read_at_mpp(slide, x, y, TILE_PX, TILE_PX, mpp)


WAYS: dict[str, Callable[[Slide, Region, RegionGrid], None]] = {
    "one_read": one_read,
    "per_scale": per_scale,
    "per_tile": per_tile,
}


def best_of(repeats: int, way: Callable[[Slide, Region, RegionGrid], None], slide: Slide, plan: SlidePlan) -> float:
    """Fastest of ``repeats`` passes over all regions of the slide."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for region in plan.regions:
            way(slide, region, plan.grid)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="cucim", choices=["cucim", "openslide"])
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    results: dict = {
        "backend": args.backend,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "pyramids": {},
    }
    print(f"{'pyramid':<10} {'way':<10} {'s (best)':>9} {'regions/s':>10} {'x one_read':>11}")
    with tempfile.TemporaryDirectory() as folder:
        for downsamples in ((1, 4, 16), (1,)):
            slide = Slide.open(mosaic_slide(Path(folder), downsamples), args.backend)
            plan = plan_regions(slide)
            regions = plan.regions
            seconds = {name: best_of(args.repeats, way, slide, plan) for name, way in WAYS.items()}
            name = "/".join(map(str, downsamples))
            results["pyramids"][name] = {
                "regions": len(regions),
                "seconds": seconds,
                "time_ratio_vs_one_read": {way: value / seconds["one_read"] for way, value in seconds.items()},
            }
            for way, value in seconds.items():
                ratio = value / seconds["one_read"]
                print(f"{name:<10} {way:<10} {value:>9.3f} {len(regions) / value:>10.2f} {ratio:>11.2f}")
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
