"""Which regions of a slide exist, which of their tiles are valid, and why a slide has none.

A tile is valid when it lies wholly inside the slide and at least ``min_tile_fraction`` of it is tissue
(L0); an L1 tile is valid when any of its 16 L0 children is; a region exists when any L0 tile is valid.
Invalid tiles are kept (padded white, flagged), never dropped, so every region has the full 256 + 16 layout.
A slide with no region gets the reason in :attr:`SlidePlan.reason`, for its summary row and its store.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pathme.wsi.grid import L0_MPP, L0_SIDE, TILE_PX, RegionGrid, l1_validity
from pathme.wsi.reading import level_read, read_thumbnail
from pathme.wsi.slide import Slide
from pathme.wsi.tissue import TissueConfig, box_fractions, ink_mask, tissue_mask


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
    ink: np.ndarray  # pen ink found on the thumbnail and kept out of the mask
    regions: list[Region]
    reason: str = ""  # why the slide has no region; empty when it has some
    resampling: str = ""  # how its 20x tiles are resampled when level 0 is a little coarser than 0.5 µm/px

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the thumbnail that is tissue, 0-1."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def valid_tiles(self) -> int:
        """20x (L0) tiles on tissue over all regions: the tiles extraction encodes."""
        return int(sum(region.valid_l0.sum() for region in self.regions))

    @property
    def ink_fraction(self) -> float:
        """Fraction of the thumbnail that is pen ink kept out of the tissue mask, 0-1."""
        return float(self.ink.mean()) if self.ink.size else 0.0


def plan_regions(slide: Slide, tissue: TissueConfig = TissueConfig()) -> SlidePlan:
    """Detect tissue on a thumbnail and list the slide's regions with their tile validity (and, when there is
    none, why). Raises SlideError when the slide cannot be read, or not at the 0.5 µm/px of its 20x tiles
    (:func:`~pathme.wsi.reading.level_read`: the same refusal in previews and extraction)."""
    resampling = level_read(slide, L0_MPP).note
    grid = RegionGrid(*slide.size, slide.mpp)
    thumbnail = read_thumbnail(slide, tissue.mpp)
    if slide.channels == 1:  # no colour: tissue detection and the experts need RGB bright-field H&E
        nothing = np.zeros(thumbnail.shape[:2], dtype=bool)
        return SlidePlan(grid, thumbnail, nothing, nothing, [], _SINGLE_CHANNEL, resampling)
    ink = ink_mask(thumbnail, tissue)
    mask = tissue_mask(thumbnail, tissue, ink)
    scale = slide.mpp / tissue.mpp
    cols = grid.shape[1]
    regions = []
    for index, origin in enumerate(grid.origins()):
        boxes = grid.tile_boxes(origin, L0_SIDE)
        valid_l0 = grid.inside(boxes) & (box_fractions(mask, boxes, scale) >= tissue.min_tile_fraction)
        if valid_l0.any():
            row, col = divmod(index, cols)
            regions.append(Region(row, col, int(origin[0]), int(origin[1]), valid_l0, l1_validity(valid_l0)))
    plan = SlidePlan(grid, thumbnail, mask, ink, regions, resampling=resampling)
    return plan if regions else replace(plan, reason=no_region_reason(plan, tissue))


_SINGLE_CHANNEL = (
    "no region: a single-channel (grayscale) image; tissue detection and the experts need RGB bright-field H&E, "
    "so convert it to RGB only if it is an H&E scan stored in gray, or leave it out"
)


def no_region_reason(plan: SlidePlan, tissue: TissueConfig) -> str:
    """Why a planned slide has no region: smaller than one 20x tile, only ink, no tissue, or no tile with enough
    tissue; each with its figures and what to try."""
    grid = plan.grid
    tile = TILE_PX * L0_MPP / grid.mpp  # an L0 tile's side in level-0 pixels
    if min(grid.width, grid.height) < tile:
        return (
            f"no region: the slide is {grid.width} x {grid.height} px at {grid.mpp:g} µm/px, smaller than one "
            f"20x tile ({tile:g} x {tile:g} px at level 0)"
        )
    if not plan.mask.any() and plan.ink.any():
        return f"no region: only pen ink found ({plan.ink_fraction:.1%} of the thumbnail), no tissue beside it"
    if not plan.mask.any():
        return "no region: no tissue found (blank glass, or tissue too faint to tell from it: see the preview)"
    return (
        f"no region: tissue found ({plan.tissue_fraction:.1%} of the thumbnail) but no 20x tile is at least "
        f"{tissue.min_tile_fraction:.0%} tissue; lower min_tile_fraction to keep it"
    )
