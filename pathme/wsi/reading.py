"""Reading a level-0 box at a target µm/px: pick the pyramid level, read once, area-resize to the exact size.

The level is the coarsest one whose µm/px is at or below (finer than) the target, so pixels are only ever
averaged down, never interpolated up. The resize uses PIL's box filter over the exact fractional source box,
which is an area average for any scale, including pyramids whose downsamples are not powers of two.
Pixels of the requested box that fall outside the slide are white.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError

#: relative slack when comparing a level's µm/px with the target (float noise only, no upsampling)
MPP_RTOL = 1e-3
WHITE = 255
#: largest thumbnail read_thumbnail allocates (400 MB of RGB): a 100,000-px-wide slide at 0.25 µm/px is
#: 3,125 px wide at 8 µm/px, so only a wrong µm/px or thumbnail resolution ever comes near it
MAX_THUMBNAIL_PIXELS = 1 << 27


def choose_level(slide: Slide, target_mpp: float) -> int:
    """Index of the coarsest level whose µm/px is at or below ``target_mpp``."""
    candidates = [
        level for level in range(len(slide.level_sizes)) if slide.level_mpp(level) <= target_mpp * (1 + MPP_RTOL)
    ]
    if not candidates:
        raise SlideError(
            f"slide {slide.slide_id}: level 0 is {slide.mpp:.4f} µm/px, coarser than the {target_mpp} µm/px "
            "asked for; PatHME needs slides scanned at 0.5 µm/px (20x) or finer"
        )
    return max(candidates, key=slide.level_mpp)


def read_at_mpp(slide: Slide, x: float, y: float, width: int, height: int, target_mpp: float) -> np.ndarray:
    """Read (height, width, 3) uint8 pixels at ``target_mpp`` whose top-left corner is level-0 point (x, y).

    Only output pixels lying wholly inside the slide are read; the rest stay white.
    """
    if x < 0 or y < 0:
        raise ValueError(f"slide {slide.slide_id}: negative read origin ({x}, {y})")
    out = np.full((height, width, 3), WHITE, dtype=np.uint8)
    step = target_mpp / slide.mpp  # level-0 pixels per output pixel
    slide_width, slide_height = slide.size
    inside_x = min(width, math.floor((slide_width - x) / step + 1e-6))
    inside_y = min(height, math.floor((slide_height - y) / step + 1e-6))
    if inside_x <= 0 or inside_y <= 0:
        return out
    level = choose_level(slide, target_mpp)
    scale_x, scale_y = slide.level_scale(level)
    level_width, level_height = slide.level_sizes[level]
    left, top = x / scale_x, y / scale_y
    right = min((x + inside_x * step) / scale_x, level_width)
    bottom = min((y + inside_y * step) / scale_y, level_height)
    col0, row0 = math.floor(left), math.floor(top)
    col1, row1 = min(math.ceil(right - 1e-9), level_width), min(math.ceil(bottom - 1e-9), level_height)
    patch = slide.read_level(level, col0, row0, col1 - col0, row1 - row0)
    box = (left - col0, top - row0, right - col0, bottom - row0)
    if box == (0, 0, inside_x, inside_y):  # the level holds exactly these pixels: no resampling
        out[:inside_y, :inside_x] = patch
    else:
        resized = Image.fromarray(patch).resize((inside_x, inside_y), Image.Resampling.BOX, box=box)
        out[:inside_y, :inside_x] = np.asarray(resized)
    return out


def read_thumbnail(slide: Slide, target_mpp: float, block: int = 1024) -> np.ndarray:
    """The whole slide at ``target_mpp``, read in blocks of ``block`` output pixels so memory stays bounded.

    Raises SlideError, before allocating anything, when the thumbnail would exceed :data:`MAX_THUMBNAIL_PIXELS`.
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
    thumbnail = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, block):
        for left in range(0, width, block):
            w, h = min(block, width - left), min(block, height - top)
            thumbnail[top : top + h, left : left + w] = read_at_mpp(slide, left * step, top * step, w, h, target_mpp)
    return thumbnail
