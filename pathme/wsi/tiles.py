"""All three scales of a region from ONE read.

The region is read once at 0.5 µm/px (4096 x 4096 px) and cut into the 256 L0 tiles; area-downsampling the
same pixels by 4 and by 16 gives the 16 L1 tiles (2 µm/px) and the L2 tile (8 µm/px). Reading the three
pyramid levels separately would decode the region three times. Invalid tiles are set to white.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathme.wsi.grid import CHILDREN_SIDE, L0_MPP, L0_SIDE, L1_SIDE, REGION_PX, TILE_PX
from pathme.wsi.reading import WHITE, read_at_mpp
from pathme.wsi.regions import Region
from pathme.wsi.slide import Slide


@dataclass(frozen=True)
class RegionTiles:
    """Pixels of one region at every scale, in the canonical raster order of :mod:`pathme.wsi.grid`."""

    l0: np.ndarray  # [256, 256, 256, 3] uint8
    l1: np.ndarray  # [16, 256, 256, 3] uint8
    l2: np.ndarray  # [256, 256, 3] uint8
    valid_l0: np.ndarray  # [256] bool
    valid_l1: np.ndarray  # [16] bool


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of an (H, W, 3) uint8 image, rounded half up (PIL reduce)."""
    return np.asarray(Image.fromarray(image).reduce(factor))


def cut_tiles(image: np.ndarray, side: int) -> np.ndarray:
    """Split an (side*T, side*T, 3) image into [side * side, T, T, 3] tiles in raster order."""
    size = image.shape[0] // side
    return image.reshape(side, size, side, size, 3).swapaxes(1, 2).reshape(side * side, size, size, 3)


def read_region_tiles(slide: Slide, region: Region) -> RegionTiles:
    """Read ``region`` once and return its L0, L1 and L2 tiles with invalid tiles whitened."""
    pixels = read_at_mpp(slide, region.x, region.y, REGION_PX, REGION_PX, L0_MPP)
    l0 = cut_tiles(pixels, L0_SIDE)
    l1_image = area_downsample(pixels, CHILDREN_SIDE)
    l1 = cut_tiles(l1_image, L1_SIDE)
    l2 = area_downsample(l1_image, REGION_PX // TILE_PX // CHILDREN_SIDE)  # means of equal blocks: the 16x16 mean
    l0[~region.valid_l0] = WHITE
    l1[~region.valid_l1] = WHITE
    return RegionTiles(l0, l1, l2, region.valid_l0.copy(), region.valid_l1.copy())
