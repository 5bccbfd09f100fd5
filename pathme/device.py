"""The one device choice of every stage, bundle config and the deploy app."""

from __future__ import annotations

import os

import ignite.distributed as idist
import torch


def pick_device(named: torch.device | str | None = None) -> torch.device:
    """The device ``named`` (``"cpu"``, ``"cuda:1"``, a ``torch.device``) when given, else this process's GPU when
    CUDA is present, else the CPU.

    Under torchrun with a process group (the bundles' ``multi_gpu_*.json``) each process takes the GPU of its local
    rank (``ignite.distributed.get_local_rank``: ``LOCAL_RANK``), so the processes of one node never share a GPU; a
    single process takes GPU 0. Apple's MPS is never chosen by default; name it to use it. Inside a process group
    of more than one process, the first call to ``ignite.distributed`` is a collective (Ignite counts the processes
    per node), so every rank makes it. Raises RuntimeError for a name torch does not know.
    """
    if named:
        return torch.device(named)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", idist.get_local_rank())


def cpu_budget() -> int:
    """The CPUs this process may use: those of its affinity mask (what a scheduler's cgroup or ``taskset`` gives),
    and no more than ``SLURM_CPUS_PER_TASK`` when SLURM sets it, which it does not always enforce; never the
    machine's core count when the task was given fewer."""
    cpus = len(os.sched_getaffinity(0))
    given = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    return max(1, min(cpus, int(given))) if given.isdigit() else cpus


def reader_workers() -> int:
    """Default region-reading processes of extraction: the CPU budget less one for the process that encodes."""
    return max(1, cpu_budget() - 1)


def decode_threads(readers: int) -> int:
    """Threads each of ``readers`` region-reading processes decodes and resamples on: the CPU budget less one for the
    process that encodes, shared among them (all of it when the encoding process reads, ``readers`` 0)."""
    return cpu_budget() if readers == 0 else max(1, (cpu_budget() - 1) // readers)
