"""Benchmark: reading a DICOM WSI series with wsidicom against OpenSlide 4, and the SVS it came from.

Makes the 2 x 2-region mosaic of scripts/bench_reading.py (real H&E pixels, 8192 x 8192 px at 0.5 µm/px, JPEG
tiles, level 0 only) and converts it into a DICOM WSI series with wsidicomizer, which copies level 0's JPEG tiles
(so every reader decodes the same compressed tiles), then times, best of ``--repeats``:

* ``region``: one 4096² px region box of level 0 through the reader class (:mod:`pathme.wsi.readers`);
* ``tiles``: pathme's whole region read (``read_region_tiles``: 256 20x, 16 5x and one 1.25x tile) through
  :class:`~pathme.wsi.slide.Slide` (wsidicom on the series; cuCIM and OpenSlide on the SVS).

It also converts the CMU sample with the 2x-4x-... levels wsidicomizer encodes itself and gives each DICOM
reader's mean error on level 2 against the area average of level 0 (a decoder with the colour space wrong is off by
tens of grey levels). Needs wsidicomizer (the dev extra) and libturbojpeg.
Usage: ``python scripts/bench_dicom.py [--repeats 3] [--json out.json]``
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
from bench_reading import CACHE, mosaic_slide

from pathme.demo.sample_data import fetch_sample_slide
from pathme.store.atomic import write_atomic
from pathme.synthetic.dicomize import to_dicom
from pathme.wsi.grid import REGION_PX
from pathme.wsi.readers import READERS
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import read_region_tiles


def best_of(repeats: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def level2_error(reader, level0) -> float | str:
    """Mean absolute error of level 2 against the 4 x 4 area average of level 0, or the reader's error."""
    height, width = level0.shape[0] // 4, level0.shape[1] // 4
    average = level0[: 4 * height, : 4 * width].reshape(height, 4, width, 4, 3).mean(axis=(1, 3))
    try:
        read = reader.read(2, 0, 0, width, height)[..., :3].astype(float)
    except Exception as error:  # what the reader says is the figure
        return f"{type(error).__name__}: {error}"
    return float(np.abs(read - average).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        svs = mosaic_slide(folder, (1,))
        series = to_dicom(svs, folder / "series", levels=False)
        instance = sorted(series.glob("*.dcm"))[0]
        box = (0, 0, REGION_PX, REGION_PX)
        rows = []
        for label, reader_name, path in (
            ("SVS, cuCIM", "cucim", svs),
            ("SVS, OpenSlide", "openslide", svs),
            ("DICOM, wsidicom", "wsidicom", series),
            ("DICOM, OpenSlide 4", "openslide", instance),
        ):
            reader = READERS[reader_name].open(path)
            region = best_of(args.repeats, lambda reader=reader: reader.read(0, *box))
            tiles = None
            if path != instance:  # pathme reads a series with wsidicom only
                slide = Slide.open(path, backend=reader_name)
                plan = plan_regions(slide)
                tiles = best_of(
                    args.repeats,
                    lambda slide=slide, plan=plan: [read_region_tiles(slide, r) for r in plan.regions],
                ) / len(plan.regions)
            rows.append({"slide": label, "region_s": region, "tiles_s_per_region": tiles})
        pyramid = to_dicom(fetch_sample_slide(CACHE), folder / "pyramid", levels=True)
        wsidicom = READERS["wsidicom"].open(pyramid)
        level0 = wsidicom.read(0, 0, 0, *wsidicom.level_sizes[0])
        errors = {
            "wsidicom": level2_error(wsidicom, level0),
            "openslide": level2_error(READERS["openslide"].open(sorted(pyramid.glob("*.dcm"))[0]), level0),
        }
    base = rows[2]["region_s"]
    print(f"{'slide, reader':<20} {'4096² region s':>15} {'x wsidicom':>11} {'region tiles s':>15}")
    for row in rows:
        tiles = f"{row['tiles_s_per_region']:.3f}" if row["tiles_s_per_region"] is not None else "-"
        print(f"{row['slide']:<20} {row['region_s']:>15.3f} {row['region_s'] / base:>11.2f} {tiles:>15}")
    print("mean error of level 2 against the area average of level 0 (grey levels):", errors)
    if args.json:
        record = {"rows": rows, "level2_error": errors, "repeats": args.repeats}
        record["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
        write_atomic(args.json, json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
