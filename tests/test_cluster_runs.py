"""Extraction split over the tasks of a cluster: shards of a changed manifest, bad shard and stage inputs, staging,
and (on a real single-node SLURM, tests/slurm_cluster.py) an array job with a cancelled and resubmitted shard.

The demo cohort's stores (the ``demo_features`` fixture: one process over the whole cohort) are the reference every
sharded run must reproduce byte for byte."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_EXPERTS, REPO

from pathme.cli import main
from pathme.cohorts.manifest import read_manifest
from pathme.engines.embed import EmbedRun
from pathme.engines.extraction import CohortExtractor
from pathme.shards import RunRecords, run_status
from pathme.viz.preview import preview_manifest

pytestmark = pytest.mark.slow  # minutes of CPU: extraction, previews and tokens sharded over a real SLURM cluster


TEMPLATE = REPO / "scripts" / "slurm" / "extract_array.sbatch"


def sub_manifest(demo_cohort: Path, folder: Path, order: list[int]) -> Path:
    """A manifest of the demo cohort's slides at positions ``order`` (absolute paths), in that order."""
    rows = read_manifest(demo_cohort / "manifest.csv")
    table = pd.DataFrame(
        [{"slide_id": rows[i].slide_id, "path": str(rows[i].path), "patient_id": rows[i].patient_id} for i in order]
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"manifest_{len(order)}.csv"
    table.to_csv(path, index=False)
    return path


def assert_same_bytes(stores: Path, reference: Path, slide_ids: list[str]) -> None:
    for slide_id in slide_ids:
        assert filecmp.cmp(stores / f"{slide_id}.h5", reference / f"{slide_id}.h5", shallow=False), slide_id


def test_reordered_and_extended_manifests_never_redo_a_slide(tmp_path, demo_cohort, demo_features):
    out = tmp_path / "features"
    rows = CohortExtractor(sub_manifest(demo_cohort, tmp_path, [0, 1]), out, DEMO_EXPERTS, shard="0/2").run()
    (done,) = rows["slide_id"]
    assert rows["status"].tolist() == ["done"]
    changed = sub_manifest(demo_cohort, tmp_path, [3, 1, 0, 2])  # reordered, two slides added
    rows = pd.concat([CohortExtractor(changed, out, DEMO_EXPERTS, shard=f"{i}/2").run() for i in range(2)])
    status = rows.set_index("slide_id")["status"]
    assert status[done] == "skipped (valid store)"  # the slide done before, wherever it landed now
    assert (status.drop(done) == "done").all() and len(status) == 4
    assert_same_bytes(out, demo_features, status.index.tolist())
    summary = pd.read_csv(out / "run_summary.csv", keep_default_na=False)
    assert sorted(summary["slide_id"]) == sorted(status.index) and (summary["read_s"] != "").all()
    assert run_status(out, "extract").complete


def test_previews_and_tokens_shard_as_extraction_does(tmp_path, demo_cohort, demo_features, demo_tokens, demo_teacher):
    manifest = sub_manifest(demo_cohort, tmp_path, [0, 1, 2, 3])
    previews = tmp_path / "previews"
    first = preview_manifest(manifest, previews, shard="1/2")
    assert len(first) == 2 and sorted(p.name for p in previews.glob("*_preview.png")) == sorted(
        f"{slide}_preview.png" for slide in first["slide_id"]
    )
    assert not run_status(previews, "preview").complete
    preview_manifest(manifest, previews, shard="0/2")
    assert run_status(previews, "preview").complete and len(list(previews.glob("*_preview.png"))) == 4

    stores = tmp_path / "stores"
    stores.mkdir()
    slides = [row.slide_id for row in read_manifest(manifest)]
    for slide in slides:
        (stores / f"{slide}.h5").symlink_to(demo_features / f"{slide}.h5")
    tokens = tmp_path / "tokens"
    for index in range(2):
        rows = EmbedRun(stores, tokens, demo_teacher, shard=f"{index}/2").run()
        assert len(rows) == 2 and (rows["status"] == "done").all()
    status = run_status(tokens, "embed")
    assert status.complete and [s.slides for s in status.shards] == [2, 2]
    for slide in slides:
        with h5py.File(tokens / f"{slide}.h5") as ours, h5py.File(demo_tokens / f"{slide}.h5") as theirs:
            np.testing.assert_array_equal(ours["tokens"][:], theirs["tokens"][:])


@pytest.fixture
def full_folder(tmp_path):
    """A folder on a 1 MiB file system (a tmpfs: root only), too small to stage any demo slide."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=False).returncode:
        pytest.skip("a folder without room needs a tmpfs mount, which needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize(
    "flags, environment, expected",
    [
        (["--shard", "4/4"], {}, "--shard 4/4: give I/N with whole numbers 0 <= I < N"),
        (["--shard", "0/0"], {}, "--shard 0/0: give I/N"),
        (
            ["--shard", "0/4"],
            {"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"},
            "SLURM array job 7 has 8 tasks for 4 shards",
        ),
        (["--stage-dir", "/no/such/folder"], {}, "--stage-dir /no/such/folder: no such folder"),
    ],
)
def test_bad_shard_and_stage_inputs_are_one_line_and_write_nothing(
    tmp_path, demo_cohort, monkeypatch, caplog, flags, environment, expected
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert_refused(tmp_path, demo_cohort, caplog, flags, expected)


def test_a_stage_folder_without_room_is_one_line_and_writes_nothing(tmp_path, demo_cohort, caplog, full_folder):
    expected = f"--stage-dir {full_folder}: 0.00 GB free, but staging this shard's largest slides (2 at a time)"
    assert_refused(tmp_path, demo_cohort, caplog, ["--stage-dir", str(full_folder)], expected)


def assert_refused(tmp_path: Path, demo_cohort: Path, caplog, flags: list[str], expected: str) -> None:
    out = tmp_path / "out"
    manifest = sub_manifest(demo_cohort, tmp_path, [0, 1, 2])
    assert main(["extract", "--manifest", str(manifest), "--output-dir", str(out), *flags]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and expected in errors[0] and "\n" not in errors[0], errors
    assert not out.exists() or [p.name for p in out.iterdir()] == ["pathme.log"]  # at most the refusal's log


def test_a_staged_extraction_reads_copies_and_leaves_the_stage_empty(tmp_path, demo_cohort, demo_features, monkeypatch):
    import pathme.engines.extraction as cohort
    import pathme.shards.staging as staging

    opened: list[str] = []

    class Recording(cohort.SlideSource):
        def open(self):
            opened.append(str(self.path))
            return super().open()

    monkeypatch.setattr(cohort, "SlideSource", Recording)
    stage = tmp_path / "stage"
    stage.mkdir()
    out = tmp_path / "features"
    manifest = sub_manifest(demo_cohort, tmp_path, [6, 7])
    rows = CohortExtractor(manifest, out, DEMO_EXPERTS, stage_dir=stage).run()
    assert (rows["status"] == "done").all()
    assert opened and all(path.startswith(str(stage)) for path in opened)  # read from the node-local copies
    assert list(stage.iterdir()) == []
    assert_same_bytes(out, demo_features, rows["slide_id"].tolist())  # the store names the slide, not the copy
    copies: list[Path] = []
    monkeypatch.setattr(staging, "copy_atomic", lambda source, target: copies.append(source))
    rows = CohortExtractor(manifest, out, DEMO_EXPERTS, stage_dir=stage).run()
    assert (rows["status"] == "skipped (valid store)").all() and copies == []  # a finished shard copies nothing


def _wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.05)


@pytest.mark.slurm
def test_a_slurm_array_with_a_cancelled_shard_resubmitted_writes_the_stores_of_one_process(
    tmp_path, demo_cohort, demo_features
):
    from slurm_cluster import slurm_cluster

    manifest = sub_manifest(demo_cohort, tmp_path, list(range(8)))
    out, stage = tmp_path / "features", tmp_path / "stage"
    stage.mkdir()
    with slurm_cluster(tmp_path / "cluster", cpus=4, kill_wait=10) as cluster:
        env = dict(cluster.env, PATHME=str(Path(sys.executable).parent / "pathme"), TMPDIR=str(stage))
        env |= {"MANIFEST": str(manifest), "OUT": str(out)}
        args = ["--cpus-per-task=1", "--mem=100M", f"--output={tmp_path}/%A_%a.out"]
        job = cluster.sbatch(TEMPLATE, "--array=0-3", *args, env=env)
        records = RunRecords(out, "extract")
        _wait_for(lambda: records.read_plan() is not None, "plan")
        cancelled = records.read_plan().keys_of(2)
        _wait_for(lambda: any(out.glob(f".{cancelled[0]}.h5.*.tmp")), f"store of {cancelled[0]} being written")
        cluster.scancel(f"{job}_2")  # mid-slide
        states = cluster.wait(job, timeout=300)
        assert [states[task].state for task in range(4)] == ["COMPLETED", "COMPLETED", "CANCELLED", "COMPLETED"]
        assert not list(out.glob(".*.tmp"))  # the cancelled task discarded its half-written store

        status = subprocess.run([env["PATHME"], "status", "--output-dir", str(out)], capture_output=True, text=True)
        assert status.returncode == 1, status.stdout + status.stderr
        assert "2/4 interrupted" in " ".join(status.stdout.split()) and f"MISSING {cancelled[0]} (shard 2/4)" in (
            status.stdout
        )
        assert "resubmit: sbatch --array=2 " in status.stdout
        print(status.stdout)  # what docs/cluster.md shows (pytest -s)

        rerun = cluster.sbatch(TEMPLATE, "--array=2", *args, env=dict(env, SHARDS="4"))
        assert cluster.wait(rerun, timeout=300)[2].state == "COMPLETED"
    status = subprocess.run([env["PATHME"], "status", "--output-dir", str(out)], capture_output=True, text=True)
    assert status.returncode == 0 and "complete: every slide has its output" in status.stdout, status.stdout
    slides = [row.slide_id for row in read_manifest(manifest)]
    assert_same_bytes(out, demo_features, slides)
    log = (out / "pathme.log").read_text()
    assert log.count(" tiles encoded -> ") == 8  # each slide once; the cancelled one never finished its first try
    throughput = pd.read_csv(out / "extract_throughput.csv")
    assert throughput["shard"].tolist() == ["0/4", "1/4", "2/4", "3/4", "total"]
    assert throughput.iloc[-1]["slides_done"] == 8 and (throughput["tiles_per_s:tiny-vit"] > 0).all()
    assert not list(stage.iterdir())  # every task removed its staged copies
    print(throughput.to_string(index=False))  # the figures docs/cluster.md shows (pytest -s)
