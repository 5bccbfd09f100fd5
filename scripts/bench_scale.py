"""Benchmark: extraction on TCGA-size slides, store sizes at the paper's dimensions, and a TCGA-BRCA projection.

Builds, from the sample slide's real pixels (its tissue tiles resampled to the slide's µm/px, mirrored to tile
the plane), Aperio-style JPEG pyramids (downsamples 1/4/16/32) with tissue in several blobs covering about a
third of the slide; every level is rendered from the same texture and mask box-downsampled, so the low levels
agree with level 0.
Slides are cached under ``--cache`` (built once, in minutes): by default a 40x one (0.25 µm/px, 64,000 x 48,000
px), a 20x one of half its size (0.5 µm/px, 32,000 x 24,000 px) and a 16,000² 40x one for the memory comparison.

Per slide, each in a fresh process: regions, valid tiles per scale, read+decode s/region (the extraction
loader alone), extraction s/slide and tiles/s with the tiny experts, peak RSS of the main process and of the
reader workers, store MB with the tiny experts, and store MB per region with the paper's experts (UNI 1024-d +
Prov-GigaPath 1536-d, random values written through the real writer with the slide's validity). Then projects
a TCGA-BRCA run. ``--smallest`` builds one 4,096 x 3,072 slide and runs every step on it (the test suite's mode).
Usage: ``python scripts/bench_scale.py [--cache .cache/bench_scale] [--json out.json] [--smallest]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pathme.demo.cohort_generator import MPP as COHORT_MPP
from pathme.demo.cohort_generator import harvest_tiles
from pathme.demo.sample_data import fetch_sample_slide
from pathme.store.atomic import write_atomic
from pathme.synthetic.slides import downsample_area, write_tiled_pyramid
from pathme.wsi.grid import TILE_PX

DOWNSAMPLES = (1, 4, 16, 32)
MASK_CELL = 64  # level-0 px per cell of the tissue mask: every level's pixel is a whole number of cells' share
GLASS = np.array([238, 236, 240], np.uint8)
PAPER_EXPERTS = {"gigapath": 1536, "uni": 1024}
SLIDES = {  # name: (width, height, µm/px)
    "tcga40x_64000x48000": (64000, 48000, 0.25),
    "tcga20x_32000x24000": (32000, 24000, 0.5),
    "tcga40x_16000x16000": (16000, 16000, 0.25),
}
SMALLEST = {"smallest_4096x3072": (4096, 3072, 0.25)}
TCGA_BRCA = {"slides": 1100, "regions_per_slide": 150}  # the sizing: ~1,100 slides of ~100-200 regions


def tissue_mask(width: int, height: int, rng: np.random.Generator, share: float = 1 / 3) -> np.ndarray:
    """[ceil(h / 64), ceil(w / 64)] bool: elliptical blobs added until they cover ``share`` of the slide."""
    rows, cols = -(-height // MASK_CELL), -(-width // MASK_CELL)
    mask = np.zeros((rows, cols), bool)
    yy, xx = np.mgrid[:rows, :cols]
    while mask.mean() < share:
        cy, cx = rng.uniform(0.15, 0.85) * rows, rng.uniform(0.15, 0.85) * cols
        ry, rx = rng.uniform(0.08, 0.2) * rows, rng.uniform(0.08, 0.2) * cols
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def texture(sample: Path, mpp: float, side: int = 2048) -> np.ndarray:
    """The sample slide's tissue at ``mpp``: its tissue tiles (the demo cohort's harvest, 0.5 µm/px) in a mosaic
    resampled to ``side`` px square, mirrored into a seamless period of twice that. Glass stays out, so a blob of
    the mask is tissue throughout, as on a real slide."""
    tiles = harvest_tiles(sample)
    per_side = -(-round(side * mpp / COHORT_MPP) // TILE_PX)
    picked = tiles[np.arange(per_side * per_side) % len(tiles)].reshape(per_side, per_side, TILE_PX, TILE_PX, 3)
    mosaic = picked.transpose(0, 2, 1, 3, 4).reshape(per_side * TILE_PX, per_side * TILE_PX, 3)
    scale = COHORT_MPP / mpp
    resample = Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX  # box upsampling is blocky
    size = round(mosaic.shape[0] * scale)
    tile = np.asarray(Image.fromarray(mosaic).resize((size, size), resample))[:side, :side]
    tile = np.concatenate([tile, tile[::-1]], axis=0)
    return np.ascontiguousarray(np.concatenate([tile, tile[:, ::-1]], axis=1))


def is_built(path: Path) -> bool:
    """Whether :func:`build_slide` completed the slide at ``path`` (its marker is written last)."""
    return path.with_suffix(".done").is_file()


def build_slide(
    path: Path, width: int, height: int, mpp: float, sample: Path, downsamples: tuple[int, ...] = DOWNSAMPLES
) -> Path:
    """The slide at ``path`` (kept when already complete), see the module docstring; ``downsamples`` of its levels."""
    if is_built(path):
        return path
    rng = np.random.default_rng(width + height)
    mask = tissue_mask(width, height, rng)
    base = texture(sample, mpp)
    period = {d: downsample_area(base, (base.shape[1] // d, base.shape[0] // d)) for d in downsamples}

    def render(level: int, x: int, y: int, box_width: int, box_height: int) -> np.ndarray:
        d = downsamples[level]
        tissue = period[d]
        rows, cols = np.arange(y, y + box_height), np.arange(x, x + box_width)
        pixels = tissue[np.ix_(rows % tissue.shape[0], cols % tissue.shape[1])]
        inside = mask[np.ix_(rows * d // MASK_CELL, cols * d // MASK_CELL)]
        return np.where(inside[..., None], pixels, GLASS)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiled_pyramid(path, (width, height), render, mpp, "svs", downsamples, 0.25 * 40 / mpp, "jpeg")
    path.with_suffix(".done").write_text(json.dumps({"tissue_share": float(mask.mean())}))
    return path


def peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of the largest child it has waited for (the reader workers), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_main_MB": round(own), "peak_rss_workers_MB": round(children)}


def measure_reading(slide_path: Path, num_workers: int) -> dict:
    """Read+decode of every planned region through the extraction loader (no encoder): s/region, RSS."""
    from pathme.engines.region_loader import RegionDataset, SlideSource, region_loader
    from pathme.wsi.regions import plan_regions

    slide = SlideSource(slide_path, slide_path.stem, "auto", None).open()
    plan = plan_regions(slide)
    source = SlideSource(slide_path, slide_path.stem, slide.backend, None)
    start = time.perf_counter()
    count = sum(1 for _ in region_loader(RegionDataset(source, plan.regions), num_workers, pin_memory=False))
    seconds = time.perf_counter() - start
    return {"regions": count, "read_s_per_region": round(seconds / max(1, count), 3), **peak_rss_mb()}


def measure_extraction(slide_path: Path, out: Path, num_workers: int) -> dict:
    """``pathme extract`` of the slide with the tiny experts: s/slide, tiles/s, RSS, valid tiles, store MB."""
    from pathme.engines.extraction import CohortExtractor
    from pathme.store import read_store_summary

    manifest = out / "manifest.csv"
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(f"slide_id,path\n{slide_path.stem},{slide_path}\n")
    extractor = CohortExtractor(manifest, out / "features", ["tiny-vit", "tiny-cnn"], num_workers=num_workers)
    start = time.perf_counter()
    summary = extractor.run()
    seconds = time.perf_counter() - start
    if summary.loc[0, "status"] != "done":
        raise RuntimeError(f"extraction of {slide_path} failed: {summary.loc[0, 'error']}")
    store = out / "features" / f"{slide_path.stem}.h5"
    found = read_store_summary(store)
    tiles = int(summary.loc[0, "tiles"])
    return {
        "extract_s": round(seconds, 1),
        "tiles_encoded_per_expert": tiles,
        "tiles_per_s": round(tiles / seconds, 1),
        "valid_l0_tiles": found["valid_l0_tiles"],
        "valid_l1_tiles": found["valid_l1_tiles"],
        "store_MB_tiny": round(store.stat().st_size / 1e6, 2),
        **peak_rss_mb(),
    }


def paper_store(store: Path, out: Path) -> dict:
    """A store with the validity of ``store`` and random features of the paper's experts, through the writer,
    and its token store (768-d tokens, the paper preset's): MB per region of each."""
    import h5py

    from pathme.engines.embed import token_coords
    from pathme.store import RegionStoreWriter, read_store_attrs
    from pathme.store.tokens import TokenProvenance, write_token_store
    from pathme.synthetic.stores import store_attrs

    attrs = read_store_attrs(store)
    with h5py.File(store, "r") as file:
        coords, valid_l0, valid_l1 = file["coords"][()], file["valid/L0"][()], file["valid/L1"][()]
    rng = np.random.default_rng(0)
    target = out / "paper_experts.h5"
    fake = store_attrs("paper", "paper", PAPER_EXPERTS, tuple(attrs["slide_size"])) | {"mpp": attrs["mpp"]}
    with RegionStoreWriter(target, attrs=fake, n_regions=len(coords), experts=PAPER_EXPERTS) as writer:
        for index in range(len(coords)):
            features = {
                name: [0.5 * rng.standard_normal(shape).astype(np.float32) for shape in ((256, dim), (16, dim), dim)]
                for name, dim in PAPER_EXPERTS.items()
            }
            position = (int(coords[index][0]), int(coords[index][1]))
            writer.write_region(
                index, coords=position, valid_l0=valid_l0[index], valid_l1=valid_l1[index], features=features
            )
        writer.commit()
    tokens_path = out / "tokens" / "paper_experts.h5"
    tokens_path.parent.mkdir(exist_ok=True)
    tokens = rng.standard_normal((len(coords), 26, 768)).astype(np.float32)
    made_by = TokenProvenance("random tokens (benchmark)", "none")
    write_token_store(target, tokens_path, tokens, token_coords(coords, attrs["region_extent"], 10), made_by)
    regions = max(1, len(coords))
    return {
        "store_MB_per_region_paper": round(target.stat().st_size / 1e6 / regions, 3),
        "token_store_MB_per_region_paper": round(tokens_path.stat().st_size / 1e6 / regions, 4),
        "bytes_per_valid_20x_tile_paper": round(target.stat().st_size / max(1, int(valid_l0.sum()))),
    }


def child(slide_path: Path, out: Path, num_workers: int) -> dict:
    """Every measurement of one slide: extraction (its RSS figures taken before any other child ran), then
    reading alone in a process of its own."""
    extraction = measure_extraction(slide_path, out, num_workers)
    reading = json.loads(_run_child("read", slide_path, out, num_workers))
    return {
        **{f"read_{k}" if k.startswith("peak") else k: v for k, v in reading.items()},
        **extraction,
        **paper_store(out / "features" / f"{slide_path.stem}.h5", out),
    }


def _run_child(step: str, slide_path: Path, out: Path, num_workers: int) -> str:
    command = [sys.executable, __file__, "--child", step, str(slide_path), str(out), str(num_workers)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def projection(rows: list[dict], gpu_tiles_per_s: float) -> dict:
    """A TCGA-BRCA run from the 40x slide's figures (the largest measured): disk, reading CPU-hours, and GPU-hours
    per expert at ``gpu_tiles_per_s``."""
    row = max(rows, key=lambda r: r["regions"])
    regions = TCGA_BRCA["slides"] * TCGA_BRCA["regions_per_slide"]
    tiles = regions * (row["valid_l0_tiles"] + row["valid_l1_tiles"] + row["regions"]) / max(1, row["regions"])
    return {
        **TCGA_BRCA,
        "from_slide": row["slide"],
        "region_stores_GB": round(regions * row["store_MB_per_region_paper"] / 1e3, 1),
        "token_stores_GB": round(regions * row["token_store_MB_per_region_paper"] / 1e3, 1),
        "reading_cpu_hours": round(regions * row["read_s_per_region"] / 3600, 1),
        "tiles_per_expert": round(tiles),
        "gpu_tiles_per_s_assumed": gpu_tiles_per_s,
        "gpu_hours_per_expert": round(tiles / gpu_tiles_per_s / 3600, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench_scale"))
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--smallest", action="store_true", help="one 4,096 x 3,072 slide: every step, quickly")
    parser.add_argument(
        "--gpu-tiles-per-s",
        type=float,
        default=2000.0,
        help="GPU rate of one expert for the projection (default: "
        "the issue's goal for UNI on an H100/H200, until scripts/gpu_bench.sh has measured it)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, slide_path, out, workers = args.child
        measure = measure_reading if step == "read" else None
        result = (
            measure(Path(slide_path), int(workers)) if measure else child(Path(slide_path), Path(out), int(workers))
        )
        print(json.dumps(result))
        return
    sample = fetch_sample_slide(Path(__file__).resolve().parents[1] / ".cache")  # where the tests keep it
    rows = []
    for name, (width, height, mpp) in (SMALLEST if args.smallest else SLIDES).items():
        start = time.perf_counter()
        path = build_slide(args.cache / f"{name}.svs", width, height, mpp, sample)
        built = time.perf_counter() - start
        out = args.cache / "runs" / name
        result = json.loads(_run_child("all", path, out, args.num_workers))
        share = json.loads(path.with_suffix(".done").read_text())["tissue_share"]
        row = {"slide": name, "size": f"{width} x {height}", "mpp": mpp, "tissue_share": round(share, 3)}
        rows.append(row | {"build_s": round(built, 1), "slide_MB": round(path.stat().st_size / 1e6), **result})
        print(json.dumps(rows[-1]), flush=True)
    results = {
        "rows": rows,
        "tcga_brca": projection(rows, args.gpu_tiles_per_s),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    print(json.dumps(results["tcga_brca"]))
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
