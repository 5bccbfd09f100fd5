"""Benchmark: attention-MIL training time and memory against cohort size, raw 20x features against PatHME tokens.

Writes synthetic cohorts through the real writers (one slide per patient, ``--regions`` regions of valid tiles,
expert features of ``--dim`` dimensions as float16 region stores, and token stores of ``--token-dim`` PatHME
tokens linking them), cached under ``--cache`` so reruns reuse them. Each configuration (patients x feature
source x bag cache) then trains ABMIL in a fresh process for ``--epochs`` epochs (pathme's ``train_fold``: the
same data path as ``pathme mil``) and reports s/epoch and the process's peak RSS. Peak RSS flat in the number of
patients means memory is bounded by the bag cache, not by the cohort; instances per bag show what tokens save.
Usage: ``python scripts/bench_mil.py --patients 100 1000 [--regions 8] [--dim 1024] [--json out.json]``
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

from pathme.engines.embed import token_coords
from pathme.store.atomic import write_atomic
from pathme.store.tokens import TokenProvenance, write_token_store
from pathme.synthetic.stores import write_store
from pathme.wsi.grid import REGION_PX, RegionGrid

EXPERT = "uni"


def build_cohort(folder: Path, patients: int, regions: int, dim: int, token_dim: int) -> Path:
    """``folder/regions`` and ``folder/tokens`` of ``patients`` one-slide patients, and labels.csv; reused when
    complete (labels.csv is written last)."""
    labels = folder / "labels.csv"
    if labels.is_file():
        return folder
    for kind in ("regions", "tokens"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    origins = RegionGrid(REGION_PX * regions, REGION_PX, 0.5).origins()
    coords = token_coords(origins, REGION_PX, 10)
    rng = np.random.default_rng(0)
    for patient in range(patients):
        slide = f"s{patient:05d}"
        write_store(folder / "regions", slide, f"p{patient:05d}", ["full"] * regions, {EXPERT: dim})
        tokens = rng.standard_normal((regions, 26, token_dim)).astype(np.float32)
        made_by = TokenProvenance("random tokens (benchmark)", "none")
        write_token_store(
            folder / "regions" / f"{slide}.h5", folder / "tokens" / f"{slide}.h5", tokens, coords, made_by
        )
    rows = [f"p{patient:05d},{'ab'[patient % 2]}" for patient in range(patients)]
    labels.write_text("patient_id,label\n" + "\n".join(rows) + "\n")
    return folder


def train_once(folder: Path, source: str, cache_bytes: int | None, epochs: int) -> dict:
    """One ABMIL training of ``epochs`` epochs on every patient (validation: every tenth); runs in a child."""
    import torch

    from pathme.data.bags import BagDataset, BagIndex, default_cache_bytes
    from pathme.engines.mil import MILModelConfig, MILTask, TrainSettings, train_fold

    torch.set_num_threads(os.cpu_count() or 1)
    features_dir = folder / ("tokens" if source == "pathme" else "regions")
    index = BagIndex(features_dir, source, cache_bytes)
    patients = sorted(set(index.slide_patients.values()))
    targets = {patient: {"target": int(patient[1:]) % 2} for patient in patients}
    train = BagDataset(index, [p for i, p in enumerate(patients) if i % 10], targets)
    val = BagDataset(index, patients[::10], targets)
    config = MILModelConfig(in_dim=index.feature_dim(), num_outputs=2)
    settings = TrainSettings(max_epochs=epochs, min_epochs=epochs, patience=epochs)
    start = time.perf_counter()
    train_fold(config, MILTask("label", ("a", "b")), train, val, settings, torch.device("cpu"), seed=0)
    seconds = time.perf_counter() - start
    return {
        "s_per_epoch": round(seconds / epochs, 2),
        "instances_per_bag": len(train[0]["features"]),
        "cache_bytes": index.cache_bytes if cache_bytes is not None else f"default ({default_cache_bytes()})",
        "cached_MB": round(index._cached_bytes / 1e6, 1),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--regions", type=int, default=8, help="regions per slide, all 256 20x tiles valid")
    parser.add_argument("--dim", type=int, default=1024, help="expert feature dimension (UNI: 1024)")
    parser.add_argument("--token-dim", type=int, default=768, help="PatHME token dimension (paper preset: 768)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache-bytes", type=int, nargs="+", default=[-1, 0], help="-1: the default budget")
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench_mil"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, source, cache, epochs = args.child
        print(json.dumps(train_once(Path(folder), source, None if cache == "-1" else int(cache), int(epochs))))
        return
    rows = []
    for patients in args.patients:
        folder = args.cache / f"{patients}p_{args.regions}r_{args.dim}d_{args.token_dim}t"
        build_cohort(folder, patients, args.regions, args.dim, args.token_dim)
        for source in (EXPERT, "pathme"):
            for cache in args.cache_bytes:
                child = [sys.executable, __file__, "--child", str(folder), source, str(cache), str(args.epochs)]
                result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
                rows.append({"patients": patients, "source": source, **result})
                print(rows[-1], flush=True)
    if args.json:
        machine = {"machine": platform.platform(), "cpus": os.cpu_count()}
        write_atomic(
            args.json,
            json.dumps({"rows": rows, **machine, **vars(args) | {"cache": str(args.cache)}}, indent=2, default=str),
        )


if __name__ == "__main__":
    main()
