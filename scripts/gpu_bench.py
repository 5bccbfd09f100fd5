"""GPU benchmark: the paper's experts and distillation preset on one CUDA device, in one go (``scripts/gpu_bench.sh``
sets a bare machine up and runs this).

Stages, in this order; the JSON is rewritten after each, so a run cut short keeps what it measured:

1. ``machine``: GPU name and memory, driver, CUDA, cuDNN, torch, timm, MONAI and cuCIM versions.
2. ``slide``: the TCGA-size slide of ``bench_scale.py`` (40x Aperio-style JPEG pyramid, 64,000 x 48,000 px, the
   sample's tissue), built by a background process while the GPU stages below run.
3. ``encoder_only``: UNI (ViT-L/16) and Prov-GigaPath (ViT-g/14), random weights, bf16 autocast, channels-last,
   tiles already on the device: the experts' own tiles/s (uint8 256 px tiles resized and normalised as in the
   extraction) at each batch size of ``--batch-sizes``, the best one, and the peak GPU memory.
4. ``distillation``: the ``paper`` preset through the real Ignite trainer of ``bench_distillation.py`` (bf16):
   regions/s and GPU memory at each batch of ``--distill-batches`` until one does not fit.
5. ``end_to_end``: ``CohortExtractor`` (tissue, reader workers, one decode for every expert and scale, stores
   written) on copies of the slide at the best batch size: UNI alone at each worker count of ``--workers``, then
   at the best count UNI + Prov-GigaPath on one decode and Prov-GigaPath alone. Rates come from the extraction
   summary's per-slide seconds (model building excluded) of every copy but the first (the warm-up).
6. ``gpu_decode``: cuCIM's ``read_region(..., device="cuda")`` of the slide's regions: regions/s against the CPU
   read of the same regions, or the exact error; last, because a CUDA fault would spoil every later stage.

Ratios: UNI end-to-end over encoder-only (goal >= 0.95), the two experts on one decode against two separate
runs (goal >= 1.5x). ``--tiny`` runs every stage in seconds on the CPU (tiny experts, a 4,096 x 3,072 slide):
the test suite's mode.
Usage: ``scripts/gpu_bench.sh [--json gpu_bench.json] [--tiny]``
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from traceback import format_exc

import numpy as np
import torch
from bench_distillation import EXPERTS as DISTILL_EXPERTS
from bench_distillation import bench_preset
from bench_scale import SLIDES, SMALLEST, build_slide, is_built

from pathme.device import pick_device
from pathme.encoders import build_expert
from pathme.engines.extraction import CohortExtractor
from pathme.engines.region_loader import SlideSource
from pathme.store.atomic import write_atomic
from pathme.synthetic.stores import write_store
from pathme.wsi.regions import plan_regions

PAPER = ("uni", "prov-gigapath")
TINY = ("tiny-vit", "tiny-cnn")
TCGA_SLIDE = "tcga40x_64000x48000"


def machine(device: torch.device) -> dict:
    """What ran the benchmark: GPU, driver and library versions."""
    versions = {}
    for distribution in ("torch", "timm", "monai", "pytorch-ignite", "cucim-cu12", "cucim-cu13", "h5py"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[distribution] = importlib.metadata.version(distribution)
    found = {"python": platform.python_version(), "cpus": os.cpu_count(), "versions": versions}
    found["torch_cuda"] = torch.version.cuda
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_GiB": round(properties.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version(),
        }
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        try:
            found["driver"] = subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as error:
            found["driver"] = f"unknown ({error})"
    return found


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def timed(run: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def expert_rate(expert: torch.nn.Module, batch_size: int, batches: int, device: torch.device) -> float:
    """Tiles/s of ``batches`` forward passes of a random uint8 batch already on the device, after a warm-up one."""
    tiles = torch.randint(0, 256, (batch_size, 256, 256, 3), dtype=torch.uint8, device=device)

    def run(count: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            for _ in range(count):
                expert(tiles)

    run(1)
    return round(batches * batch_size / timed(lambda: run(batches), device), 1)


def encoder_only(names: tuple[str, ...], batch_sizes: list[int], batches: int, device: torch.device) -> dict:
    """Each expert's tiles/s and peak GPU memory per batch size; a batch size that does not fit ends the sweep."""
    results = {}
    for name in names:
        expert = build_expert(name, "random", device=device)
        rates: dict[int, float] = {}
        found: dict = {"tiles_per_s": {}, "peak_GiB": {}}
        for batch_size in batch_sizes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                rates[batch_size] = expert_rate(expert, batch_size, batches, device)
            except torch.OutOfMemoryError:
                found["tiles_per_s"][batch_size] = "out of memory"
                break
            found["tiles_per_s"][batch_size] = rates[batch_size]
            found["peak_GiB"][batch_size] = peak_gpu_gib(device)
        best = max(rates, key=rates.__getitem__)
        results[name] = found | {"best_batch_size": best, "best_tiles_per_s": rates[best]}
        del expert
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def distillation(preset: str, batch_sizes: list[int], iterations: int) -> list[dict]:
    """``bench_distillation``'s timed steps of ``preset`` at each batch size, until one does not fit."""
    rows = []
    with tempfile.TemporaryDirectory() as dataset:
        write_store(Path(dataset), "bench_slide", "bench_patient", ["full"] * max(batch_sizes), DISTILL_EXPERTS)
        for batch_size in batch_sizes:
            if torch.cuda.is_available():  # each row's peak its own, not an earlier stage's
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                rows.append(bench_preset(preset, Path(dataset), batch_size, iterations))
            except torch.OutOfMemoryError as error:
                rows.append({"preset": preset, "batch_size": batch_size, "error": f"out of memory: {error}"[:300]})
                break
    return rows


def gpu_decode(slide_path: Path, regions: int) -> dict:
    """cuCIM's GPU decode of the slide's first ``regions`` tissue regions (level 0, whole region) against its CPU
    decode of the same boxes: regions/s of each, or the exact error of the GPU path."""
    from cucim import CuImage

    plan = plan_regions(SlideSource(slide_path, slide_path.stem, "cucim", None).open())
    side, width, height = round(plan.grid.region_extent), plan.grid.width, plan.grid.height
    boxes = [(r.x, r.y, min(side, width - r.x), min(side, height - r.y)) for r in plan.regions[:regions]]
    image = CuImage(str(slide_path))
    found: dict = {"regions": len(boxes), "region_px": side}

    def read(device: str) -> None:
        for x, y, box_width, box_height in boxes:
            pixels = image.read_region((x, y), (box_width, box_height), 0, device=device)
            # the pixels as a tensor where they are used (__cuda_array_interface__ on the GPU), as a reader would
            torch.as_tensor(pixels, device="cuda") if device == "cuda" else torch.from_numpy(np.asarray(pixels))

    seconds = timed(lambda: read("cpu"), torch.device("cpu"))
    found["cpu_regions_per_s"] = round(len(boxes) / seconds, 2)
    try:
        read("cuda")  # warm-up: loads nvJPEG
        seconds = timed(lambda: read("cuda"), torch.device("cuda"))
    except Exception as error:  # what a user trying the GPU path would meet, verbatim
        found["gpu"] = f"{type(error).__name__}: {error}"
    else:
        found |= {"gpu": "works", "gpu_regions_per_s": round(len(boxes) / seconds, 2)}
    return found


def extraction(slide_path: Path, copies: int, names: tuple[str, ...], batch_size: int, workers: int) -> dict:
    """``CohortExtractor`` on ``copies`` manifest rows of the slide, into a fresh folder (stores of an earlier run
    would be skipped as done): tiles/s per expert over every copy but the first, from the summary's per-slide
    seconds (models built before the first slide, not counted)."""
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.csv"
        manifest.write_text("slide_id,path\n" + "".join(f"copy{i},{slide_path}\n" for i in range(copies)))
        weights = dict.fromkeys(names, "random")
        summary = CohortExtractor(
            manifest, Path(folder) / "stores", list(names), weights, batch_size=batch_size, num_workers=workers
        ).run()
    if (summary["status"] != "done").any():
        raise RuntimeError(f"extraction failed: {summary.to_dict('records')}")
    timed_rows = summary.iloc[1:] if copies > 1 else summary
    tiles, seconds = timed_rows["tiles"].astype(int).sum(), timed_rows["seconds"].astype(float).sum()
    return {
        "experts": list(names),
        "workers": workers,
        "batch_size": batch_size,
        "timed_slides": len(timed_rows),
        "tiles_per_slide": int(tiles) // len(timed_rows),
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds, 1),
    }


def end_to_end(slide_path: Path, experts: tuple[str, ...], rates: dict, workers: list[int]) -> dict:
    """The first expert alone at each worker count, then, at the best count, every expert on one decode and the
    second alone; batch sizes are each run's experts' best encoder-only ones (256 where that stage failed)."""

    def batch(*names: str) -> int:
        return min(rates.get(name, {}).get("best_batch_size", 256) for name in names)

    first, second = experts
    runs = [extraction(slide_path, 3, (first,), batch(first), count) for count in workers]
    best = max(runs, key=lambda run: run["tiles_per_s"])
    both = extraction(slide_path, 2, experts, batch(*experts), best["workers"])
    alone = extraction(slide_path, 2, (second,), batch(second), best["workers"])
    separate = 1 / (1 / best["tiles_per_s"] + 1 / alone["tiles_per_s"])  # tiles/s of one run per expert
    found = {"runs": [*runs, both, alone], f"{first}_tiles_per_s": best["tiles_per_s"]}
    if first in rates:
        found[f"{first}_end_to_end_over_encoder_only"] = round(
            best["tiles_per_s"] / rates[first]["best_tiles_per_s"], 3
        )
    return found | {"one_decode_over_separate_runs": round(both["tiles_per_s"] / separate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("gpu_bench.json"))
    parser.add_argument("--tiny", action="store_true", help="every stage in seconds on the CPU (the tests' mode)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--workers", type=int, nargs="+", help="reader workers tried (default: 8 and cores - 1)")
    parser.add_argument("--distill-batches", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--sample-dir", type=Path, default=Path(".cache/gpu_bench"), help="holds the sample slide")
    parser.add_argument("--work-dir", type=Path, help="where the slide is built and kept (default: a temporary folder)")
    args = parser.parse_args()
    if args.tiny:
        args.batch_sizes, args.distill_batches, args.workers = [8, 16], [2], [1]
    cpus = os.cpu_count() or 1
    workers = args.workers or sorted({max(1, min(8, cpus - 1)), max(1, cpus - 1)})
    device = pick_device()
    experts = TINY if args.tiny else PAPER
    ((slide_name, (width, height, mpp)),) = (SMALLEST if args.tiny else {TCGA_SLIDE: SLIDES[TCGA_SLIDE]}).items()
    results: dict = {"command": " ".join(sys.argv), "tiny": args.tiny, "experts": experts, "stages_s": {}}

    def stage(name: str, measure: Callable[[], object], started: float | None = None) -> None:
        """Run one stage and write the JSON at once; a stage that fails records its error and the next ones run."""
        started = time.perf_counter() if started is None else started
        try:
            results[name] = measure()
        except Exception as error:  # a GPU run is scarce: keep every other stage's figures
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": format_exc()[-4000:]}
        results["stages_s"][name] = round(time.perf_counter() - started, 1)
        write_atomic(args.json, json.dumps(results, indent=2, default=str))
        print(
            f"gpu_bench: {name} ({results['stages_s'][name]} s): {json.dumps(results[name], default=str)}", flush=True
        )

    from pathme.demo.sample_data import fetch_sample_slide

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work_dir or Path(temporary)
        slide_path = work / f"{slide_name}.svs"
        stage("machine", lambda: machine(device))
        started = time.perf_counter()
        builder = None
        if not is_built(slide_path):  # CPU work in its own process (a thread would hold the GIL), during GPU stages
            builder = multiprocessing.get_context("spawn").Process(
                target=build_slide, args=(slide_path, width, height, mpp, fetch_sample_slide(args.sample_dir))
            )
            builder.start()
        stage("encoder_only", lambda: encoder_only(experts, args.batch_sizes, 2 if args.tiny else 10, device))
        preset, iterations = ("tiny", 1) if args.tiny else ("paper", 5)
        stage("distillation", lambda: distillation(preset, args.distill_batches, iterations))
        if builder is not None:
            builder.join()

        def slide() -> dict:
            if builder is not None and builder.exitcode:
                raise RuntimeError(f"building {slide_path} failed (exit code {builder.exitcode})")
            return {"size_px": [width, height], "mpp": mpp, "MB": round(slide_path.stat().st_size / 1e6)}

        stage("slide", slide, started)
        rates = {name: found for name, found in results["encoder_only"].items() if name != "error"}
        stage("end_to_end", lambda: end_to_end(slide_path, experts, rates, workers))
        stage("gpu_decode", lambda: gpu_decode(slide_path, 2 if args.tiny else 8))  # last: a CUDA fault is sticky


if __name__ == "__main__":
    main()
