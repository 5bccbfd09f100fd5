"""A real single-node SLURM (tests/slurm_cluster.py): what an array job's tasks see, what scancel of one task does,
and what the sbatch templates of scripts/slurm/ run (with stand-ins for pathme and torchrun). Skipped without root
and Debian's SLURM and munge (sudo scripts/install_test_packages.sh)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, slurm_cluster

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slurm

KILL_WAIT = 5

# one array task: what SLURM told it, its CPUs, and when it ran
TASK = """\
import json, os, sys, time
start = time.time()
names = ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
         "SLURM_ARRAY_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_JOB_ID"]
record = {name: os.environ.get(name) for name in names}
record["affinity"] = len(os.sched_getaffinity(0))
time.sleep(float(sys.argv[2]))
record.update(start=start, end=time.time())
out = os.path.join(sys.argv[1], "task_%s.json" % os.environ["SLURM_ARRAY_TASK_ID"])
with open(out + ".part", "w") as f:
    json.dump(record, f)
os.replace(out + ".part", out)
"""

# task 2 (with a child process, as a reader pool) waits for scancel and writes what each received; the others end by
# themselves. The handler waits for the child before exiting: once the batch script's process exits, slurmstepd
# SIGKILLs whatever is left of its process group at once, KillWait or not
CANCELLED = """\
import json, os, signal, subprocess, sys, time
task, out = os.environ["SLURM_ARRAY_TASK_ID"], sys.argv[1]
child = len(sys.argv) > 2
name = "child" if child else "main"
def on_term(signum, frame):
    with open(os.path.join(out, "term_%s_%s.json" % (task, name)), "w") as f:
        json.dump({"signal": signum, "at": time.time(), "pid": os.getpid(), "pgid": os.getpgid(0)}, f)
    if not child and task == "2":
        worker.wait(timeout=10)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
if child:
    open(os.path.join(out, "child_ready"), "w").close()
    time.sleep(60)
if task == "2":
    worker = subprocess.Popen([sys.executable, __file__, out, "child"])
    while not os.path.exists(os.path.join(out, "child_ready")):
        time.sleep(0.01)
    open(os.path.join(out, "ready_2"), "w").close()
    time.sleep(60)
time.sleep(1)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with slurm_cluster(tmp_path_factory.mktemp("cluster"), cpus=4, kill_wait=KILL_WAIT) as running:
        yield running


def batch_script(python_source: str, folder: Path, *args: str) -> str:
    """A bash batch script (as pathme's sbatch templates are) that execs ``python_source`` with this Python."""
    program = folder / "task.py"
    program.write_text(python_source)
    quoted = " ".join(f'"{arg}"' for arg in args)
    return f'#!/bin/bash\nexec "{sys.executable}" "{program}" {quoted}\n'


def test_array_tasks_run_at_once_and_see_their_shard(cluster: SlurmCluster, tmp_path: Path):
    script = batch_script(TASK, tmp_path, str(tmp_path), "1.0")
    job = cluster.sbatch(script, "--array=0-3", "--cpus-per-task=1", f"--output={tmp_path}/%A_%a.out")
    states = cluster.wait(job, timeout=30)

    assert sorted(states) == [0, 1, 2, 3]
    assert all((s.state, s.exit_code, s.signal) == ("COMPLETED", 0, 0) for s in states.values()), states
    records = {task: json.loads((tmp_path / f"task_{task}.json").read_text()) for task in range(4)}
    for task, record in records.items():
        assert record["SLURM_ARRAY_TASK_ID"] == str(task)
        assert record["SLURM_ARRAY_TASK_COUNT"] == "4"
        assert (record["SLURM_ARRAY_TASK_MIN"], record["SLURM_ARRAY_TASK_MAX"]) == ("0", "3")
        assert record["SLURM_ARRAY_JOB_ID"] == job
        assert record["SLURM_CPUS_PER_TASK"] == "1"
        # each task is a job of its own: SLURM_JOB_ID is the task's, not the array's
        assert record["SLURM_JOB_ID"] == states[task].job_id
        # task/none binds nothing: a task may run on every CPU the daemons could, whatever --cpus-per-task says
        assert record["affinity"] == len(os.sched_getaffinity(0))
    assert len({record["SLURM_JOB_ID"] for record in records.values()}) == 4
    # all four ran at once on the 4-CPU node: each started before any ended
    assert max(r["start"] for r in records.values()) < min(r["end"] for r in records.values())


def test_scancel_of_one_array_task_sends_sigterm_to_its_process_group(cluster: SlurmCluster, tmp_path: Path):
    script = batch_script(CANCELLED, tmp_path, str(tmp_path))
    job = cluster.sbatch(script, "--array=0-3", "--cpus-per-task=1", f"--output={tmp_path}/%A_%a.out")
    deadline = time.monotonic() + 20
    while not (tmp_path / "ready_2").exists():
        assert time.monotonic() < deadline, f"task 2 never started: {cluster.squeue(job)}"
        time.sleep(0.05)
    cancelled_at = time.time()
    cluster.scancel(f"{job}_2")
    states = cluster.wait(job, timeout=30)

    assert {task: s.state for task, s in states.items()} == {
        0: "COMPLETED",
        1: "COMPLETED",
        2: "CANCELLED",
        3: "COMPLETED",
    }
    assert all((states[task].exit_code, states[task].signal) == (0, 0) for task in (0, 1, 3))
    main, child = (json.loads((tmp_path / f"term_2_{name}.json").read_text()) for name in ("main", "child"))
    # SIGTERM to the whole process group (proctrack/pgid): the task's process and its child, well before the
    # SIGKILL that would come KillWait seconds later
    assert main["signal"] == child["signal"] == signal.SIGTERM
    assert main["pgid"] == child["pgid"] == main["pid"]
    assert max(main["at"], child["at"]) - cancelled_at < KILL_WAIT
    # the task's process ended by itself after its handler (not killed), and the job is still CANCELLED
    assert (states[2].exit_code, states[2].signal) == (0, 0)
    assert not any(tmp_path.glob("term_[013]_*.json"))


# stands in for pathme or torchrun in the sbatch templates: records its arguments, environment and process group
RECORDER = """\
import json, os, sys
out = os.environ["RECORD_DIR"]
name = "%s_%s" % (os.path.basename(sys.argv[0]), os.environ.get("SLURM_ARRAY_TASK_ID", os.environ["SLURM_JOB_ID"]))
keep = ("SRUN_CPUS_PER_TASK",)
with open(os.path.join(out, name + ".json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keep}, "pid": os.getpid(),
               "pgid": os.getpgid(0)}, f)
"""


def recorder(folder: Path, name: str) -> Path:
    """An executable ``name`` in ``folder`` that runs :data:`RECORDER` with this Python."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{RECORDER}")
    path.chmod(0o755)
    return path


def test_extract_template_execs_pathme_with_the_shard(cluster: SlurmCluster, tmp_path: Path):
    template = REPO / "scripts" / "slurm" / "extract_array.sbatch"
    env = dict(cluster.env, PATHME=str(recorder(tmp_path, "pathme")), RECORD_DIR=str(tmp_path))
    # TMPDIR passes on when the node has that folder (slurmstepd makes it /tmp otherwise)
    env.update(MANIFEST="cohort/manifest.csv", OUT="features", TMPDIR=str(tmp_path))
    # the template's resources, cut to the test node's 4 CPUs and 1000 MB; a first submission and a rerun of two
    # of its 8 shards
    small = ["--cpus-per-task=1", "--mem=100M", f"--output={tmp_path}/%A_%a.out"]
    first = cluster.sbatch(template, "--array=0-1", *small, script_args=["--experts", "uni"], env=env)
    rerun = cluster.sbatch(template, "--array=3,7", *small, env=dict(env, SHARDS="8"))
    for job in (first, rerun):
        assert all(s.state == "COMPLETED" for s in cluster.wait(job, timeout=30).values())

    base = ["extract", "--manifest", "cohort/manifest.csv", "--output-dir", "features", "--stage-dir", str(tmp_path)]
    for task, extra in (
        (0, ["--experts", "uni"]),
        (1, ["--experts", "uni"]),
        (3, ["--shard", "3/8"]),
        (7, ["--shard", "7/8"]),
    ):
        record = json.loads((tmp_path / f"pathme_{task}.json").read_text())
        assert record["argv"] == base + extra
        # exec'd: pathme is the batch script's process, so it leads the process group and gets the KillWait
        assert record["pgid"] == record["pid"]


def test_distill_template_starts_one_torchrun_per_node(cluster: SlurmCluster, tmp_path: Path):
    template = REPO / "scripts" / "slurm" / "distill_multinode.sbatch"
    env = dict(cluster.env, RECORD_DIR=str(tmp_path), DATASET="features", OUT="run", NPROC_PER_NODE="2")
    env.update(PATHME=str(recorder(tmp_path, "pathme")), TORCHRUN=str(recorder(tmp_path, "torchrun")))
    # one node (the test cluster's), its GPUs left out (the test node has none)
    args = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--mem=100M", f"--output={tmp_path}/%j.out"]
    job = cluster.sbatch(template, *args, script_args=["--tiny"], env=env)
    assert cluster.wait(job, timeout=30)[None].state == "COMPLETED", (tmp_path / f"{job}.out").read_text()

    record = json.loads((tmp_path / f"torchrun_{job}.json").read_text())
    port = 29500 + int(job) % 1000
    assert record["argv"] == [
        "--nnodes=1",
        "--nproc-per-node=2",
        f"--rdzv-id={job}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={cluster.node}:{port}",
        str(tmp_path / "pathme"),
        "distill",
        "--multi-gpu",
        "--dataset-dir",
        "features",
        "--output-dir",
        "run",
        "--tiny",
    ]
    # srun is asked again for the job's CPUs per task: since 22.05 it does not take sbatch's --cpus-per-task
    assert record["env"]["SRUN_CPUS_PER_TASK"] == "2"
