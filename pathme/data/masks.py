"""iBOT block masks on a token grid that never mask a missing tile.

Why blocks: masking whole rectangles (as BEiT and iBOT do) forces the student to predict tokens from context
further away than a neighbour; why validity: an invalid tile has no feature, so masking it would ask the
student to predict nothing and would shrink the real mask ratio.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MIN_ASPECT = 0.3  # block height / width is drawn log-uniformly in [0.3, 1 / 0.3]
MIN_BLOCK_AREA = 4  # as BEiT; smaller blocks are allowed only to fill the last few tokens
ATTEMPTS = 10  # block draws per step before giving up on reaching the target


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator) -> int:
    """An integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator).item())


def _draw_block(
    mask: Tensor, valid: Tensor, remaining: int, generator: torch.Generator
) -> tuple[slice, slice, int] | None:
    """A random rectangle adding between 1 and ``remaining`` valid unmasked tokens, or None after the attempts."""
    side = mask.shape[0]
    for _ in range(ATTEMPTS):
        area = _uniform(min(MIN_BLOCK_AREA, remaining), remaining, generator)
        aspect = math.exp(_uniform(math.log(MIN_ASPECT), -math.log(MIN_ASPECT), generator))
        height, width = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (1 <= height <= side and 1 <= width <= side):
            continue
        top, left = _randint(side - height + 1, generator), _randint(side - width + 1, generator)
        rows, cols = slice(top, top + height), slice(left, left + width)
        added = int((valid[rows, cols] & ~mask[rows, cols]).sum())
        if 0 < added <= remaining:
            return rows, cols, added
    return None


def block_masks(valid: Tensor, side: int, ratio: float, generator: torch.Generator) -> Tensor:
    """A mask of ``round(ratio * valid tokens)`` tokens (at most; blocks may fall short when the grid is sparse)
    made of rectangles of aspect ratio 0.3 to 3.3 on a ``side`` x ``side`` raster; invalid tokens stay unmasked.

    ``valid``: bool [side * side] in raster order; returns bool [side * side].
    """
    if valid.shape != (side * side,):
        raise ValueError(f"valid has shape {tuple(valid.shape)}, expected ({side * side},)")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    grid = valid.reshape(side, side).bool()
    mask = torch.zeros_like(grid)
    remaining = round(ratio * int(grid.sum()))
    while remaining > 0:
        block = _draw_block(mask, grid, remaining, generator)
        if block is None:
            break
        rows, cols, added = block
        mask[rows, cols] |= grid[rows, cols]
        remaining -= added
    return mask.reshape(-1)
