"""Shards, claims, records and status of per-slide runs (pathme.shards), without a slide: a run's work is a stand-in
function, so each property is checked in milliseconds; extraction itself is in test_cluster_runs.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from pathme.device import cpu_budget, reader_workers
from pathme.shards import RunRecords, Shard, ShardError, ShardRun, WorkItem, resolve_shard, run_status
from pathme.shards.shard import PER_SLIDE_BYTES, assign, parse_shard
from pathme.shards.staging import StageError, Stager, check_room
from pathme.shards.status import array_list

COLUMNS = ["slide_id", "status", "tiles", "error"]


def items_of(folder: Path, sizes: dict[str, int]) -> list[WorkItem]:
    """A file of each size in ``folder`` and its work item (output ``<id>.out``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, size in sizes.items():
        (folder / f"{key}.bin").write_bytes(b"x" * size)
    return [WorkItem(key, folder / f"{key}.bin", folder / f"{key}.out") for key in sizes]


def make_output(item: WorkItem, local) -> dict:
    """A stand-in for a slide's work: writes its output from its input, as extraction writes a store."""
    item.target.write_bytes(local().read_bytes())
    return {"slide_id": item.key, "status": "done", "tiles": 10, "error": "", "encode_s_by_expert": {"a": 0.5}}


@pytest.mark.parametrize("text", ["4/4", "0/0", "5/4", "-1/4", "1", "a/b", "1/4/2", ""])
def test_a_bad_shard_is_one_line_naming_the_fix(text):
    with pytest.raises(ShardError) as error:
        parse_shard(text)
    assert "0 <= I < N" in str(error.value) and "\n" not in str(error.value)


def test_the_shard_comes_from_the_flag_else_slurm_else_torchrun_else_srun():
    array = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "4"}
    array |= {"SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert (resolve_shard(None, array).index, resolve_shard(None, array).count) == (2, 4)  # --array=4-7: task 6
    assert resolve_shard(None, array).automatic and "job 77 task 6" in resolve_shard(None, array).origin
    assert resolve_shard("1/4", array) == Shard(1, 4)  # the flag wins (a rerun of shard 1 of 4)
    assert str(resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"})) == "1/2"
    assert str(resolve_shard(None, {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "5"})) == "3/8"
    assert resolve_shard(None, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Shard(0, 1, "the whole cohort")
    assert str(resolve_shard(None, {})) == "0/1"


def test_a_slurm_array_that_does_not_fit_the_shards_is_refused():
    eight = {"SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}
    with pytest.raises(ShardError, match="has 8 tasks for 4 shards"):
        resolve_shard("1/4", eight)
    gaps = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3"}
    with pytest.raises(ShardError, match=r"not one run of numbers.*--shard \$SLURM_ARRAY_TASK_ID/N"):
        resolve_shard(None, gaps | {"SLURM_ARRAY_TASK_COUNT": "2"})  # --array=1,3: a resubmission of two shards


def test_shards_balance_bytes_not_slide_counts_and_ignore_row_order():
    rng = random.Random(0)
    work = {f"s{i:03d}": rng.choice([2**20, 2**30]) * rng.randint(1, 4) for i in range(60)}  # 1 MB and 1 GB scans
    shards = assign(work, 4)
    shuffled = dict(rng.sample(sorted(work.items()), len(work)))
    assert assign(shuffled, 4) == shards  # the manifest's order does not matter
    loads = [sum(work[k] + PER_SLIDE_BYTES for k in work if shards[k] == s) for s in range(4)]
    assert max(loads) - min(loads) <= max(work.values()) + PER_SLIDE_BYTES  # greedy's bound: one slide at most
    by_count = [sum(work[k] for k in sorted(work)[s::4]) for s in range(4)]  # what `entries[rank::world]` gave
    assert max(loads) < max(by_count)
    assert sorted(set(assign({k: 0 for k in work}, 4).values())) == [0, 1, 2, 3]  # missing files spread too


def test_a_run_records_each_slide_and_its_shard_and_status_merges_them(tmp_path):
    items = items_of(tmp_path / "in", {"a": 30, "b": 20, "c": 10, "d": 5})
    out = tmp_path / "out"
    for index in range(2):
        run = ShardRun("extract", out, Shard(index, 2), "run_summary.csv", COLUMNS)
        rows = run.run(run.share(items, "manifest.csv"), make_output)
        assert set(rows["shard"]) == {f"{index}/2"}
    status = run_status(out, "extract")
    assert status.complete and [s.state for s in status.shards] == ["finished", "finished"]
    summary = (out / "run_summary.csv").read_text().splitlines()
    assert summary[0] == "slide_id,status,tiles,error,shard" and len(summary) == 5
    throughput = (out / "extract_throughput.csv").read_text().splitlines()
    assert throughput[0].startswith("shard,host,state,wall_s,slides_done") and throughput[-1].startswith("total,")
    assert "tiles_per_s:a" in throughput[0] and "peak_rss_mb" in throughput[0]
    record = json.loads((out / "records" / "extract" / "slides" / "a.json").read_text())
    assert record["status"] == "done" and record["host"] and record["finished"] >= record["started"]
    assert "complete: every slide has its output" in status.render()


def test_status_names_missing_failed_interrupted_and_dead_shards_and_what_to_resubmit(tmp_path):
    items = items_of(tmp_path / "in", {f"s{i}": 10 * (i + 1) for i in range(8)})
    out = tmp_path / "out"

    def fail_s7(item: WorkItem, local) -> dict:
        failure = {"status": "failed", "error": "slide s7: unreadable"}
        return make_output(item, local) | (failure if item.key == "s7" else {})

    runs = [ShardRun("extract", out, Shard(i, 4), "run_summary.csv", COLUMNS) for i in range(4)]
    mine = [run.share(items, "m.csv") for run in runs]
    runs[0].run(mine[0], fail_s7)
    runs[1].run(mine[1], make_output)
    records = RunRecords(out, "extract")
    records.write_plan(runs[2].plan)  # shard 2 "died": its record says running, nobody holds its lock
    records.write_shard(Shard(2, 4), {"shard": "2/4", "state": "running", "started": "2026-01-01T00:00:00+00:00"})
    held = records.shard_lock(Shard(3, 4))  # shard 3 is running (this process holds its lock)
    held.acquire()
    records.write_shard(Shard(3, 4), {"shard": "3/4", "state": "running", "started": "2026-01-01T00:00:00+00:00"})
    try:
        status = run_status(out, "extract")
    finally:
        held.release()
    states = {str(s.shard): s.state for s in status.shards}
    assert states == {"0/4": "finished", "1/4": "finished", "2/4": "died", "3/4": "running"}
    shard_of = runs[0].plan.shards
    assert status.failed == [("s7", shard_of["s7"], "slide s7: unreadable")] and shard_of["s7"] == 0
    assert {slide for slide, _ in status.missing} == set(runs[0].plan.keys_of(2) + runs[0].plan.keys_of(3))
    assert status.resubmit == [0, 2]  # 0: a failed slide; 2: missing; 3 is still running
    text = status.render()
    assert "resubmit: sbatch --array=0,2 " in text and "--shard $SLURM_ARRAY_TASK_ID/4" in text
    assert "FAILED s7 (shard 0/4): slide s7: unreadable" in text and "ETA: not known yet" in text


def test_the_eta_is_a_running_shards_remaining_bytes_at_the_rate_of_its_finished_slides(tmp_path):
    items = items_of(tmp_path / "in", {"a": 3000, "b": 1000})  # one shard: a, then b
    out = tmp_path / "out"
    run = ShardRun("extract", out, Shard(0, 1), "run_summary.csv", COLUMNS)
    records = RunRecords(out, "extract")
    run.share(items, "m.csv")
    records.write_plan(run.plan)
    started = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)).isoformat(timespec="seconds")
    records.write_shard(Shard(0, 1), {"shard": "0/1", "state": "running", "started": started})
    records.write_slide("a", {"slide_id": "a", "status": "done", "finished": started})  # 3000 bytes in 30 s
    held = records.shard_lock(Shard(0, 1))
    held.acquire()
    try:
        status = run_status(out, "extract")
    finally:
        held.release()
    assert status.shards[0].eta_s == pytest.approx(10, abs=1.5)  # b: 1000 more bytes at 100 bytes/s
    assert re.search(r"ETA: about (9|10|11) s for the 1 running shard\(s\)", status.render())


def test_a_retry_follows_the_recorded_plan_and_an_automatic_shard_of_another_count_is_refused(tmp_path):
    items = items_of(tmp_path / "in", {"a": 40, "b": 30, "c": 20, "d": 10})
    out = tmp_path / "out"
    first = ShardRun("extract", out, Shard(0, 2), "run_summary.csv", COLUMNS)
    first.run(first.share(items, "m.csv"), make_output)
    (tmp_path / "in" / "d.bin").write_bytes(b"x" * 10**7)  # d now reads as the largest: a plan made now differs
    retry = ShardRun("extract", out, Shard(1, 2), "run_summary.csv", COLUMNS)
    assert [i.key for i in retry.share(items, "m.csv")] == first.plan.keys_of(1)
    resubmitted = Shard(0, 1, "SLURM array job 7 task 3")  # --array=3-3 of a 2-shard run read automatically
    with pytest.raises(ShardError, match=r"splits these slides into 2 shards.*--shard \$SLURM_ARRAY_TASK_ID/2"):
        ShardRun("extract", out, resubmitted, "run_summary.csv", COLUMNS).share(items, "m.csv")


def test_a_slide_redone_or_skipped_keeps_the_record_of_the_run_that_made_it(tmp_path):
    items = items_of(tmp_path / "in", {"a": 1})
    out = tmp_path / "out"
    run = ShardRun("extract", out, Shard(0, 1), "run_summary.csv", COLUMNS)
    run.run(run.share(items, "m.csv"), make_output)
    again = ShardRun("extract", out, Shard(0, 1), "run_summary.csv", COLUMNS)
    rows = again.run(again.share(items, "m.csv"), lambda item, local: {"slide_id": "a", "status": "skipped (valid)"})
    assert rows["status"].tolist() == ["skipped (valid)"]  # this run's row
    assert json.loads((out / "records/extract/slides/a.json").read_text())["status"] == "done"  # the record kept


RUN_SHARD = """
import sys, time
from pathlib import Path
from pathme.shards import Shard, ShardRun, WorkItem
folder = Path(sys.argv[1])
items = [WorkItem(k, folder / f"{k}.bin", folder / f"{k}.out") for k in "abc"]
def slow(item, local):
    item.target.write_text("x")
    print(item.key, flush=True)
    time.sleep(60 if item.key == "b" else 0)
    return {"slide_id": item.key, "status": "done"}
run = ShardRun("extract", folder / "out", Shard(0, 1), "run_summary.csv", ["slide_id", "status"])
run.run(run.share(items, "m.csv"), slow)
"""


def test_sigterm_stops_between_slides_and_records_the_shard_interrupted(tmp_path):
    items_of(tmp_path, {"a": 1, "b": 1, "c": 1})
    task = subprocess.Popen(
        [sys.executable, "-c", RUN_SHARD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert task.stdout.readline() == "a\n" and task.stdout.readline() == "b\n"  # on b now
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=30) != 0
    status = run_status(tmp_path / "out", "extract")
    assert [s.state for s in status.shards] == ["interrupted"]
    assert status.missing == [("b", 0), ("c", 0)] and status.resubmit == [0]  # a's record kept; b was not recorded


def test_the_cpu_budget_is_the_tasks_not_the_machines(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert cpu_budget() == 1 and reader_workers() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    every = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(every)})  # as taskset or a scheduler's cgroup pins a task
    try:
        assert cpu_budget() == 1  # the affinity mask's one CPU, whatever os.cpu_count() says
    finally:
        os.sched_setaffinity(0, every)
    assert cpu_budget() == len(every)


def test_staging_copies_ahead_and_removes_each_copy_after_use(tmp_path):
    items = items_of(tmp_path / "in", {"a": 1000, "b": 2000})
    stage = tmp_path / "stage"
    stage.mkdir()
    with Stager(stage) as stager:
        stager.expect([items[1].path])
        local = stager.local(items[0].path)
        assert local.parent.parent == stage and local.read_bytes() == items[0].path.read_bytes()
        stager.release(items[0].path)
        assert not local.exists()
        deadline = time.monotonic() + 10
        while not any("b.bin" in p.name for p in stager.folder.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)  # b is being copied (or is) though nobody asked for it yet: copied ahead, behind a
        ahead = stager.local(items[1].path)
        assert list(stager.folder.iterdir()) == [ahead] and ahead.read_bytes() == items[1].path.read_bytes()
    assert list(stage.iterdir()) == []  # everything removed when the run ends


def test_a_stage_folder_without_room_or_absent_is_one_line(tmp_path):
    with pytest.raises(StageError, match=r"--stage-dir .*absent: no such folder"):
        check_room(tmp_path / "absent", [1])
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(StageError, match=r"GB free, but staging this shard's largest slides \(2 at a time\)"):
        check_room(tmp_path, [free, free, 1])


def test_array_lists_read_as_slurm_writes_them():
    assert array_list([0, 2, 3, 4, 7]) == "0,2-4,7" and array_list([5]) == "5"
