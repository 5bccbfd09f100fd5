"""Benchmark: what a region store costs on disk, and how fast distillation reads its regions back.

Writes one slide's features at the paper's dimensions (UNI 1024-d, Prov-GigaPath 1536-d; random values, whose
float16 mantissas compress like real features' do: hardly at all) with a known share of valid 20x tiles, once
per storage choice:

* ``float32-raw``: schema version 1 (float32, no compression, a zero row for every background tile);
* ``float16-raw``: float16 without compression;
* ``float16-gzip1-shuffle``: float16, gzip level 1 after byte shuffling — what pathme writes, through its writer;
* ``float16-lzf``, ``float16-gzip4-shuffle`` and, when hdf5plugin is installed, ``float16-zstd3`` and
  ``float16-blosc2-zstd-shuffle``: the other candidates.

For each: bytes per valid 20x tile against the float16 size of the valid features (all experts and scales),
write seconds, and region reads/s as distillation reads them (expert A's L0 and L1 chunks, expert B's L0 chunk,
the valid flags) in a random order. Ratios are measured in the same run.
Usage: ``python scripts/bench_store.py [--regions 48] [--valid 0.38] [--repeats 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from pathme.store import RegionStoreWriter
from pathme.store.atomic import write_atomic
from pathme.store.writer import stored_values
from pathme.synthetic.stores import store_attrs
from pathme.wsi.grid import REGION_PX, RegionGrid, l1_validity

DIMS = {"uni": 1024, "gigapath": 1536}


def candidates() -> dict[str, tuple[str, dict]]:
    """Name -> (dtype, h5py filter options) of the storage choices compared with pathme's writer."""
    found = {
        "float32-raw": ("float32", {}),
        "float16-raw": ("float16", {}),
        "float16-lzf": ("float16", {"compression": "lzf"}),
        "float16-gzip4-shuffle": ("float16", {"compression": "gzip", "compression_opts": 4, "shuffle": True}),
    }
    try:
        import hdf5plugin
    except ImportError:
        return found
    blosc2 = hdf5plugin.Blosc2(cname="zstd", clevel=3, filters=hdf5plugin.Blosc2.SHUFFLE)
    return found | {
        "float16-zstd3": ("float16", dict(hdf5plugin.Zstd(clevel=3))),
        "float16-blosc2-zstd-shuffle": ("float16", dict(blosc2)),
    }


def make_regions(n_regions: int, valid_share: float, rng: np.random.Generator) -> list[dict]:
    """Regions whose 20x tiles are valid with probability ``valid_share``, random features (~N(0, 0.5))."""
    regions = []
    for _ in range(n_regions):
        valid_l0 = rng.random(256) < valid_share
        valid_l1 = l1_validity(valid_l0)
        features = {}
        for expert, dim in DIMS.items():
            l0, l1, l2 = (0.5 * rng.standard_normal(shape).astype(np.float32) for shape in ((256, dim), (16, dim), dim))
            features[expert] = [l0, l1, l2]
        regions.append({"valid_l0": valid_l0, "valid_l1": valid_l1, "features": features})
    return regions


def write_with_writer(path: Path, regions: list[dict]) -> None:
    origins = RegionGrid(REGION_PX * len(regions), REGION_PX, 0.5).origins()
    attrs = store_attrs("bench", "bench", DIMS, (REGION_PX * len(regions), REGION_PX))
    with RegionStoreWriter(path, attrs=attrs, n_regions=len(regions), experts=DIMS) as writer:
        for index, region in enumerate(regions):
            writer.write_region(index, coords=(int(origins[index][0]), int(origins[index][1])), **region)
        writer.commit()


def write_plain(path: Path, regions: list[dict], dtype: str, filters: dict) -> None:
    """The same datasets and chunks as the writer, with other dtype and filters (values as the writer stores them)."""
    n = len(regions)
    with h5py.File(path, "w", libver=("v110", "v110")) as file:
        for level, key in (("L0", "valid_l0"), ("L1", "valid_l1")):
            file.create_dataset(
                f"valid/{level}", data=np.stack([r[key] for r in regions]), chunks=(1, 256 if level == "L0" else 16)
            )
        for expert, dim in DIMS.items():
            for position, (level, shape) in enumerate((("L0", (256, dim)), ("L1", (16, dim)), ("L2", (dim,)))):
                data = file.create_dataset(
                    f"features/{expert}/{level}",
                    shape=(n, *shape),
                    dtype=dtype,
                    chunks=(1, *shape),
                    fletcher32=True,
                    **filters,
                )
                for index, region in enumerate(regions):
                    keep = (region["valid_l0"], region["valid_l1"], np.array(True))[position]
                    data[index] = stored_values(region["features"][expert][position], keep, dtype)


def region_reads_per_s(path: Path, n_regions: int, repeats: int, rng: np.random.Generator) -> float:
    """Regions/s read as :class:`~pathme.data.distill_dataset.RegionStoreDataset` reads an item: the flags, then
    expert A's L0 and L1 and expert B's L0 chunks as float32 tensors."""
    expert_a, expert_b = DIMS
    order = np.concatenate([rng.permutation(n_regions) for _ in range(repeats)])
    features = (f"features/{expert_a}/L0", f"features/{expert_a}/L1", f"features/{expert_b}/L0")
    with h5py.File(path, "r") as file:
        start = time.perf_counter()
        for region in order:
            flags = [torch.from_numpy(file[name][region]) for name in ("valid/L0", "valid/L1")]
            tensors = [torch.from_numpy(file[name][region]).float() for name in features]
            del flags, tensors
        return len(order) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=48)
    parser.add_argument("--valid", type=float, default=0.38, help="share of valid 20x tiles (0.38: a TCGA-like slide)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the regions when reading")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    regions = make_regions(args.regions, args.valid, rng)
    valid_tiles = sum(int(r["valid_l0"].sum()) for r in regions)
    tiles = sum(int(r["valid_l0"].sum() + r["valid_l1"].sum()) + 1 for r in regions)
    float16_valid = tiles * sum(DIMS.values()) * 2
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        choices = {"float16-gzip1-shuffle (pathme)": None, **candidates()}
        for name, choice in choices.items():
            path = Path(folder) / f"{len(rows)}.h5"
            start = time.perf_counter()
            if choice is None:
                write_with_writer(path, regions)
            else:
                write_plain(path, regions, *choice)
            seconds = time.perf_counter() - start
            size = path.stat().st_size
            rows.append(
                {
                    "storage": name,
                    "MB": round(size / 1e6, 2),
                    "bytes_per_valid_20x_tile": round(size / valid_tiles),
                    "x_float16_valid": round(size / float16_valid, 3),
                    "write_s": round(seconds, 2),
                    "region_reads_per_s": round(region_reads_per_s(path, args.regions, args.repeats, rng), 1),
                }
            )
    reference = next(row for row in rows if row["storage"] == "float32-raw")
    for row in rows:
        row["size_vs_v1"] = round(row["MB"] / reference["MB"], 3)
        row["reads_vs_v1"] = round(row["region_reads_per_s"] / reference["region_reads_per_s"], 2)
    header = list(rows[0])
    print(f"{args.regions} regions, {valid_tiles / (256 * args.regions):.0%} of 20x tiles valid, experts {DIMS}")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[key]) for key in header))
    if args.json:
        machine = {"machine": platform.platform(), "cpus": os.cpu_count(), "h5py": h5py.__version__}
        write_atomic(args.json, json.dumps({"rows": rows, **machine, "regions": args.regions}, indent=2))


if __name__ == "__main__":
    main()
