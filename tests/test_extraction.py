"""The feature-extraction bundle: stores that validate, resume after kills, agree across ranks, report failures."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from pathme.cli import main
from pathme.engines.extraction import CohortExtractor
from pathme.store import validate_store
from pathme.synthetic.slides import write_pyramid
from pathme.wsi.regions import plan_regions
from pathme.wsi.slide import Slide

pytestmark = pytest.mark.slow  # minutes of CPU: bundle runs, kills and torchrun on real H&E slides

BUNDLE = REPO / "bundles" / "pathme_feature_extraction"
CONFIG = BUNDLE / "configs" / "inference.json"
MULTI = BUNDLE / "configs" / "multi_gpu_inference.json"
EXPERTS = ["tiny-vit", "tiny-cnn"]


def _bundle_command(manifest: Path, output_dir: Path, *extra: str, configs: str | None = None) -> list[str]:
    return [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs or str(CONFIG),
        "--meta_file",
        str(BUNDLE / "configs" / "metadata.json"),
        "--logging_file",
        str(BUNDLE / "configs" / "logging.conf"),
        "--manifest",
        str(manifest),
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def _run_bundle(manifest: Path, output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *_bundle_command(manifest, output_dir, *extra)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def store_contents(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a store, by name."""
    contents: dict[str, np.ndarray] = {}

    def keep(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Dataset):
            contents[name] = item[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(keep)
    return contents


def assert_same_stores(left: Path, right: Path, slide_ids: list[str], feature_rtol: float = 0.0) -> None:
    """Every dataset equal; features exactly, or within ``feature_rtol`` where the thread count differed."""
    for slide_id in slide_ids:
        a, b = store_contents(left / f"{slide_id}.h5"), store_contents(right / f"{slide_id}.h5")
        assert a.keys() == b.keys()
        for name in a:
            where = f"{slide_id}: {name}"
            if name.startswith("features/") and feature_rtol:
                np.testing.assert_allclose(a[name], b[name], rtol=feature_rtol, atol=1e-6, err_msg=where)
            else:
                np.testing.assert_array_equal(a[name], b[name], err_msg=where)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, cmu_pixels) -> Path:
    """Three small slides of real H&E pixels: one and two regions, SVS and TIFF."""
    folder = tmp_path_factory.mktemp("cohort")
    slides = {
        "cmu_a": (cmu_pixels, "svs"),
        "cmu_b": (np.ascontiguousarray(cmu_pixels[::-1]), "tiff"),
        "cmu_c": (np.ascontiguousarray(np.concatenate([cmu_pixels, cmu_pixels[:, ::-1], cmu_pixels], axis=1)), "svs"),
    }
    rows = ["slide_id,path,patient_id"]
    for slide_id, (pixels, flavour) in slides.items():
        path = folder / f"{slide_id}.{flavour}"
        write_pyramid(path, pixels, 0.5, flavour, (1, 4), magnification=20 if flavour == "svs" else None)
        rows.append(f"{slide_id},{path.name},{slide_id}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


SLIDES = ["cmu_a", "cmu_b", "cmu_c"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cohort) -> Path:
    """An uninterrupted single-process extraction of the cohort."""
    output = tmp_path_factory.mktemp("reference")
    summary = CohortExtractor(cohort, output, EXPERTS, batch_size=32, num_workers=1).run()
    assert (summary["status"] == "done").all(), summary
    return output


def test_stores_validate_and_match_the_plan(reference, cohort):
    for slide_id in SLIDES:
        attrs = validate_store(reference / f"{slide_id}.h5", experts=EXPERTS)
        path = next(cohort.parent.glob(f"{slide_id}.*"))
        plan = plan_regions(Slide.open(path))
        contents = store_contents(reference / f"{slide_id}.h5")
        np.testing.assert_array_equal(contents["coords"], [[r.x, r.y] for r in plan.regions])
        np.testing.assert_array_equal(contents["valid/L0"], [r.valid_l0 for r in plan.regions])
        assert attrs["expert_weights"] == {"tiny-vit": "random", "tiny-cnn": "random"}
        for expert in EXPERTS:
            l0 = contents[f"features/{expert}/L0"]
            assert np.abs(l0[contents["valid/L0"]]).sum(axis=-1).min() > 0  # every valid tile was encoded
            assert not l0[~contents["valid/L0"]].any()  # invalid rows stay zero, flagged invalid
    assert len(store_contents(reference / "cmu_c.h5")["coords"]) == 2


def test_the_bundle_runs_from_the_command_line_on_the_cmu_slide(tmp_path, cmu_slide):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\ncmu,{cmu_slide}\n")
    _run_bundle(manifest, tmp_path / "out", "--num_workers", "0")
    summary = pd.read_csv(tmp_path / "out" / "run_summary.csv", keep_default_na=False)
    assert summary["status"].tolist() == ["done"]
    validate_store(tmp_path / "out" / "cmu.h5", experts=EXPERTS)


def test_the_bundle_runs_on_a_demo_cohort(tmp_path, cmu_slide):
    from pathme.demo.cohort_generator import make_demo_cohort

    manifest = make_demo_cohort(tmp_path / "demo", cmu_slide, n_slides=2, seed=3)
    _run_bundle(manifest, tmp_path / "out", "--tiles_per_batch", "128")
    summary = pd.read_csv(tmp_path / "out" / "run_summary.csv", keep_default_na=False)
    assert (summary["status"] == "done").all() and len(summary) == 2
    for row in summary.itertuples():
        attrs = validate_store(Path(row.store), experts=EXPERTS)
        assert attrs["mpp"] == 0.5 and row.regions >= 4


def test_a_rerun_skips_valid_stores_and_redoes_changed_inputs(tmp_path, reference, cohort):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    summary = CohortExtractor(cohort, output, EXPERTS, batch_size=32).run()
    assert summary["status"].tolist() == ["skipped (valid store)"] * 3
    summary = CohortExtractor(cohort, output, EXPERTS, batch_size=32, seed=1).run()  # other random weights
    assert summary["status"].tolist() == ["done"] * 3


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_store_is_detected_and_redone(tmp_path, reference, cohort, damage):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    store = output / "cmu_b.h5"
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x89HDF\r\n\x1a\n" + os.urandom(4096))
    summary = CohortExtractor(cohort, output, EXPERTS, batch_size=32).run().set_index("slide_id")
    assert summary.loc["cmu_b", "status"] == "done"
    assert summary.loc["cmu_a", "status"] == "skipped (valid store)"
    assert_same_stores(reference, output, SLIDES)


def _kill_when(command: list[str], ready) -> None:
    """Start the extraction and SIGKILL it (and its reader workers) as soon as ``ready()`` is true."""
    process = subprocess.Popen(
        [sys.executable, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the extraction ended before the kill point was reached")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_sigkill_at_several_points_then_a_rerun_gives_identical_stores(tmp_path, reference, cohort):
    output = tmp_path / "out"
    command = _bundle_command(cohort, output, "--tiles_per_batch", "32")
    stores = lambda: sorted(output.glob("cmu_*.h5"))  # noqa: E731
    _kill_when(command, lambda: output.is_dir() and any(output.iterdir()))  # while the first slide is encoded
    assert stores() == []
    _kill_when(command, lambda: len(stores()) >= 1)  # between slides or inside the second
    _kill_when(command, lambda: len(stores()) >= 2)
    _run_bundle(cohort, output, "--tiles_per_batch", "32")
    assert_same_stores(reference, output, SLIDES)
    hidden = [path for path in output.iterdir() if path.name.startswith(".") and path.suffix != ".lock"]
    assert not hidden  # no temporary files left (the empty slide locks stay, shared by waiting runs)


def test_two_torchrun_processes_write_the_same_stores_as_one(tmp_path, reference, cohort):
    torchrun = Path(sys.executable).with_name("torchrun")
    configs = f"['{CONFIG}','{MULTI}']"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2"]
    command += _bundle_command(cohort, tmp_path / "out", "--tiles_per_batch", "32", configs=configs)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "out" / "run_summary.csv", keep_default_na=False)
    assert sorted(summary["slide_id"]) == SLIDES and (summary["status"] == "done").all()
    # torchrun gives each process one OpenMP thread; CPU kernels then sum in another order (float32 rounding)
    assert_same_stores(reference, tmp_path / "out", SLIDES, feature_rtol=1e-5)


def test_bad_slides_are_reported_and_the_others_finish(tmp_path, cohort, cmu_pixels):
    unreadable = tmp_path / "unreadable.svs"
    unreadable.write_bytes(b"II*\x00" + os.urandom(2048))
    no_mpp = tmp_path / "no_mpp.svs"
    write_pyramid(no_mpp, cmu_pixels[:1024, :1024], None, "svs", (1,))
    good = next(cohort.parent.glob("cmu_a.*"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\nunreadable,{unreadable}\nno_mpp,{no_mpp}\ngood,{good}\n")
    summary = CohortExtractor(manifest, tmp_path / "out", EXPERTS).run().set_index("slide_id")
    assert summary.loc["good", "status"] == "done"
    assert summary.loc["unreadable", "status"] == "failed" and "unreadable" in summary.loc["unreadable", "error"]
    assert summary.loc["no_mpp", "status"] == "failed" and "'mpp' column" in summary.loc["no_mpp", "error"]
    written = pd.read_csv(tmp_path / "out" / "run_summary.csv", keep_default_na=False)
    assert set(written["status"]) == {"done", "failed"}


def test_interop_files_hold_the_valid_l0_tiles(tmp_path, reference, cohort):
    output = tmp_path / "out"
    shutil.copytree(reference, output)
    CohortExtractor(cohort, output, EXPERTS, interop_h5=True).run()
    store = store_contents(output / "cmu_c.h5")
    with h5py.File(output / "h5_files" / "tiny-vit" / "cmu_c.h5", "r") as handle:
        coords, features = handle["coords"][:], handle["features"][:]
    valid = store["valid/L0"]
    assert coords.shape == (valid.sum(), 2) and features.shape == (valid.sum(), store["features/tiny-vit/L0"].shape[-1])
    np.testing.assert_array_equal(features, store["features/tiny-vit/L0"][valid])
    assert coords.min() >= 0 and coords[:, 0].max() < 3 * 2220 and coords[:, 1].max() < 2967
    region, tile = np.divmod(np.flatnonzero(valid)[0], 256)
    row, col = divmod(tile, 16)
    np.testing.assert_array_equal(coords[0], store["coords"][region] + np.array([col, row]) * 256)


def test_the_pathme_command_wraps_the_bundle(tmp_path, reference, cohort):
    command = ["extract", "--manifest", str(cohort), "--output-dir", str(tmp_path / "out"), "--tiles-per-batch", "32"]
    assert main(command) == 0
    assert_same_stores(reference, tmp_path / "out", SLIDES)


HOLD_THE_LOCK = """
import sys, time
from pathme.store.atomic import writer_lock
lock = writer_lock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


class _KillWhenLogged(logging.Handler):
    """Keeps what the loggers it is added to log; kills ``process`` when a message contains ``trigger``."""

    def __init__(self, process: subprocess.Popen, trigger: str) -> None:
        super().__init__(logging.INFO)
        self.process, self.trigger, self.messages = process, trigger, []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.trigger in self.messages[-1]:
            self.process.kill()
            self.process.wait()


def test_a_slide_another_run_holds_is_put_off_then_waited_for_and_redone_when_that_run_dies(tmp_path, cohort):
    """Before: no lock, so two runs on one folder encoded every slide twice (the last rename won)."""
    output = tmp_path / "out"
    output.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(output / "cmu_a.h5")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline() == "held\n"  # "another run" is extracting cmu_a
        loggers = [logging.getLogger(name) for name in ("pathme.shards.run", "pathme.engines.extraction")]
        watcher, levels = _KillWhenLogged(holder, "waiting for the other task"), [lg.level for lg in loggers]
        for logger in loggers:
            logger.addHandler(watcher)
            logger.setLevel(logging.INFO)
        try:
            summary = CohortExtractor(cohort, output, EXPERTS, batch_size=32).run()
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(watcher)
                logger.setLevel(level)
    finally:
        holder.kill()
        holder.wait()
    assert summary["slide_id"].tolist() == SLIDES and (summary["status"] == "done").all()  # in manifest order
    events = [
        message.split(":")[0] + ": encoded" if " tiles encoded -> " in message else message
        for message in watcher.messages
        if message.startswith("slide") and "opened" not in message
    ]
    assert events == [
        "slide cmu_a: another task is on it; put off to the end",
        "slide cmu_b: encoded",
        "slide cmu_c: encoded",
        "slide cmu_a: waiting for the other task that is on it",  # then that run is killed: its lock goes
        "slide cmu_a: encoded",  # no valid store from it, so this run extracts the slide
    ]


def test_two_runs_on_one_folder_encode_each_slide_once_and_write_the_stores_of_one(tmp_path, reference, cohort):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "pathme.cli", "-v", "extract", "--manifest", str(cohort), "--output-dir"]
    command += [str(output), "--tiles-per-batch", "32"]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    encoded = [output.count(" tiles encoded -> ") for output in outputs]
    assert sum(encoded) == 3, encoded  # was 6: both runs encoded every slide
    for text in outputs:  # each run's summary lists every slide, done by it or skipped as done by the other
        assert "3 slides: " in text and ", 0 failed; see" in text
    summary = pd.read_csv(output / "run_summary.csv", keep_default_na=False)
    assert summary["slide_id"].tolist() == SLIDES
    assert set(summary["status"]) <= {"done", "skipped (valid store)"}
    assert_same_stores(reference, output, SLIDES)
    assert not list(output.glob(".*.tmp"))
