"""Reading a level-0 box at a target µm/px: the µm/px policy picks the level, one read, an area resize to size.

:func:`level_read` is the one place that decides whether and how a slide is read at a µm/px; previews, extraction,
heatmaps and the Deploy app all read through it. The level is the coarsest one whose µm/px is at or below (finer
than) the target, so pixels are only ever averaged down; a slide whose level 0 is coarser than the target is read
from level 0, resampled up, when it is within the slide's µm/px tolerance of the target
(:data:`~pathme.wsi.mpp.MPP_TOLERANCE`: a nominal 20x scan at 0.504 µm/px is a 20x scan) and refused otherwise,
with one reason wherever it is asked. The level's pixels are area-averaged to the target (:mod:`pathme.wsi.resize`:
an integer reduce where the scale is integral or nominally so, an exact area average otherwise), including pyramids
whose downsamples are not powers of two. Pixels of the requested box that fall outside the slide are white.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pathme.wsi.mpp import MPP_AT_1X
from pathme.wsi.resize import resize_area
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError

#: relative slack when comparing a level's µm/px with the target (float noise only, no upsampling)
MPP_RTOL = 1e-3
WHITE = 255
#: largest thumbnail read_thumbnail allocates (400 MB of RGB): a 100,000-px-wide slide at 0.25 µm/px is
#: 3,125 px wide at 8 µm/px, so only a wrong µm/px or thumbnail resolution ever comes near it
MAX_THUMBNAIL_PIXELS = 1 << 27
#: side, in pixels of the level read, of the largest box one read of a thumbnail decodes (48 MB of RGB), so memory
#: stays flat in slide size also when a slide has no coarse level to read its thumbnail from
MAX_READ_SIDE = 4096


@dataclass(frozen=True)
class LevelRead:
    """How a slide is read at ``target_mpp``: from ``level``, whose µm/px is ``level_mpp``."""

    level: int
    level_mpp: float
    target_mpp: float
    tolerance: float

    @property
    def upsampled(self) -> bool:
        """True when the level is coarser than the target (within the tolerance): its pixels are stretched."""
        return self.level_mpp > self.target_mpp * (1 + MPP_RTOL)

    @property
    def note(self) -> str:
        """What a summary and a store record about a stretched read ("" for an ordinary one)."""
        if not self.upsampled:
            return ""
        stretch, tolerance = _percent(self.level_mpp / self.target_mpp - 1), _percent(self.tolerance)
        return (
            f"read at {self.target_mpp:g} µm/px from level {self.level} at {self.level_mpp:.4f} µm/px, resampled up "
            f"by {stretch} (within the {tolerance} µm/px tolerance)"
        )


def _percent(fraction: float) -> str:
    """``0.008`` -> ``0.8%``, ``0.05`` -> ``5%``, ``1.0`` -> ``100%``."""
    return f"{round(fraction * 100, 1):g}%"


def level_read(slide: Slide, target_mpp: float) -> LevelRead:
    """How ``slide`` is read at ``target_mpp``: the coarsest level at or below it, else level 0 when it is at most
    ``slide.mpp_tolerance`` coarser. Raises SlideError with the one reason every stage gives for a slide too
    coarse for the target."""
    candidates = [
        level for level in range(len(slide.level_sizes)) if slide.level_mpp(level) <= target_mpp * (1 + MPP_RTOL)
    ]
    if candidates:
        level = max(candidates, key=slide.level_mpp)
        return LevelRead(level, slide.level_mpp(level), target_mpp, slide.mpp_tolerance)
    finest = slide.level_mpp(0)
    refuse_too_coarse(slide.slide_id, finest, target_mpp, slide.mpp_tolerance)
    return LevelRead(0, finest, target_mpp, slide.mpp_tolerance)


def refuse_too_coarse(slide_id: str, level0_mpp: float, target_mpp: float, tolerance: float) -> None:
    """Raise the one SlideError every stage gives when level 0 (at ``level0_mpp``) is more than ``tolerance`` (a
    fraction) coarser than ``target_mpp``; return quietly otherwise."""
    if level0_mpp <= target_mpp * (1 + tolerance):
        return
    coarser, percent = _percent(level0_mpp / target_mpp - 1), _percent(tolerance)
    raise SlideError(
        f"slide {slide_id}: level 0 is {level0_mpp:.4f} µm/px (about {MPP_AT_1X / level0_mpp:.3g}x), {coarser} coarser "
        f"than the {target_mpp:g} µm/px ({MPP_AT_1X / target_mpp:g}x) it must be read at, beyond the {percent} µm/px "
        "tolerance (mpp_tolerance, --mpp-tolerance); scan it at 20x (0.5 µm/px) or finer, or give its right µm/px in "
        "the manifest's 'mpp' column if the file's is wrong"
    )


def read_at_mpp(slide: Slide, x: float, y: float, width: int, height: int, target_mpp: float) -> np.ndarray:
    """Read (height, width, 3) uint8 pixels at ``target_mpp`` whose top-left corner is level-0 point (x, y).

    Only output pixels lying wholly inside the slide are read; the rest are white. A box wholly inside the slide whose
    level holds exactly its pixels is returned without a copy: a view of what the reader decoded (strided when the
    reader decodes RGBA).
    """
    if x < 0 or y < 0:
        raise ValueError(f"slide {slide.slide_id}: negative read origin ({x}, {y})")
    step = target_mpp / slide.mpp  # level-0 pixels per output pixel
    slide_width, slide_height = slide.size
    inside_x = min(width, math.floor((slide_width - x) / step + 1e-6))
    inside_y = min(height, math.floor((slide_height - y) / step + 1e-6))
    if inside_x <= 0 or inside_y <= 0:
        return np.full((height, width, 3), WHITE, dtype=np.uint8)
    level = level_read(slide, target_mpp).level
    scale_x, scale_y = slide.level_scale(level)
    level_width, level_height = slide.level_sizes[level]
    left, top = x / scale_x, y / scale_y
    right = min((x + inside_x * step) / scale_x, level_width)
    bottom = min((y + inside_y * step) / scale_y, level_height)
    col0, row0 = math.floor(left), math.floor(top)
    col1, row1 = min(math.ceil(right - 1e-9), level_width), min(math.ceil(bottom - 1e-9), level_height)
    patch = slide.read_level(level, col0, row0, col1 - col0, row1 - row0)
    pixels = resize_area(patch, (left - col0, top - row0, right - col0, bottom - row0), (inside_x, inside_y))
    if (inside_x, inside_y) == (width, height):
        return pixels
    out = np.full((height, width, 3), WHITE, dtype=np.uint8)
    out[:inside_y, :inside_x] = pixels
    return out


def read_thumbnail(slide: Slide, target_mpp: float) -> np.ndarray:
    """The whole slide at ``target_mpp``, read in blocks of at most :data:`MAX_READ_SIDE` pixels of the level read
    (whatever the pyramid: a slide without coarse levels is read from level 0 in as many blocks as it takes), so
    memory stays bounded.

    Raises SlideError, before allocating anything, when the thumbnail would exceed :data:`MAX_THUMBNAIL_PIXELS`, or
    when the slide cannot be read at ``target_mpp`` (:func:`level_read`).
    """
    step = target_mpp / slide.mpp
    width = math.ceil(slide.size[0] / step)
    height = math.ceil(slide.size[1] / step)
    if width * height > MAX_THUMBNAIL_PIXELS:
        raise SlideError(
            f"slide {slide.slide_id}: its thumbnail at {target_mpp:g} µm/px would be {width} x {height} px "
            f"({width * height * 3 / 1e9:.1f} GB) for {slide.size[0]} x {slide.size[1]} px at {slide.mpp:g} µm/px; "
            "check the slide's µm/px (manifest column 'mpp') and the thumbnail resolution"
        )
    read = level_read(slide, target_mpp)
    block = max(1, math.floor(MAX_READ_SIDE * read.level_mpp / target_mpp))  # output px per block
    thumbnail = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, block):
        for left in range(0, width, block):
            w, h = min(block, width - left), min(block, height - top)
            thumbnail[top : top + h, left : left + w] = read_at_mpp(slide, left * step, top * step, w, h, target_mpp)
    return thumbnail
