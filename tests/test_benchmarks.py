"""The cohort-scale benchmarks run end to end in their smallest mode, so their figures can be trusted to come
from the code they describe (the full runs and their figures are in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def run_script(name: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_bench_scale_builds_a_slide_extracts_it_and_projects_a_cohort(tmp_path, cmu_slide):
    out = tmp_path / "scale.json"
    run_script("bench_scale.py", "--smallest", "--cache", str(tmp_path / "cache"), "--json", str(out))
    results = json.loads(out.read_text())
    (row,) = results["rows"]
    assert row["size"] == "4096 x 3072" and 0.3 <= row["tissue_share"] <= 0.5  # blobs cover about a third
    assert (
        row["regions"] >= 1
        and row["tiles_encoded_per_expert"] == row["valid_l0_tiles"] + row["valid_l1_tiles"] + row["regions"]
    )
    assert row["store_MB_tiny"] > 0 and row["store_MB_per_region_paper"] > row["token_store_MB_per_region_paper"] > 0
    assert row["bytes_per_valid_20x_tile_paper"] > 0
    assert row["peak_rss_main_MB"] > 0 and row["peak_rss_workers_MB"] > 0
    projection = results["tcga_brca"]
    regions = projection["slides"] * projection["regions_per_slide"]
    assert projection["region_stores_GB"] == round(regions * row["store_MB_per_region_paper"] / 1e3, 1)
    assert projection["gpu_hours_per_expert"] > 0


def test_bench_store_compares_storage_choices_with_the_writer(tmp_path):
    out = tmp_path / "store.json"
    run_script("bench_store.py", "--regions", "4", "--repeats", "1", "--json", str(out))
    rows = {row["storage"]: row for row in json.loads(out.read_text())["rows"]}
    ours, v1 = rows["float16-gzip1-shuffle (pathme)"], rows["float32-raw"]
    assert ours["x_float16_valid"] <= 1.2 < v1["x_float16_valid"]  # the goal: <= 1.2x the valid features' float16
    assert ours["size_vs_v1"] < 0.3 and v1["size_vs_v1"] == 1.0
