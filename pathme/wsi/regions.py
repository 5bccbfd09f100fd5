"""Which regions of a slide exist, and which of their tiles are valid.

A tile is valid when it lies wholly inside the slide and at least ``min_tile_fraction`` of it is tissue
(L0); an L1 tile is valid when any of its 16 L0 children is; a region exists when any L0 tile is valid.
Invalid tiles are kept (padded white, flagged), never dropped, so every region has the full 256 + 16 layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathme.wsi.grid import L0_PARENT, L0_SIDE, L1_SIDE, RegionGrid
from pathme.wsi.reading import read_thumbnail
from pathme.wsi.slide import Slide
from pathme.wsi.tissue import TissueConfig, box_fractions, tissue_mask


@dataclass(frozen=True)
class Region:
    """One region: its level-0 origin, grid position and per-tile validity."""

    row: int
    col: int
    x: int
    y: int
    valid_l0: np.ndarray  # [256] bool, canonical raster order
    valid_l1: np.ndarray  # [16] bool


@dataclass(frozen=True)
class SlidePlan:
    """Everything decided about a slide before any tile is read."""

    grid: RegionGrid
    thumbnail: np.ndarray  # RGB at tissue.mpp
    mask: np.ndarray  # tissue mask of the thumbnail
    regions: list[Region]

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean())


def l1_validity(valid_l0: np.ndarray) -> np.ndarray:
    """An L1 tile is valid when any of its L0 children is."""
    valid_l1 = np.zeros(L1_SIDE * L1_SIDE, dtype=bool)
    np.logical_or.at(valid_l1, L0_PARENT, valid_l0)
    return valid_l1


def plan_regions(slide: Slide, tissue: TissueConfig = TissueConfig()) -> SlidePlan:
    """Detect tissue on a thumbnail and list the slide's regions with their tile validity."""
    grid = RegionGrid(*slide.size, slide.mpp)
    thumbnail = read_thumbnail(slide, tissue.mpp)
    mask = tissue_mask(thumbnail, tissue)
    scale = slide.mpp / tissue.mpp
    cols = grid.shape[1]
    regions = []
    for index, origin in enumerate(grid.origins()):
        boxes = grid.tile_boxes(origin, L0_SIDE)
        valid_l0 = grid.inside(boxes) & (box_fractions(mask, boxes, scale) >= tissue.min_tile_fraction)
        if valid_l0.any():
            row, col = divmod(index, cols)
            regions.append(Region(row, col, int(origin[0]), int(origin[1]), valid_l0, l1_validity(valid_l0)))
    return SlidePlan(grid, thumbnail, mask, regions)
