"""The exact region hierarchy: one 1.25x region, its 16 5x (L1) tiles and its 256 20x (L0) tiles.

Canonical order, used everywhere in pathme (stores, networks, heatmaps):

* a region is 4096 x 4096 px at 0.5 µm/px; regions tile the slide from level-0 (0, 0) in raster order;
* L0 tiles form a 16 x 16 raster: index ``i = r * 16 + c`` (r: row, top to bottom; c: column, left to right);
* L1 tiles form a 4 x 4 raster: index ``j = R * 4 + C``;
* the parent of L0 (r, c) is L1 (r // 4, c // 4): every L1 tile covers exactly 4 x 4 L0 tiles.

Coordinates are level-0 pixels of the slide; a region's extent in level-0 pixels is 4096 * 0.5 / mpp, so a
0.25 µm/px slide has 8192-px regions and a 0.5 µm/px slide 4096-px regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TILE_PX = 256
L0_MPP, L1_MPP, L2_MPP = 0.5, 2.0, 8.0
L0_SIDE, L1_SIDE = 16, 4  # tiles per region side
CHILDREN_SIDE = L0_SIDE // L1_SIDE  # L0 tiles per L1 tile side
REGION_PX = TILE_PX * L0_SIDE  # region side in pixels at L0_MPP


def raster_positions(rows: int, cols: int) -> np.ndarray:
    """(row, col) of each index of a ``rows`` x ``cols`` raster in raster order, shape [rows * cols, 2]."""
    return np.stack(np.divmod(np.arange(rows * cols), cols), axis=1)


#: L1 index of the parent of each L0 index
L0_PARENT = (raster_positions(L0_SIDE, L0_SIDE) // CHILDREN_SIDE) @ np.array([L1_SIDE, 1])


def l1_validity(valid_l0: np.ndarray) -> np.ndarray:
    """[16] bool: an L1 tile is valid when any of its 16 L0 children is (``valid_l0``: [256] bool, raster order)."""
    valid_l1 = np.zeros(L1_SIDE * L1_SIDE, dtype=bool)
    np.logical_or.at(valid_l1, L0_PARENT, valid_l0)
    return valid_l1


def tile_origins(origins: np.ndarray, region_extent: float, side: int) -> np.ndarray:
    """Level-0 (x, y) of the top-left of each tile of the ``side`` x ``side`` raster of each region, float64 (round
    with ``np.rint`` for pixel indices): shape [R, side * side, 2] for ``origins`` [R, 2] (level-0 x, y of each
    region), [side * side, 2] for one origin [2]. ``region_extent``: region side in level-0 pixels."""
    offsets = raster_positions(side, side)[:, ::-1] * (region_extent / side)  # (x, y) of each tile in its region
    return np.asarray(origins, dtype=np.float64)[..., None, :] + offsets


@dataclass(frozen=True)
class RegionGrid:
    """Region geometry of one slide: level-0 size and µm/px in, region and tile boxes out."""

    width: int
    height: int
    mpp: float

    @property
    def region_extent(self) -> float:
        """Region side in level-0 pixels."""
        return REGION_PX * L0_MPP / self.mpp

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of regions; edge regions may be partial, and a slide smaller than a region has one."""
        return math.ceil(self.height / self.region_extent), math.ceil(self.width / self.region_extent)

    def origins(self) -> np.ndarray:
        """Level-0 (x, y) of every region in raster order, integers, shape [rows * cols, 2]."""
        return np.rint(raster_positions(*self.shape)[:, ::-1] * self.region_extent).astype(np.int64)

    def tile_boxes(self, origin: tuple[int, int] | np.ndarray, side: int) -> np.ndarray:
        """Level-0 (x, y, width, height) of the ``side`` x ``side`` tiles of a region, shape [side * side, 4]."""
        boxes = np.empty((side * side, 4), dtype=np.float64)
        boxes[:, :2] = tile_origins(np.asarray(origin), self.region_extent, side)
        boxes[:, 2:] = self.region_extent / side
        return boxes

    def inside(self, boxes: np.ndarray) -> np.ndarray:
        """True for boxes lying wholly inside the slide."""
        tolerance = 1e-6
        return (boxes[:, 0] + boxes[:, 2] <= self.width + tolerance) & (
            boxes[:, 1] + boxes[:, 3] <= self.height + tolerance
        )
