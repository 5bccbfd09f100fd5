"""Benchmark: a region's read against the bare decode of its pixels, before and after issue 29, per backend.

Builds three slides of real H&E pixels (the CMU sample mirrored into an 8,400² px mosaic, JPEG tiles, levels 1/4/16):
a 20x scan (0.5 µm/px), a 40x scan at exactly 0.25 µm/px and an Aperio-like 40x scan at 0.252 µm/px (read at 20x
through the 2-block reduce of :mod:`pathme.wsi.resize`). For the first region of each, with each backend, on one
thread, it times (best of ``--repeats``):

* ``decode``: the library's own decode of the region's box of level 0 (cuCIM ``read_region``, OpenSlide
  ``read_region``), untouched: the floor any read pays;
* ``before``: the read as pathme did it before issue 29 (kept below as :func:`read_before`: MONAI ``get_data`` with
  its channel copy, PIL's box resize, the white canvas, the 5x and 1.25x PIL reduces, the tile cut and the stack);
* ``now``: :func:`pathme.wsi.tiles.read_region_tiles`, the same [273, 256, 256, 3] stack the encoders take;
* ``now, N threads`` (cuCIM only): the same with the decoder and OpenCV on ``N`` threads (``--threads``, default
  the CPUs); every other row runs OpenCV on one thread, as a reader process given one CPU does.

Prints a table with each read over the decode and writes JSON.
Usage: ``python scripts/bench_read_speed.py [--repeats 3] [--backends cucim openslide] [--json out.json]``
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

import cv2
import numpy as np
from PIL import Image

from pathme.demo.sample_data import fetch_sample_slide
from pathme.store.atomic import write_atomic
from pathme.synthetic.slides import write_pyramid
from pathme.wsi.grid import CHILDREN_SIDE, L0_MPP, L0_SIDE, L1_SIDE, REGION_PX
from pathme.wsi.reading import level_read
from pathme.wsi.regions import Region, plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import cut_tiles, read_region_tiles

CACHE = Path(__file__).resolve().parents[1] / ".cache"
SIDE = 8400  # px: one whole region at 40x (8,192 or 8,127 px) and four at 20x
SLIDES = {"20x, 0.5 µm/px": 0.5, "40x, 0.25 µm/px": 0.25, "40x, 0.252 µm/px": 0.252}


def build(folder: Path, mpp: float) -> Path:
    """An 8,400² px Aperio-style JPEG pyramid (1/4/16) of mirrored CMU pixels at ``mpp``."""
    source = Slide.open(fetch_sample_slide(CACHE))
    pixels = source.read_level(0, 0, 0, *source.size)
    row = np.concatenate([pixels, pixels[:, ::-1]] * 2, axis=1)
    image = np.ascontiguousarray(np.concatenate([row, row[::-1]] * 2, axis=0)[:SIDE, :SIDE])
    path = folder / f"mosaic_{mpp}.svs"
    write_pyramid(path, image, mpp, "svs", (1, 4, 16), magnification=round(10 / mpp), compression="jpeg")
    return path


def level0_box(slide: Slide, region: Region) -> tuple[int, int, int, int]:
    """The box of level 0 a region read decodes: (x, y, width, height) in level-0 pixels."""
    extent = int(np.ceil(REGION_PX * L0_MPP / slide.mpp - 1e-9))
    return region.x, region.y, min(extent, slide.size[0] - region.x), min(extent, slide.size[1] - region.y)


def bare_decode(slide: Slide, region: Region) -> None:
    """The library's decode of the box, through the handle MONAI opened (no pathme code in between)."""
    x, y, width, height = level0_box(slide, region)
    handle = slide._reader._handle  # the library itself, as pathme's reader holds it
    if slide.backend == "cucim":
        np.asarray(handle.read_region(location=(x, y), size=(width, height), level=0, num_workers=1))
    else:
        np.asarray(handle.read_region((x, y), 0, (width, height)))


def read_before(slide: Slide, region: Region) -> np.ndarray:
    """The region read of pathme before issue 29 (commit 2d37200), for comparison: MONAI's ``get_data`` (RGB by
    ``np.take``), ``np.ascontiguousarray``, a white canvas, PIL's ``BOX`` resize over the fractional box, PIL's
    ``reduce`` for 5x and 1.25x, the tile cut and the stack of 273 tiles."""
    level = level_read(slide, L0_MPP).level
    assert level == 0, "the slides here are read at 20x from level 0"
    step = L0_MPP / slide.mpp
    inside = min(REGION_PX, int((slide.size[0] - region.x) / step + 1e-6))
    x, y, width, height = level0_box(slide, region)
    reader = slide._reader  # the old path went through MONAI's get_data
    patch, _ = reader._reader.get_data(reader._handle, location=(y, x), size=(height, width), level=0)
    patch = np.ascontiguousarray(np.asarray(patch, dtype=np.uint8)[..., :3])
    out = np.full((REGION_PX, REGION_PX, 3), 255, dtype=np.uint8)
    box = (0, 0, inside * step, inside * step)
    if box == (0, 0, inside, inside):
        out[:inside, :inside] = patch[:inside, :inside]
    else:
        out[:inside, :inside] = np.asarray(
            Image.fromarray(patch).resize((inside, inside), Image.Resampling.BOX, box=box)
        )
    l0 = cut_tiles(out, L0_SIDE)
    l1_image = np.asarray(Image.fromarray(out).reduce(CHILDREN_SIDE))
    l1 = cut_tiles(l1_image, L1_SIDE)
    l2 = np.asarray(Image.fromarray(l1_image).reduce(4))
    return np.concatenate([l0, l1, l2[None]])


def read_now(slide: Slide, region: Region) -> np.ndarray:
    return read_region_tiles(slide, region).stack


def best_of(repeats: int, way: Callable[[Slide, Region], object], slide: Slide, region: Region) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        way(slide, region)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["cucim", "openslide"], choices=["cucim", "openslide"])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    results: dict = {
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "slides": {},
    }
    print(f"{'slide':<18} {'backend':<10} {'way':<16} {'s/region':>9} {'x decode':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for name, mpp in SLIDES.items():
            path = build(Path(folder), mpp)
            for backend in args.backends:
                slide = Slide.open(path, backend)
                region = plan_regions(slide).regions[0]
                ways: dict[str, Callable[[Slide, Region], object]] = {
                    "decode": bare_decode,
                    "before": read_before,
                    "now": read_now,
                }
                cv2.setNumThreads(1)  # one core, as in a reader process given one thread
                seconds = {way: best_of(args.repeats, fn, slide, region) for way, fn in ways.items()}
                if backend == "cucim" and args.threads > 1:
                    cv2.setNumThreads(args.threads)
                    threaded = Slide.open(path, backend, decode_threads=args.threads)
                    seconds[f"now, {args.threads} threads"] = best_of(args.repeats, read_now, threaded, region)
                entry = {way: {"s": s, "x_decode": s / seconds["decode"]} for way, s in seconds.items()}
                entry["before_over_now"] = seconds["before"] / seconds["now"]
                results["slides"].setdefault(name, {})[backend] = entry
                for way, value in seconds.items():
                    print(f"{name:<18} {backend:<10} {way:<16} {value:>9.3f} {value / seconds['decode']:>9.2f}")
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
