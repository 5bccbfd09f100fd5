"""A real single-node SLURM for tests: munged, slurmctld and slurmd from the system's packages, started by hand in a
test's folder and stopped (with every process of their jobs) when the test is done.

    with slurm_cluster(tmp_path) as cluster:
        job = cluster.sbatch("#!/bin/bash\\necho $SLURM_ARRAY_TASK_ID\\n", "--array=0-3", "--output=out_%a.txt")
        states = cluster.wait(job)          # {0: TaskState(task=0, state="COMPLETED", exit_code=0, signal=0), ...}

What it needs: root (slurmd starts the jobs' steps as their user) and the binaries of Debian's slurmctld, slurmd,
slurm-client and munge (``sudo scripts/install_test_packages.sh``); without them :func:`slurm_cluster` skips the test
(``PATHME_REQUIRE_SLURM=1`` turns that skip into a failure, for a machine that must run these tests). Nothing of
the system's SLURM or munge is used or touched: the munge key, munged's socket, slurm.conf, the state, spool and log
folders are the test's own, on ports chosen free, so it runs beside a system munged or slurmd.

The cluster is one node named as the machine (``hostname -s``, addressed as 127.0.0.1, so the name need not resolve)
in one partition ``debug``, with ``cpus`` CPUs (default 4) whatever the hardware has (``SlurmdParameters=
config_overrides``), so four one-CPU array tasks run at once even on a 2-core machine. ``select/cons_tres`` with
``CR_CPU`` lets jobs share the node by CPU; memory is not a consumable. ``TaskPlugin=task/none`` binds nothing: a
task's ``os.sched_getaffinity`` is the whole machine, and ``SLURM_CPUS_PER_TASK`` is the only sign of its share.
``ProctrackType=proctrack/pgid`` tracks a job by the process group of its batch script, which scancel signals: the
process group gets SIGCONT then SIGTERM, and SIGKILL ``kill_wait`` seconds later, or at once when the batch script's
own process has ended (a bash script that runs Python without ``exec`` dies of the SIGTERM, and its Python is
SIGKILLed in the middle of its SIGTERM handler). ``batch_sched_delay=0`` starts a submitted job within about a
second (the first, about 3 s after slurmctld starts, when its scheduler first runs). There is no accounting (no
slurmdbd, no sacct): a job's final states come from ``scontrol show job`` while slurmctld still holds its records
(``MinJobAge``) and from the job-completion log (``jobcomp/filetxt``, which keeps them for good but writes a
cancelled job's record at the cancel, before its processes end, so with exit code 0:0).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "install them with: sudo scripts/install_test_packages.sh"
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("munge", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
FAKE_GPU_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
# scontrol's JobState of a job whose processes are gone and which will not run again
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
# the environment variables by which a process inside a SLURM job knows it: never passed on to this cluster's clients
_INHERITED_SLURM = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SCANCEL_", "SINFO_")
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class TaskState:
    """How one job, or one task of an array job, ended: ``state`` as scontrol words it (``COMPLETED``,
    ``CANCELLED``, ``FAILED``, ...), the batch script's ``exit_code`` and the ``signal`` that killed it (0: none).
    ``task`` is the array task id (None for a job that is not an array); ``job_id`` the task's own job id, which
    is ``SLURM_JOB_ID`` inside it (``SLURM_ARRAY_JOB_ID`` is the array's)."""

    task: int | None
    job_id: str
    state: str
    exit_code: int
    signal: int


def _skip(reason: str) -> None:
    """Skip the test for ``reason`` (a one-line sentence), or fail it where ``PATHME_REQUIRE_SLURM=1``."""
    if os.environ.get("PATHME_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (PATHME_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(reason)


def _find_binaries() -> dict[str, str]:
    """The path of every daemon and client the cluster runs; skips the test when one is missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    found = {name: shutil.which(name, path=path) for name in (*DAEMONS, *CLIENTS)}
    missing = sorted(name for name, where in found.items() if where is None)
    if missing:
        _skip(f"SLURM test cluster: {' '.join(missing)} not installed; {INSTALL_HINT}")
    return {name: str(where) for name, where in found.items()}


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that nothing listens on now (the kernel's choice, released at once)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _log_tail(logs: Path, name: str) -> str:
    """The last error line of a daemon (its last line when none says error), on one line: from its log file, or from
    its stdout and stderr (``<name>.out``) when it failed before it opened its log."""
    for path in (logs / f"{name}.log", logs / f"{name}.out"):
        with suppress(OSError):
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
            if lines:
                return (errors or lines)[-1]
    return f"nothing in {logs}/{name}.log or {name}.out"


def _parse_records(text: str) -> list[dict[str, str]]:
    """``KEY=VALUE`` records, one a line (``scontrol show job -o``, the jobcomp/filetxt log)."""
    return [dict(_FIELD.findall(line)) for line in text.splitlines() if line.strip()]


def _task_state(record: dict[str, str]) -> TaskState:
    task = record.get("ArrayTaskId")
    exit_code, _, killed_by = record.get("ExitCode", "0:0").partition(":")
    return TaskState(
        task=int(task) if task is not None else None,
        job_id=record["JobId"],
        state=record["JobState"],
        exit_code=int(exit_code or 0),
        signal=int(killed_by or 0),
    )


class SlurmCluster:
    """A running single-node cluster (made by :func:`slurm_cluster`): its clients, run with :attr:`env`."""

    def __init__(self, root: Path, conf: Path, node: str, cpus: int, env: dict[str, str], jobcomp: Path) -> None:
        self.root = root
        """the test's folder of the cluster: slurm.conf, state/, log/, jobcomp.txt; the default working folder"""
        self.conf = conf
        self.node = node
        self.cpus = cpus
        self.env = env
        """the environment for this cluster's clients: the caller's, with ``SLURM_CONF`` set and no other SLURM_*"""
        self.jobcomp = jobcomp

    def run(self, *argv: str, check: bool = True, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM client (``sinfo``, ``srun``, ...) against this cluster, in :attr:`root` with :attr:`env`
        (``cwd=``, ``env=`` and other keywords of subprocess.run change that); its output as text."""
        kwargs.setdefault("cwd", self.root)
        kwargs.setdefault("env", self.env)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def sbatch(
        self,
        script: str | os.PathLike,
        *args: str,
        script_args: Sequence[str] = (),
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Submit ``script`` (a path, or the script's text as a str) with sbatch's ``args`` and the script's own
        ``script_args``; its job id (for an array, the array's: ``SLURM_ARRAY_JOB_ID``). ``cwd``: the folder sbatch
        runs in, the job's working folder (default :attr:`root`); ``env``: sbatch's environment, which the job gets
        (default :attr:`env`)."""
        where = Path(cwd) if cwd is not None else self.root
        environment = dict(env) if env is not None else self.env
        if isinstance(script, os.PathLike):
            argv = ("sbatch", "--parsable", *args, os.fspath(script), *script_args)
            result = self.run(*argv, cwd=where, env=environment)
        else:  # sbatch reads the script from stdin when it is given no file
            if script_args:
                raise ValueError("script_args need the script as a file (sbatch reads a script on stdin without them)")
            result = self.run("sbatch", "--parsable", *args, input=script, cwd=where, env=environment)
        return result.stdout.strip().split(";")[0]

    def squeue(self, job: str) -> dict[str, str]:
        """The tasks of ``job`` slurmctld holds, pending to ended (until ``MinJobAge``), by squeue's id (``7_2``;
        a still pending rest of an array as ``7_[1-3]``) -> state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...)."""
        result = self.run("squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%i %T", check=False)
        rows = (line.split() for line in result.stdout.splitlines() if line.strip())
        return {row[0]: row[1] for row in rows if len(row) == 2}

    def scancel(self, job: str, *args: str) -> None:
        """scancel ``job`` (``7``, or one array task: ``7_2``) with scancel's ``args`` (e.g. ``--signal=USR1``)."""
        self.run("scancel", *args, job)

    def show_job(self, job: str) -> list[dict[str, str]] | None:
        """``scontrol show job -o`` of ``job`` as one dict a record (an array's tasks, and its still pending rest
        with an ``ArrayTaskId`` such as ``1-3``); None when slurmctld no longer knows the job."""
        result = self.run("scontrol", "--oneliner", "show", "job", job, check=False)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return None
            raise RuntimeError(f"scontrol show job {job} exited {result.returncode}: {result.stderr.strip()}")
        return _parse_records(result.stdout)

    def completed(self, job: str) -> dict[int | None, TaskState]:
        """The job-completion log's records of ``job`` (of each task of an array) by task id: kept for good, but a
        cancelled task's record is written at the cancel, so its exit code there is 0:0."""
        text = self.jobcomp.read_text() if self.jobcomp.exists() else ""
        records = [r for r in _parse_records(text) if job in (r.get("ArrayJobId"), r.get("JobId"))]
        return {state.task: state for state in map(_task_state, records)}

    def wait(self, job: str, timeout: float = 60, poll: float = 0.2) -> dict[int | None, TaskState]:
        """Wait until no task of ``job`` is pending, running or completing (its processes all gone); how each
        ended, by array task id (None for a job that is not an array). Raises TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.show_job(job)
            if records is None:  # slurmctld purged it (MinJobAge): the job-completion log has it
                return self.completed(job)
            ended = all(r.get("JobState") in FINAL_STATES and (r.get("ArrayTaskId") or "0").isdigit() for r in records)
            if ended:
                return {state.task: state for state in map(_task_state, records)}
            if time.monotonic() > deadline:
                states = {r.get("ArrayTaskId", r.get("JobId")): r.get("JobState") for r in records}
                raise TimeoutError(f"job {job} still not ended after {timeout} s: {states}")
            time.sleep(poll)


def _slurm_conf(
    root: Path,
    short: Path,
    node: str,
    ports: list[int],
    *,
    cpus: int,
    memory_mb: int,
    gpus: int,
    task_plugin: str,
    kill_wait: int,
    min_job_age: int,
) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""\
# a single-node test cluster (tests/slurm_cluster.py)
ClusterName=pathmetest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={short}/munge/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={short}/spool
SlurmctldPidFile={short}/slurmctld.pid
SlurmdPidFile={short}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin={task_plugin}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={kill_wait}
MinJobAge={min_job_age}
InactiveLimit=0
Waittime=0
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _marked_processes(marker: str) -> set[int]:
    """The processes whose environment holds ``marker`` (``NAME=value``), and all their descendants."""
    needle = b"\0" + marker.encode() + b"\0"
    parents: dict[int, int] = {}
    marked: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        with suppress(OSError):
            stat = (entry / "stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if needle in b"\0" + (entry / "environ").read_bytes():
                marked.add(pid)
    found = set(marked)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    found.discard(os.getpid())
    return found


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@contextmanager
def slurm_cluster(
    tmp_path: Path,
    cpus: int = 4,
    memory_mb: int = 1000,
    gpus: int = 0,
    task_plugin: str = "task/none",
    kill_wait: int = 5,
    min_job_age: int = 300,
    start_timeout: float = 30,
) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd for a one-node cluster of ``cpus`` CPUs under ``tmp_path``/slurm, wait until
    the node is idle, yield a :class:`SlurmCluster`, and on the way out (an exception included) kill every process
    of its jobs and stop the daemons. ``kill_wait``: seconds between scancel's SIGTERM and SIGKILL (``KillWait``);
    ``min_job_age``: seconds slurmctld keeps an ended job's record (``MinJobAge``); ``gpus``: GPUs in name only (at
    most 4), for jobs that ask for some; ``task_plugin="task/affinity"`` binds each task to its CPUs, which works
    only for CPUs the machine has (``cpus`` at most its core count). Skips the test (see the module) when it is not
    root, a binary is missing, or a daemon does not start."""
    if os.geteuid() != 0:
        _skip(f"SLURM test cluster: needs root (slurmd runs the jobs), and SLURM and munge; {INSTALL_HINT}")
    binaries = _find_binaries()
    root = tmp_path / "slurm"
    for sub in ("state", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # unix sockets (munged's, slurmstepd's in the spool folder) must have paths under 108 bytes, which a test's
    # tmp_path can exceed: they go in a short folder of /tmp, which munged also wants executable by all
    short = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    short.chmod(0o755)
    (short / "munge").mkdir(mode=0o755)
    (short / "spool").mkdir(mode=0o755)
    key = short / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)

    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(
        _slurm_conf(
            root,
            short,
            node,
            _free_ports(2),
            cpus=cpus,
            memory_mb=memory_mb,
            gpus=gpus,
            task_plugin=task_plugin,
            kill_wait=kill_wait,
            min_job_age=min_job_age,
        )
    )
    # gpus: that many GPUs in name only, for sbatch --gres=gpu:N and --gpus-*: gres/gpu ignores a bare Count, so
    # each is a harmless character device (nothing constrains devices here: no cgroup)
    if gpus > len(FAKE_GPU_DEVICES):
        raise ValueError(f"gpus={gpus}: at most {len(FAKE_GPU_DEVICES)}")
    lines = [f"NodeName={node} Name=gpu File={device}\n" for device in FAKE_GPU_DEVICES[:gpus]]
    (root / "gres.conf").write_text("".join(lines))
    # every process of the cluster has it: the daemons (their environment), slurmstepd (slurmd's), and each job's,
    # which slurmstepd sets even under sbatch --export=NONE
    marker = f"SLURM_CONF={conf}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_SLURM)}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root, conf, node, cpus, env, root / "jobcomp.txt")

    daemons: dict[str, subprocess.Popen] = {}

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (root / "log" / f"{name}.out").open("wb")
        process = subprocess.Popen(
            [binaries[name], *args],
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() takes slurmctld's slurmscriptd with it
        )
        log.close()
        daemons[name] = process
        return process

    def wait_until(ready, what: str, watched: dict[str, subprocess.Popen]) -> None:
        """Poll ``ready`` until it holds; skip when a watched daemon exits or ``start_timeout`` passes."""
        deadline = time.monotonic() + start_timeout
        while not ready():
            for name, process in watched.items():
                if process.poll() is not None:
                    tail = _log_tail(root / "log", name)
                    _skip(f"SLURM test cluster: {name} exited {process.returncode} at start: {tail}")
            if time.monotonic() > deadline:
                logs = "; ".join(f"{name}: {_log_tail(root / 'log', name)}" for name in watched)
                _skip(f"SLURM test cluster: {what} within {start_timeout} s ({logs})")
            time.sleep(0.1)

    def munge_works() -> bool:
        sock = short / "munge" / "munge.sock"
        if not sock.exists():
            return False
        return subprocess.run([binaries["munge"], "-S", str(sock), "-n"], capture_output=True).returncode == 0

    def node_idle() -> bool:
        result = cluster.run("sinfo", "--noheader", f"--nodes={node}", "--format=%T %E", check=False, timeout=10)
        state, _, reason = result.stdout.strip().partition(" ")
        if state.startswith(("inval", "drain")):  # slurmctld refused the node's registration: no point waiting
            _skip(f"SLURM test cluster: node {node} is {state}: {reason}")
        return state == "idle"

    try:
        munged = start(
            "munged",
            "--foreground",
            f"--socket={short}/munge/munge.sock",
            f"--key-file={key}",
            f"--log-file={root}/log/munged.log",
            f"--pid-file={short}/munge/munged.pid",
            f"--seed-file={short}/munge/munged.seed",
        )
        wait_until(munge_works, "munged did not answer", {"munged": munged})
        slurmctld = start("slurmctld", "-D", "-f", str(conf))
        slurmd = start("slurmd", "-D", "-f", str(conf), "-N", node)
        wait_until(
            node_idle, f"node {node} did not become idle", {"slurmctld": slurmctld, "slurmd": slurmd, "munged": munged}
        )
        yield cluster
    finally:
        _stop(daemons, marker)
        shutil.rmtree(short, ignore_errors=True)


def _stop(daemons: dict[str, subprocess.Popen], marker: str) -> None:
    """Stop slurmctld (no more scheduling), then slurmd (no more job launches), then kill every process of the jobs
    (slurmstepd and all below it, frozen with SIGSTOP first so none forks past the kill), then stop munged. A daemon
    gets SIGTERM, and SIGKILL after 5 s."""
    for name in ("slurmctld", "slurmd"):
        if name in daemons:
            _terminate(daemons[name])
    groups = {process.pid for process in daemons.values()}  # each daemon leads its group (start_new_session)
    for _ in range(20):
        jobs = _job_processes(marker, groups)
        if not jobs:
            break
        _kill(jobs, signal.SIGSTOP)
        jobs |= _job_processes(marker, groups)
        _kill(jobs, signal.SIGKILL)
        time.sleep(0.05)
    for process in daemons.values():
        _terminate(process)


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group, SIGKILL 5 s later; reaped."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _job_processes(marker: str, daemon_groups: set[int]) -> set[int]:
    """The live processes of the jobs: those marked, and their descendants, outside the daemons' process groups."""
    found = set()
    for pid in _marked_processes(marker):
        with suppress(ProcessLookupError):
            if os.getpgid(pid) not in daemon_groups and not Path(f"/proc/{pid}/stat").read_text().count(") Z "):
                found.add(pid)
    return found
