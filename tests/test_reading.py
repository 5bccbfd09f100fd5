"""Reading at a target µm/px: the right level, the right pixels, white outside the slide."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import block_pattern

from pathme.wsi.reading import choose_level, read_at_mpp, read_thumbnail
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError

BLOCK = 72  # level-0 px: whole numbers of pixels at downsamples 1, 2, 3, 4, 8, 9 and 18 (16 leaves a half pixel)


def _expected(pattern: np.ndarray, x: float, y: float, width: int, height: int, step: float) -> np.ndarray:
    """The colour of the block under each output pixel's centre, and a mask of the output pixels whose whole
    footprint lies inside one block (where an area average must equal that colour exactly)."""
    cols = x + (np.arange(width) + 0.5) * step
    rows = y + (np.arange(height) + 0.5) * step
    colour = pattern[rows.astype(int)[:, None], cols.astype(int)[None, :]]

    def clean(centres: np.ndarray) -> np.ndarray:
        return np.floor((centres - step / 2) / BLOCK) == np.floor((centres + step / 2 - 1e-9) / BLOCK)

    return colour, clean(rows)[:, None] & clean(cols)[None, :]


@pytest.mark.parametrize(
    ("mpp", "downsamples", "target", "level"),
    [
        (0.5, (1, 4, 16), 0.5, 0),
        (0.5, (1, 4, 16), 2.0, 1),
        (0.5, (1, 4, 16), 8.0, 2),
        (0.5, (1, 4, 16), 1.0, 0),
        (0.25, (1, 4, 16), 0.5, 0),
        (0.25, (1, 4, 16), 2.0, 1),
        (0.25, (1, 3, 9), 0.5, 0),
        (0.25, (1, 3, 9), 0.75, 1),
        (0.25, (1, 3, 9), 2.0, 1),
        (0.25, (1, 3, 9), 8.0, 2),
        (0.5, (1, 3, 9), 2.0, 1),
    ],
)
def test_level_choice_and_pixels_match_a_known_pattern(make_slide, mpp, downsamples, target, level):
    pattern = block_pattern(2880, 2304, BLOCK)
    slide = Slide.open(make_slide(pattern, mpp, "svs", downsamples))
    assert choose_level(slide, target) == level
    step = target / mpp
    x, y = 2 * BLOCK + 12, 3 * BLOCK + 36
    width, height = min(96, int((2304 - x) / step)), min(80, int((2880 - y) / step))
    pixels = read_at_mpp(slide, x, y, width, height, target)
    assert pixels.shape == (height, width, 3)
    expected, clean = _expected(pattern, x, y, width, height, step)
    assert clean.sum() >= 100
    np.testing.assert_array_equal(pixels[clean], expected[clean])


def test_the_chosen_level_is_never_coarser_than_the_target(make_slide):
    slide = Slide.open(make_slide(block_pattern(2880, 2304, BLOCK), 0.25, "svs", (1, 3, 9)))
    for target in np.linspace(0.25, 4.0, 31):
        assert slide.level_mpp(choose_level(slide, target)) <= target * (1 + 1e-3)


def test_a_slide_coarser_than_the_target_is_refused(make_slide):
    slide = Slide.open(make_slide(block_pattern(512, 512, BLOCK), 1.0, "tiff"))
    with pytest.raises(SlideError, match="coarser than the 0.5 µm/px"):
        read_at_mpp(slide, 0, 0, 16, 16, 0.5)


def test_pixels_outside_the_slide_are_white(make_slide):
    pattern = block_pattern(1000, 900, BLOCK)
    slide = Slide.open(make_slide(pattern, 0.25, "tiff", (1, 2)))
    pixels = read_at_mpp(slide, 700, 800, 200, 200, 0.5)  # 100 x 100 output px lie inside
    np.testing.assert_array_equal(pixels[100:], 255)
    np.testing.assert_array_equal(pixels[:, 100:], 255)
    expected, clean = _expected(pattern, 700, 800, 100, 100, 2.0)
    np.testing.assert_array_equal(pixels[:100, :100][clean], expected[clean])


def test_a_read_wholly_outside_is_white(make_slide):
    slide = Slide.open(make_slide(block_pattern(512, 512, BLOCK), 0.5, "tiff"))
    np.testing.assert_array_equal(read_at_mpp(slide, 600, 0, 32, 32, 0.5), 255)


def test_the_thumbnail_is_the_slide_at_that_resolution_in_blocks(make_slide):
    pattern = block_pattern(2880, 2304, BLOCK)
    slide = Slide.open(make_slide(pattern, 0.5, "svs", (1, 4, 16)))
    whole = read_at_mpp(slide, 0, 0, 576, 720, 2.0)
    np.testing.assert_array_equal(read_thumbnail(slide, 2.0, block=100), whole)
