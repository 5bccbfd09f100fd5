"""Reading at a target µm/px: the right level, the right pixels, white outside the slide."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import block_pattern

import pathme.wsi.reading as reading
from pathme.wsi.reading import level_read, read_at_mpp, read_thumbnail
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import SlideError

BLOCK = 72  # level-0 px: whole numbers of pixels at downsamples 1, 2, 3, 4, 8, 9 and 18 (16 leaves a half pixel)


def _expected(
    pattern: np.ndarray, x: float, y: float, width: int, height: int, step: float, grain: float = 1
) -> np.ndarray:
    """The colour of the block under each output pixel's centre, and a mask of the output pixels whose whole
    footprint, widened to the edges of the pixels of the level read (``grain`` level-0 px each), lies inside one block
    (where an area average must equal that colour exactly: a stored level pixel across a block edge is a mixture)."""
    cols = x + (np.arange(width) + 0.5) * step
    rows = y + (np.arange(height) + 0.5) * step
    colour = pattern[rows.astype(int)[:, None], cols.astype(int)[None, :]]

    def clean(centres: np.ndarray) -> np.ndarray:
        first = np.floor((centres - step / 2) / grain + 1e-9) * grain
        last = np.ceil((centres + step / 2) / grain - 1e-9) * grain - 1e-9
        return np.floor(first / BLOCK) == np.floor(last / BLOCK)

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
    assert level_read(slide, target).level == level
    step = target / mpp
    x, y = 2 * BLOCK + 12, 3 * BLOCK + 36
    width, height = min(96, int((2304 - x) / step)), min(80, int((2880 - y) / step))
    pixels = read_at_mpp(slide, x, y, width, height, target)
    assert pixels.shape == (height, width, 3)
    expected, clean = _expected(pattern, x, y, width, height, step, downsamples[level])
    assert clean.sum() >= 100
    np.testing.assert_array_equal(pixels[clean], expected[clean])


def test_the_chosen_level_is_never_coarser_than_the_target(make_slide):
    slide = Slide.open(make_slide(block_pattern(2880, 2304, BLOCK), 0.25, "svs", (1, 3, 9)))
    for target in np.linspace(0.25, 4.0, 31):
        assert slide.level_mpp(level_read(slide, target).level) <= target * (1 + 1e-3)


def test_a_slide_coarser_than_the_target_is_refused(make_slide):
    slide = Slide.open(make_slide(block_pattern(512, 512, BLOCK), 1.0, "tiff"))
    with pytest.raises(SlideError, match=r"level 0 is 1.0000 µm/px \(about 10x\), 100% coarser than the 0.5 µm/px"):
        read_at_mpp(slide, 0, 0, 16, 16, 0.5)


@pytest.mark.parametrize(("mpp", "tolerance", "read"), [(0.504, 0.05, True), (0.52, 0.05, True), (0.504, 0.0, False)])
def test_a_nominal_20x_scan_a_little_coarser_than_0_5_is_read_at_20x_within_the_tolerance(
    make_slide, mpp, tolerance, read
):
    """Aperio 20x scans carry 0.499-0.504 µm/px: within the tolerance level 0 is read at 0.5 µm/px, stretched, and the
    stretch is said; beyond it the slide is refused with the tolerance named."""
    pattern = block_pattern(1152, 1152, BLOCK)
    slide = Slide.open(make_slide(pattern, mpp, "svs", (1, 4)), mpp_tolerance=tolerance)
    if not read:
        with pytest.raises(SlideError, match=r"0.8% coarser than the 0.5 µm/px \(20x\).*beyond the 0% µm/px tolerance"):
            level_read(slide, 0.5)
        return
    plan = level_read(slide, 0.5)
    assert (plan.level, plan.upsampled) == (0, True)
    stretch = {0.504: "0.8%", 0.52: "4%"}[mpp]
    assert plan.note == (
        f"read at 0.5 µm/px from level 0 at {mpp:.4f} µm/px, resampled up by {stretch} (within the 5% µm/px tolerance)"
    )
    step = 0.5 / mpp  # level-0 px per output px, below 1: each output pixel lies inside one level-0 pixel or two
    width = int(1000 / step)
    pixels = read_at_mpp(slide, 100, 100, width, width, 0.5)
    expected, clean = _expected(pattern, 100, 100, width, width, step)
    assert clean.mean() > 0.9
    np.testing.assert_array_equal(pixels[clean], expected[clean])
    # a coarser target is read from a finer level averaged down, never stretched: level 1 is 4 * mpp > 2 µm/px
    assert (level_read(slide, 2.0).level, level_read(slide, 2.0).upsampled) == (0, False)
    assert level_read(slide, 4 * mpp).level == 1


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


def test_the_thumbnail_is_the_slide_at_that_resolution_in_blocks(make_slide, monkeypatch):
    pattern = block_pattern(2880, 2304, BLOCK)
    slide = Slide.open(make_slide(pattern, 0.5, "svs", (1, 4, 16)))
    whole = read_at_mpp(slide, 0, 0, 576, 720, 2.0)
    monkeypatch.setattr(reading, "MAX_READ_SIDE", 100)
    np.testing.assert_array_equal(read_thumbnail(slide, 2.0), whole)


@pytest.mark.parametrize("downsamples", [(1, 4, 16, 64), (1,)])
def test_a_thumbnail_reads_bounded_boxes_whatever_the_pyramid(make_slide, monkeypatch, downsamples):
    """A slide without a pyramid (t08: 16,000 px at 0.25 µm/px, level 0 only) had its 8 µm/px thumbnail read in
    blocks of 1024 output px, 32,768 level-0 px a side: the whole slide in one 3 GB read. Reads stay within
    MAX_READ_SIDE level px a side, so memory is flat in slide size."""
    pattern = block_pattern(2304, 2304, BLOCK)
    slide = Slide.open(make_slide(pattern, 0.25, "svs", downsamples))
    boxes = []
    read = slide.read_level
    monkeypatch.setattr(slide, "read_level", lambda level, *box: boxes.append(box) or read(level, *box))
    monkeypatch.setattr(reading, "MAX_READ_SIDE", 256)
    thumbnail = read_thumbnail(slide, 8.0)
    assert thumbnail.shape == (72, 72, 3)
    assert max(max(w, h) for _, _, w, h in boxes) <= 256
    np.testing.assert_array_equal(thumbnail, read_at_mpp(slide, 0, 0, 72, 72, 8.0))
