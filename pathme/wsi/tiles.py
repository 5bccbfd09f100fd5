"""All three scales of a region from ONE read, in one stack of tiles.

The region is read once at 0.5 µm/px (4096 x 4096 px) and cut into the 256 L0 tiles; area-averaging the same pixels
by 4 and by 16 gives the 16 L1 tiles (2 µm/px) and the L2 tile (8 µm/px). Reading the three pyramid levels
separately would decode the region three times. Invalid tiles are set to white.

The tiles are written straight into one [273, 256, 256, 3] stack (L0 rows, then L1 rows, then the L2 row), the array
the encoders take, so the decoded pixels are copied once, by the cut into tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathme.wsi.grid import CHILDREN_SIDE, L0_MPP, L0_SIDE, L1_SIDE, REGION_PX, TILE_PX
from pathme.wsi.reading import WHITE, read_at_mpp
from pathme.wsi.regions import Region
from pathme.wsi.resize import area_reduce
from pathme.wsi.slide import Slide

#: rows of a region's tile stack: 256 L0 tiles, then 16 L1 tiles, then the L2 tile
L0_ROWS, L1_ROWS, L2_ROW = slice(0, L0_SIDE**2), slice(L0_SIDE**2, L0_SIDE**2 + L1_SIDE**2), L0_SIDE**2 + L1_SIDE**2
TILES_PER_REGION = L2_ROW + 1


@dataclass(frozen=True)
class RegionTiles:
    """Pixels of one region at every scale, in the canonical raster order of :mod:`pathme.wsi.grid`."""

    stack: np.ndarray  # [273, 256, 256, 3] uint8: L0 tiles, L1 tiles, the L2 tile
    valid_l0: np.ndarray  # [256] bool
    valid_l1: np.ndarray  # [16] bool

    @property
    def l0(self) -> np.ndarray:
        """[256, 256, 256, 3] uint8, a view of the stack."""
        return self.stack[L0_ROWS]

    @property
    def l1(self) -> np.ndarray:
        """[16, 256, 256, 3] uint8, a view of the stack."""
        return self.stack[L1_ROWS]

    @property
    def l2(self) -> np.ndarray:
        """[256, 256, 3] uint8, a view of the stack."""
        return self.stack[L2_ROW]


def cut_tiles(image: np.ndarray, side: int, out: np.ndarray | None = None) -> np.ndarray:
    """Split an (side*T, side*T, 3) image into [side * side, T, T, 3] tiles in raster order, written into ``out``
    (a C-contiguous array of that shape) when given."""
    size = image.shape[0] // side
    blocks = image.reshape(side, size, side, size, 3).swapaxes(1, 2)
    if out is None:
        return blocks.reshape(side * side, size, size, 3)
    out.reshape(side, side, size, size, 3)[...] = blocks
    return out


def read_region_tiles(slide: Slide, region: Region) -> RegionTiles:
    """Read ``region`` once and return its L0, L1 and L2 tiles, stacked, with invalid tiles whitened."""
    pixels = read_at_mpp(slide, region.x, region.y, REGION_PX, REGION_PX, L0_MPP)
    stack = np.empty((TILES_PER_REGION, TILE_PX, TILE_PX, 3), dtype=np.uint8)
    cut_tiles(pixels, L0_SIDE, stack[L0_ROWS])
    l1_image = area_reduce(pixels, CHILDREN_SIDE)
    cut_tiles(l1_image, L1_SIDE, stack[L1_ROWS])
    stack[L2_ROW] = area_reduce(l1_image, REGION_PX // TILE_PX // CHILDREN_SIDE)  # means of equal blocks: the 16² mean
    stack[L0_ROWS][~region.valid_l0] = WHITE
    stack[L1_ROWS][~region.valid_l1] = WHITE
    return RegionTiles(stack, region.valid_l0.copy(), region.valid_l1.copy())
