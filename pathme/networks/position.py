"""2-D positional embedding from true grid positions, one learned table shared by both scales."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from pathme.wsi.grid import CHILDREN_SIDE, L0_SIDE, L1_SIDE

#: tiles per region side of each scale that enters the backbone
SCALE_SIDES = {"L0": L0_SIDE, "L1": L1_SIDE}


class GridPositionEmbedding(nn.Module):
    """A learned [16 * 16, D] table indexed by the L0 (row, col); an L1 cell's entry is the mean of its 4 x 4
    children's entries (area resampling to 4 x 4), so a 5x tile sits where its 20x tiles are."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.table = nn.Parameter(trunc_normal_(torch.empty(L0_SIDE * L0_SIDE, dim), std=0.02))

    def grid(self, scale: str) -> Tensor:
        """Embedding of every cell of ``scale``'s grid in raster order, [side * side, D]."""
        if scale == "L0":
            return self.table
        square = self.table.T.reshape(1, -1, L0_SIDE, L0_SIDE)
        return F.avg_pool2d(square, CHILDREN_SIDE).flatten(2)[0].T

    def forward(self, positions: Tensor, valid: Tensor, scale: str) -> Tensor:
        """positions [B, N, 2] (row, col) on ``scale``'s grid, valid [B, N] -> [B, N, D]; missing tiles may hold
        any position (they read cell 0, and their tokens are masked anyway)."""
        side = SCALE_SIDES[scale]
        positions = torch.where(valid[..., None], positions, 0)
        if bool(((positions < 0) | (positions >= side)).any()):
            raise ValueError(f"{scale} positions must lie in [0, {side}) on a {side}x{side} grid")
        # a gather through F.embedding: its CPU backward sums repeated cells in a fixed order, where indexing's
        # backward (index_put_ with accumulate) does not, so a distillation repeats bit for bit on 2+ threads
        return F.embedding(positions[..., 0] * side + positions[..., 1], self.grid(scale))
