"""Encoding one slide: every region decoded once, its valid tiles fed to every expert, batches spanning regions.

Tiles of consecutive regions queue up until a batch of ``batch_size`` tiles is full; each batch goes through
every expert, and a region is written to the store as soon as all its valid tiles are encoded. Batches never
span slides, so a slide's features do not depend on which other slides a run (or a rank) holds.
Invalid tiles are not encoded; their feature rows stay zero and their validity flags say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from pathme.encoders import Expert
from pathme.extract.loader import L0_ROWS, L1_ROWS, L2_ROW, TILES_PER_REGION, tile_validity
from pathme.store import RegionStoreWriter
from pathme.wsi.regions import Region


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


def encode_batch(experts: Mapping[str, Expert], tiles: torch.Tensor, device: torch.device) -> dict[str, np.ndarray]:
    """Features of a batch of uint8 tiles [B, 256, 256, 3] from every expert, as float32 arrays [B, D]."""
    tiles = tiles.to(device, non_blocking=True)
    with torch.inference_mode(), _autocast(device):
        return {name: expert(tiles).float().cpu().numpy() for name, expert in experts.items()}


def encode_regions(
    batches: Iterator[tuple[int, torch.Tensor]],
    regions: list[Region],
    experts: Mapping[str, Expert],
    writer: RegionStoreWriter,
    batch_size: int,
    device: torch.device,
    progress: tqdm | None = None,
) -> int:
    """Encode the regions the loader yields and write each one once complete; return the number of tiles encoded."""
    queue = _TileQueue()
    encoded = 0

    def flush(count: int) -> None:
        nonlocal encoded
        tiles, owners = queue.take(count)
        features = encode_batch(experts, tiles, device)
        start = 0
        for pending, rows in owners:
            for name, values in features.items():
                pending.features[name][rows] = values[start : start + len(rows)]
            start += len(rows)
            pending.remaining -= len(rows)
            if pending.remaining == 0:
                _write(writer, pending)
                if progress is not None:
                    progress.update(1)
        encoded += len(tiles)

    for index, stacked in batches:
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
    return encoded


def _write(writer: RegionStoreWriter, pending: _PendingRegion) -> None:
    region = pending.region
    writer.write_region(
        pending.index,
        coords=(region.x, region.y),
        valid_l0=region.valid_l0,
        valid_l1=region.valid_l1,
        features={name: (f[L0_ROWS], f[L1_ROWS], f[L2_ROW]) for name, f in pending.features.items()},
    )
