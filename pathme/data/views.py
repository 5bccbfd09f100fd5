"""Views of one region for self-distillation: full global grids, contiguous local windows, iBOT masks.

Why contiguous windows with their true grid positions: the reference code took random token subsets and gave
them 2-D positions, so a "local view" was no place on the slide (docs/method.md section 6). Here a local view is a
square window of the L0 (16 x 16) or L1 (4 x 4) raster, and every token keeps the (row, col) it has in the
region, so the positional embedding sees where it really is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pathme.data.masks import block_masks
from pathme.wsi.grid import L0_SIDE, L1_SIDE


@dataclass(frozen=True)
class ViewConfig:
    """How views are drawn (docs/method.md section 4: 8 local views of 6 x 6 L0 and 3 x 3 L1 tiles).

    ``num_local`` is split evenly: ``num_local // 2`` L0 windows and ``num_local // 2`` L1 windows, so it must be
    even. A window is drawn uniformly among those holding at least ``min_valid_local`` valid tiles; where none
    does, uniformly among those holding the most.
    """

    num_local: int = 8
    local_l0: int = 6
    local_l1: int = 3
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    min_valid_local: int = 1

    def __post_init__(self) -> None:
        if self.num_local < 0 or self.num_local % 2:
            raise ValueError(f"num_local must be an even number >= 0 (half L0, half L1), got {self.num_local}")
        if not 1 <= self.local_l0 <= L0_SIDE:
            raise ValueError(f"local_l0 must lie in 1..{L0_SIDE}, got {self.local_l0}")
        if not 1 <= self.local_l1 <= L1_SIDE:
            raise ValueError(f"local_l1 must lie in 1..{L1_SIDE}, got {self.local_l1}")
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must lie in [0, 1], got {self.mask_probability}")
        low, high = self.mask_ratio
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"mask_ratio must be (low, high) with 0 <= low <= high <= 1, got {self.mask_ratio}")
        if self.min_valid_local < 0:
            raise ValueError(f"min_valid_local must be >= 0, got {self.min_valid_local}")


def grid_positions(side: int) -> Tensor:
    """(row, col) of each raster index of a ``side`` x ``side`` grid, long [side * side, 2]."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def _choice(candidates: Tensor, generator: torch.Generator) -> int:
    """One of the True positions of a flat bool tensor, uniformly."""
    options = candidates.nonzero().reshape(-1)
    return int(options[torch.randint(len(options), (), generator=generator)])


def window_indices(valid: Tensor, side: int, window: int, min_valid: int, generator: torch.Generator) -> Tensor:
    """Raster indices (row-major, long [window * window]) of a random ``window`` x ``window`` block of the grid."""
    counts = valid.reshape(side, side).float().unfold(0, window, 1).unfold(1, window, 1).sum(dim=(-2, -1))
    counts = counts.reshape(-1)
    enough = counts >= min_valid
    start = _choice(enough if enough.any() else counts == counts.max(), generator)
    top, left = divmod(start, side - window + 1)
    offsets = torch.arange(window)
    return ((top + offsets)[:, None] * side + (left + offsets)[None, :]).reshape(-1)


def _local_views(
    tokens: Tensor, valid: Tensor, side: int, window: int, count: int, min_valid: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` windows: tokens [count, window**2, D], positions [count, window**2, 2], validity [count, window**2]."""
    if count == 0:
        indices = torch.zeros(0, window * window, dtype=torch.long)
    else:
        indices = torch.stack([window_indices(valid, side, window, min_valid, generator) for _ in range(count)])
    return tokens[indices], grid_positions(side)[indices], valid[indices]


def _student_masks(
    valid_l0: Tensor, valid_l1: Tensor, config: ViewConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """iBOT masks of both global grids: for ``mask_probability`` of the samples, one ratio drawn for both scales."""
    if torch.rand((), generator=generator).item() >= config.mask_probability:
        return torch.zeros_like(valid_l0), torch.zeros_like(valid_l1)
    low, high = config.mask_ratio
    ratio = low + (high - low) * torch.rand((), generator=generator).item()
    return block_masks(valid_l0, L0_SIDE, ratio, generator), block_masks(valid_l1, L1_SIDE, ratio, generator)


def make_views(sample: Mapping[str, Tensor], config: ViewConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """The views of one region (a :class:`~pathme.data.distill_dataset.RegionStoreDataset` item).

    Returns ``global_l0`` [256, A], ``global_l0_pos`` [256, 2] (row, col), ``global_l0_valid`` [256], the same for
    ``global_l1`` with 16 tokens, ``mask_l0`` [256] and ``mask_l1`` [16] (iBOT masks of the student's global views,
    all False for the unmasked share), ``local_l0`` [n, 36, A] with ``local_l0_pos`` [n, 36, 2] and
    ``local_l0_valid`` [n, 36], the same for ``local_l1`` [n, 9, A], ``kd`` [256, B], and ``index`` when given.
    """
    valid_l0, valid_l1 = sample["l0_valid"], sample["l1_valid"]
    mask_l0, mask_l1 = _student_masks(valid_l0, valid_l1, config, generator)
    half, low = config.num_local // 2, config.min_valid_local
    local_l0 = _local_views(sample["l0"], valid_l0, L0_SIDE, config.local_l0, half, low, generator)
    local_l1 = _local_views(sample["l1"], valid_l1, L1_SIDE, config.local_l1, half, low, generator)
    views = {
        "global_l0": sample["l0"],
        "global_l0_pos": grid_positions(L0_SIDE),
        "global_l0_valid": valid_l0,
        "global_l1": sample["l1"],
        "global_l1_pos": grid_positions(L1_SIDE),
        "global_l1_valid": valid_l1,
        "mask_l0": mask_l0,
        "mask_l1": mask_l1,
        "kd": sample["kd"],
    }
    for name, (tokens, positions, valid) in (("local_l0", local_l0), ("local_l1", local_l1)):
        views.update({name: tokens, f"{name}_pos": positions, f"{name}_valid": valid})
    if "index" in sample:
        views["index"] = sample["index"]
    return views


def collate_regions(samples: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples (regions or their views) key by key into a batch with a leading batch dimension."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    keys = set(samples[0])
    for sample in samples[1:]:
        if set(sample) != keys:
            raise ValueError(f"samples have different keys: {sorted(keys)} vs {sorted(sample)}")
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
