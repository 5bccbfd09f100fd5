"""Benchmark: is reading hidden behind the encoders, and what does one decode for all experts and scales save?

On a 2 x 2-region slide of real H&E pixels (see ``bench_reading.mosaic_slide``), with the same experts:

Throughput is counted in tiles (each one through every expert), the same way for all three:

* (a) ``encoder_only``: tiles/s of the experts on tiles decoded beforehand (the ceiling);
* (b) ``end_to_end``: tiles/s of the extraction (tissue, one read per region by a reader process, every
  expert, store written), model building excluded;
* (c) ``per_scale_per_expert``: the way tile-by-tile tools work: for each expert and each scale, read every
  tile of that scale on its own and encode it.

Prints (b)/(a), (b)/(c) and the peak resident memory, and writes JSON.
Usage: ``python scripts/bench_extraction.py --experts tiny-vit tiny-cnn [--batch-size 64] [--num-workers 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_reading import mosaic_slide

from pathme.device import pick_device
from pathme.encoders import build_expert
from pathme.engines.extraction import CohortExtractor
from pathme.engines.region_encoding import encode_batch
from pathme.engines.region_loader import tile_validity
from pathme.store.atomic import write_atomic
from pathme.wsi.grid import L0_SIDE, L1_SIDE, TILE_PX
from pathme.wsi.reading import read_at_mpp
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import read_region_tiles


def encode_all(experts: dict, tiles: torch.Tensor, batch_size: int, device: torch.device) -> None:
    for start in range(0, len(tiles), batch_size):
        encode_batch(experts, tiles[start : start + batch_size], device)


def predecoded_tiles(slide: Slide, plan) -> torch.Tensor:
    """The valid tiles of every region at every scale, as the extraction would feed them."""
    stacks = []
    for region in plan.regions:
        tiles = read_region_tiles(slide, region)
        stacked = np.concatenate([tiles.l0, tiles.l1, tiles.l2[None]])
        stacks.append(stacked[tile_validity(region)])
    return torch.from_numpy(np.concatenate(stacks))


SCALES = (
    (L0_SIDE, 0.5, lambda region: region.valid_l0),
    (L1_SIDE, 2.0, lambda region: region.valid_l1),
    (1, 8.0, lambda region: np.ones(1, dtype=bool)),
)


def per_scale_per_expert(slide: Slide, plan, experts: dict, batch_size: int, device: torch.device) -> None:
    """Each expert reads each scale's tiles itself, tile by tile, and encodes them."""
    for name, expert in experts.items():
        for side, mpp, validity in SCALES:
            batch = []
            for region in plan.regions:
                boxes = plan.grid.tile_boxes((region.x, region.y), side)[validity(region)]
                batch += [read_at_mpp(slide, x, y, TILE_PX, TILE_PX, mpp) for x, y, _, _ in boxes]
            tiles = torch.from_numpy(np.stack(batch))
            encode_all({name: expert}, tiles, batch_size, device)


def peak_rss_gib() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"process": round(own, 2), "largest_child": round(children, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", nargs="+", default=["tiny-vit", "tiny-cnn"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    device = pick_device()
    weights = {name: "random" for name in args.experts}
    with tempfile.TemporaryDirectory() as folder:
        path = mosaic_slide(Path(folder), (1, 4, 16))
        slide = Slide.open(path)
        plan = plan_regions(slide)
        experts = {name: build_expert(name, weights[name], device=device) for name in args.experts}

        tiles = predecoded_tiles(slide, plan)
        encode_all(experts, tiles[: args.batch_size], args.batch_size, device)  # warm-up
        start = time.perf_counter()
        encode_all(experts, tiles, args.batch_size, device)
        encoder_only = len(tiles) / (time.perf_counter() - start)
        del tiles

        manifest = Path(folder) / "manifest.csv"
        manifest.write_text(f"slide_id,path\nmosaic,{path}\n")
        start = time.perf_counter()
        for name in args.experts:
            build_expert(name, weights[name], device=device)
        build_seconds = time.perf_counter() - start
        extractor = CohortExtractor(
            manifest,
            Path(folder) / "out",
            args.experts,
            weights,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
        )
        start = time.perf_counter()
        summary = extractor.run()
        seconds = time.perf_counter() - start - build_seconds
        encoded = int(summary.loc[0, "tiles"])
        end_to_end = encoded / seconds

        start = time.perf_counter()
        per_scale_per_expert(slide, plan, experts, args.batch_size, device)
        baseline = encoded / (time.perf_counter() - start)
    results = {
        "experts": args.experts,
        "device": str(device),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "regions": len(plan.regions),
        "tiles_per_expert": encoded,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "tiles_per_second": {
            "encoder_only": round(encoder_only, 1),
            "end_to_end": round(end_to_end, 1),
            "per_scale_per_expert": round(baseline, 1),
        },
        "end_to_end_over_encoder_only": round(end_to_end / encoder_only, 3),
        "end_to_end_over_per_scale_per_expert": round(end_to_end / baseline, 3),
        "peak_rss_gib": peak_rss_gib(),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
