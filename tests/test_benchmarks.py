"""The cohort-scale benchmarks run end to end in their smallest mode, so their figures can be trusted to come
from the code they describe (the full runs and their figures are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from pathme.synthetic.stores import write_store

pytestmark = pytest.mark.slow  # minutes of CPU: every benchmark script at a small size


def run_script(name: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def scale_cache(tmp_path_factory) -> Path:
    """Where bench_scale.py and gpu_bench.py build their smallest slide: built once for both."""
    return tmp_path_factory.mktemp("scale")


def test_bench_thumbnail_previews_a_slide_with_and_without_a_pyramid(tmp_path, cmu_slide, scale_cache):
    out = tmp_path / "thumbnail.json"
    run_script("bench_thumbnail.py", "--smallest", "--cache", str(scale_cache), "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [row["levels"] for row in rows] == ["pyramid", "level 0 only"]
    assert all(row["slide"] == "4096 x 3072" and row["peak_rss_MB"] > 0 and row["seconds"] > 0 for row in rows)


def test_bench_scale_builds_a_slide_extracts_it_and_projects_a_cohort(tmp_path, cmu_slide, scale_cache):
    out = tmp_path / "scale.json"
    run_script("bench_scale.py", "--smallest", "--cache", str(scale_cache), "--json", str(out))
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


def gpu_bench(*args: str, python: str = sys.executable, **env: str) -> subprocess.CompletedProcess:
    command = [str(REPO / "scripts" / "gpu_bench.sh"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHON": python} | env)


def test_gpu_bench_runs_every_stage_without_what_a_bare_gpu_machine_lacks(tmp_path, cmu_slide, scale_cache):
    """The tiny mode on the CPU with nibabel, fire, tensorboard and OpenSlide unimportable, as on the bare GPU
    machines: every stage runs and reports the figures the full run puts in docs/benchmarks.md."""
    absent = tmp_path / "absent"
    absent.mkdir()
    for module in ("nibabel", "fire", "tensorboard", "openslide"):
        (absent / f"{module}.py").write_text(f"raise ImportError('{module} is not on the bare GPU machine')\n")
    out = tmp_path / "gpu.json"
    args = ["--tiny", "--json", str(out), "--sample-dir", str(cmu_slide.parent), "--work-dir", str(scale_cache)]
    result = gpu_bench(*args, PYTHONPATH=str(absent))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    assert set(found["stages_s"]) == {"machine", "encoder_only", "distillation", "slide", "gpu_decode", "end_to_end"}
    assert not [stage for stage in found["stages_s"] if "error" in found[stage]], found
    assert found["machine"]["versions"]["torch"] and found["machine"]["cpus"] >= 1
    for expert in ("tiny-vit", "tiny-cnn"):
        rates = found["encoder_only"][expert]
        assert rates["best_tiles_per_s"] == max(rates["tiles_per_s"].values()) > 0
    (step,) = found["distillation"]
    assert step["preset"] == "tiny" and step["regions_per_second"] > 0
    decode = found["gpu_decode"]
    assert decode["regions"] >= 1 and decode["cpu_regions_per_s"] > 0
    assert decode["gpu"] == "works" or "Error" in decode["gpu"]  # the exact error where the GPU path fails
    e2e = found["end_to_end"]
    assert [run["experts"] for run in e2e["runs"]] == [["tiny-vit"], ["tiny-vit", "tiny-cnn"], ["tiny-cnn"]]
    assert len({run["tiles_per_slide"] for run in e2e["runs"]}) == 1  # every run encodes the same tiles
    assert e2e["tiny-vit_end_to_end_over_encoder_only"] > 0 and e2e["one_decode_over_separate_runs"] > 0


def test_gpu_bench_sets_a_bare_python_up_from_carried_wheels_only(tmp_path):
    """A python without MONAI, Ignite, cuCIM, imagecodecs or OpenCV: --dry-run names them; a run without their wheels
    stops before anything else, saying how to bring them."""
    venv.create(tmp_path / "bare", with_pip=False)
    bare, cache = str(tmp_path / "bare" / "bin" / "python"), str(tmp_path / "cache")
    result = gpu_bench("--dry-run", python=bare, GPU_BENCH_CACHE=cache)
    assert result.returncode == 0 and "monai pytorch-ignite cucim imagecodecs opencv-python-headless" in result.stdout
    assert "nothing" in gpu_bench("--dry-run").stdout  # this venv has them all
    result = gpu_bench("--tiny", python=bare, GPU_BENCH_CACHE=cache)
    assert result.returncode == 2 and "scripts/gpu_bench.sh --fetch" in result.stderr


def test_gpu_bench_extraction_measures_again_where_it_ran_before(scale_cache, cmu_slide):
    """A second run (the same slide, the same work folder) encodes the slide again instead of skipping stores
    left by the first, which had made every rerun of gpu_bench.sh end in 'extraction failed'."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from bench_scale import SMALLEST, build_slide
        from gpu_bench import extraction
    finally:
        sys.path.remove(str(REPO / "scripts"))
    ((name, (width, height, mpp)),) = SMALLEST.items()
    slide = build_slide(scale_cache / f"{name}.svs", width, height, mpp, cmu_slide)
    first, again = (extraction(slide, 1, ("tiny-cnn",), 16, 0) for _ in range(2))
    assert first["tiles_per_slide"] == again["tiles_per_slide"] > 0 and again["tiles_per_s"] > 0


def test_bench_value_counts_instances_per_source_and_tabulates_each_task_metric(tmp_path):
    """The value benchmark's table: one row per signal, task and source, with that task's metric, the mean valid
    instances per slide of the source (20x tiles, 5x tiles, regions) and MIL seconds per fold."""
    spec = importlib.util.spec_from_file_location("bench_value", REPO / "scripts" / "bench_value.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    regions = write_store(tmp_path, "s1", "p1", ["full", "empty", "full"], {"tiny-vit": 4})
    write_store(tmp_path, "s2", "p2", ["full"], {"tiny-vit": 4})
    assert bench.instances_per_slide(tmp_path, "tiny-vit") == (2 * 256 + 256) / 2
    assert bench.instances_per_slide(tmp_path, "tiny-vit@5x") == (2 * 16 + 16) / 2
    assert bench.instances_per_slide(tmp_path, "tiny-vit@1.25x") == 1.5 and regions[1]["valid_l0"].sum() == 0
    results = pd.DataFrame(
        [
            {"signal": "context", "task": "label", "features": "pathme", "metric": "auroc", "mean": 0.8, "sd": 0.1},
            {"signal": "context", "task": "label", "features": "pathme", "metric": "f1", "mean": 0.7, "sd": 0.1},
            {"signal": "context", "task": "survival", "features": "x", "metric": "c_index", "mean": 0.6, "sd": 0.05},
        ]
    ).assign(seconds=[10.0, 10.0, 5.0])
    lines = bench.table(results, folds=5, instances={"pathme": 100.4, "x": 7.0}).splitlines()
    assert lines[2:] == [
        "| context | label | pathme | auroc 0.800 ± 0.100 | 100 | 2.0 |",
        "| context | survival | x | c_index 0.600 ± 0.050 | 7 | 1.0 |",
    ]
