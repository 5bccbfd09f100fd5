"""The one device choice (pathme.device.pick_device) and rank/world from ignite.distributed."""

from __future__ import annotations

from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pathme.device import pick_device


def test_a_named_device_is_taken_as_named():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # named, not checked against the machine
    assert pick_device(torch.device("meta")) == torch.device("meta")
    with pytest.raises(RuntimeError):
        pick_device("gpu0")


def test_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu") and pick_device("") == torch.device("cpu")


def test_gpu_zero_for_a_single_process_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun without a process group: one process, no sharding
    assert pick_device() == torch.device("cuda", 0)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo processes as torchrun starts them (LOCAL_RANK set), CUDA faked present."""
    import os

    os.environ["LOCAL_RANK"] = str(rank)
    torch.cuda.is_available = lambda: True
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        seen = {"rank": idist.get_rank(), "world": idist.get_world_size(), "device": str(pick_device())}
        torch.save(seen, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rank_world_and_device_of_each_process_of_a_two_process_group(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"{rank}.pt") == {"rank": rank, "world": 2, "device": f"cuda:{rank}"}


def test_rank_and_world_of_a_process_without_a_group():
    assert not dist.is_initialized()
    assert (idist.get_rank(), idist.get_world_size()) == (0, 1)
