"""The one device choice of every stage, bundle config and the deploy app."""

from __future__ import annotations

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
