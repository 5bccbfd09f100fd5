"""Encoding one slide: every region decoded once, its valid tiles fed to every expert, batches spanning regions.

Tiles of consecutive regions queue up until a batch of ``batch_size`` tiles is full; each batch goes through
every expert, and a region is written to the store as soon as all its valid tiles are encoded. Batches never
span slides, so a slide's features do not depend on which other slides a run (or a rank) holds.
Invalid tiles are not encoded; their feature rows stay zero and their validity flags say so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from pathme.encoders import Expert
from pathme.engines.region_loader import tile_validity
from pathme.shards.run import raise_if_stopped
from pathme.store import RegionStoreWriter
from pathme.wsi.regions import Region
from pathme.wsi.tiles import L0_ROWS, L1_ROWS, L2_ROW, TILES_PER_REGION


@dataclass
class _PendingRegion:
    """A region whose tiles are queued or being encoded."""

    index: int
    region: Region
    features: dict[str, np.ndarray]  # expert -> [273, D]
    remaining: int


@dataclass
class _TileQueue:
    """Valid tiles waiting for a full batch, with the region and row each came from."""

    tiles: list[torch.Tensor] = field(default_factory=list)
    owners: list[tuple[_PendingRegion, np.ndarray]] = field(default_factory=list)
    size: int = 0

    def add(self, pending: _PendingRegion, rows: np.ndarray, tiles: torch.Tensor) -> None:
        self.tiles.append(tiles)
        self.owners.append((pending, rows))
        self.size += len(rows)

    def take(self, count: int) -> tuple[torch.Tensor, list[tuple[_PendingRegion, np.ndarray]]]:
        """Remove the first ``count`` tiles; return them and, per piece, the region and rows they belong to."""
        tiles, owners, taken = [], [], 0
        while taken < count:
            chunk, (pending, rows) = self.tiles[0], self.owners[0]
            need = count - taken
            if len(rows) <= need:
                self.tiles.pop(0)
                self.owners.pop(0)
            else:
                self.tiles[0], self.owners[0] = chunk[need:], (pending, rows[need:])
                chunk, rows = chunk[:need], rows[:need]
            tiles.append(chunk)
            owners.append((pending, rows))
            taken += len(rows)
        self.size -= taken
        return torch.cat(tiles), owners


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU, where it is exact and reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class SlideTimes:
    """Where a slide's encoding time went, in seconds: waiting for the region readers, each expert's forward passes
    (their results copied back to the CPU, so a GPU's work is finished when its clock stops), writing the store."""

    tiles: int = 0
    read_s: float = 0.0
    encode_s: dict[str, float] = field(default_factory=dict)
    write_s: float = 0.0

    def record(self) -> dict[str, object]:
        """The figures as a slide's summary row holds them (:mod:`pathme.shards.throughput`)."""
        return {
            "tiles": self.tiles,
            "read_s": round(self.read_s, 3),
            "encode_s": round(sum(self.encode_s.values()), 3),
            "encode_s_by_expert": {name: round(seconds, 3) for name, seconds in self.encode_s.items()},
            "write_s": round(self.write_s, 3),
        }


def encode_batch(
    experts: Mapping[str, Expert], tiles: torch.Tensor, device: torch.device, times: SlideTimes | None = None
) -> dict[str, np.ndarray]:
    """Features of a batch of uint8 tiles [B, 256, 256, 3] from every expert, as float32 arrays [B, D]; each
    expert's seconds are added to ``times`` when given."""
    tiles = tiles.to(device, non_blocking=True)
    features = {}
    with torch.inference_mode(), _autocast(device):
        for name, expert in experts.items():
            clock = time.perf_counter()
            features[name] = expert(tiles).float().cpu().numpy()
            if times is not None:
                times.encode_s[name] = times.encode_s.get(name, 0.0) + time.perf_counter() - clock
    return features


def encode_regions(
    batches: Iterator[tuple[int, torch.Tensor]],
    regions: list[Region],
    experts: Mapping[str, Expert],
    writer: RegionStoreWriter,
    batch_size: int,
    device: torch.device,
    progress: tqdm | None = None,
) -> SlideTimes:
    """Encode the regions the loader yields and write each one once complete; return the number of tiles encoded
    and where the time went."""
    queue = _TileQueue()
    times = SlideTimes()

    def flush(count: int) -> None:
        tiles, owners = queue.take(count)
        features = encode_batch(experts, tiles, device, times)
        start = 0
        for pending, rows in owners:
            for name, values in features.items():
                pending.features[name][rows] = values[start : start + len(rows)]
            start += len(rows)
            pending.remaining -= len(rows)
            if pending.remaining == 0:
                clock = time.perf_counter()
                _write(writer, pending)
                times.write_s += time.perf_counter() - clock
                if progress is not None:
                    progress.update(1)
        times.tiles += len(tiles)

    while True:
        raise_if_stopped()  # a SIGTERM whose own exception was lost (pathme.shards.run)
        clock = time.perf_counter()
        index, stacked = next(batches, (None, None))
        times.read_s += time.perf_counter() - clock
        if index is None:
            break
        region = regions[index]
        rows = np.flatnonzero(tile_validity(region))
        pending = _PendingRegion(
            index, region, {name: np.zeros((TILES_PER_REGION, e.dim), np.float32) for name, e in experts.items()}, 0
        )
        pending.remaining = len(rows)
        queue.add(pending, rows, stacked[torch.from_numpy(rows)])
        while queue.size >= batch_size:
            flush(batch_size)
    if queue.size:
        flush(queue.size)
    return times


def _write(writer: RegionStoreWriter, pending: _PendingRegion) -> None:
    region = pending.region
    writer.write_region(
        pending.index,
        coords=(region.x, region.y),
        valid_l0=region.valid_l0,
        valid_l1=region.valid_l1,
        features={name: (f[L0_ROWS], f[L1_ROWS], f[L2_ROW]) for name, f in pending.features.items()},
    )
