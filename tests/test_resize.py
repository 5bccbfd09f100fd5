"""Area resampling (pathme.wsi.resize) and the reads built on it, against the exact area average.

The reference is the definition: an output pixel is the mean of the input under its footprint, each input pixel
weighted by the area it shares with it (float64 weight matrices, small images only). Tolerances:

* integer, non-integer and sub-pixel-origin scales: within rounding (max 1 grey level; 0.5 from rounding, OpenCV's
  fixed-point weights when it enlarges);
* a scale within 5 % of 2 (a 40x scan at 0.2520 µm/px read at 20x) is read by the 2-block reduce, which blurs sharp
  edges by up to one level pixel: on dense H&E mean <= 3.5 and 99th percentile <= 25 grey levels, about as far from
  the exact average as PIL's box filter, the read before, was at every non-integer scale (mean 3.2-3.5, 99th
  percentile 25-27 on the same pixels).
"""

from __future__ import annotations

import numpy as np
import pytest

from pathme.wsi.grid import L1_SIDE
from pathme.wsi.reading import level_read, read_at_mpp
from pathme.wsi.regions import plan_regions
from pathme.wsi.resize import area_reduce, resize_area
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import read_region_tiles


def _weights(count: int, start: float, scale: float, length: int) -> np.ndarray:
    """[count, length]: the share of input pixel j in output pixel i's footprint [start + i s, start + (i + 1) s)."""
    edges = start + np.arange(count + 1)[:, None] * scale
    left, right = np.arange(length)[None, :], np.arange(length)[None, :] + 1
    overlap = np.clip(np.minimum(edges[1:], right) - np.maximum(edges[:-1], left), 0, None)
    return overlap / scale


def exact_area(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    left, top, right, bottom = box
    width, height = size
    rows = _weights(height, top, (bottom - top) / height, image.shape[0])
    cols = _weights(width, left, (right - left) / width, image.shape[1])
    first, last = int(np.floor(top)), int(np.ceil(bottom))  # only the rows and columns under the box: small products
    rows, image = rows[:, first:last], image[first:last]
    first, last = int(np.floor(left)), int(np.ceil(right))
    cols, image = cols[:, first:last], image[:, first:last]
    by_rows = (rows @ image.reshape(image.shape[0], -1).astype(np.float64)).reshape(height, -1, image.shape[2])
    return (by_rows.transpose(0, 2, 1) @ cols.T).transpose(0, 2, 1)


@pytest.fixture(scope="module")
def he_pixels(cmu_pixels) -> np.ndarray:
    return np.ascontiguousarray(cmu_pixels[1000:1600, 600:1200])


@pytest.mark.parametrize(
    ("origin", "scale", "count"),
    [
        ((0, 0), 1.0, 200),  # the level's own pixels
        ((0, 0), 2.0, 150),  # 40x at exactly 0.25 µm/px read at 20x
        ((0, 0), 3.0, 100),  # non-power-of-two pyramids
        ((0, 0), 4.008, 70),  # the CMU slide (0.499 µm/px) read at 2 µm/px
        ((0, 0), 2.6667, 110),  # level 1 of a 1/3/9 pyramid at 0.25 µm/px read at 2 µm/px
        ((0, 0), 1.5, 190),
        ((0, 0), 0.992, 300),  # a 20x scan at 0.504 µm/px stretched to 0.5 (enlarged)
        ((0.75, 0.25), 1.0, 250),  # a level with a non-integer downsample: the origin falls inside a pixel
        ((0.3, 0.7), 2.37, 120),
        ((12.4, 3.9), 1.002, 200),
        ((0.5, 0.5), 0.992, 290),
        ((5.5, 0.1), 31.7, 8),  # a thumbnail block
    ],
)
def test_resize_is_the_exact_area_average_within_rounding(he_pixels, origin, scale, count):
    box = (origin[0], origin[1], origin[0] + count * scale, origin[1] + count * scale)
    resized = resize_area(he_pixels, box, (count, count))
    assert resized.shape == (count, count, 3) and resized.dtype == np.uint8
    assert np.abs(resized - exact_area(he_pixels, box, (count, count))).max() <= 1


@pytest.mark.parametrize("scale", [1.984, 1.92, 2.05])
def test_a_nominal_40x_scan_is_read_by_the_2_block_reduce_within_its_stated_blur(he_pixels, scale):
    """Dense tissue, where sharp edges are most: within the stated blur (PIL's box filter, the read before, was as far
    from the exact area average: mean 3.2-3.5, 99th percentile 25-27 on these pixels)."""
    count = int((he_pixels.shape[0] - 1) / scale)
    box = (0, 0, count * scale, count * scale)
    exact = exact_area(he_pixels, box, (count, count))
    error = np.abs(resize_area(he_pixels, box, (count, count)) - exact)
    assert error.mean() <= 3.5 and np.percentile(error, 99) <= 25


def test_a_box_of_the_levels_own_pixels_is_not_copied(he_pixels):
    view = resize_area(he_pixels, (10, 20, 110, 120), (100, 100))
    assert np.shares_memory(view, he_pixels)
    np.testing.assert_array_equal(view, he_pixels[20:120, 10:110])


def test_strided_rgb_of_an_rgba_decode_is_resampled_like_a_contiguous_copy(he_pixels):
    rgba = np.dstack([he_pixels, np.full(he_pixels.shape[:2], 255, np.uint8)])
    for scale in (2.0, 1.984, 2.37):
        box = (0, 0, 200 * scale, 200 * scale)
        np.testing.assert_array_equal(
            resize_area(rgba[..., :3], box, (200, 200)), resize_area(he_pixels, box, (200, 200))
        )


def test_area_reduce_refuses_a_factor_below_one(he_pixels):
    with pytest.raises(ValueError, match="reduce factor must be >= 1, got 0"):
        area_reduce(he_pixels, 0)


@pytest.mark.parametrize(
    ("mpp", "downsamples", "target", "origin"),
    [
        (0.25, (1, 4, 16), 0.5, (0, 0)),  # 40x read at 20x: the integer reduce
        (0.25, (1, 3, 9), 2.0, (300, 200)),  # level 1 at 0.75 µm/px, a sub-pixel origin
        (0.25, (1, 3, 9), 8.0, (0, 0)),  # level 2 at 2.25 µm/px
        (0.4, (1, 2.5, 6.25), 2.0, (500, 700)),  # non-integer downsamples, level 1 at 1 µm/px
        (0.5, (1, 3, 9), 2.0, (0, 0)),
        (0.504, (1, 4), 0.5, (100, 100)),  # a nominal 20x scan stretched
    ],
)
def test_reads_at_a_target_mpp_equal_the_exact_area_average_of_the_level_read(
    make_slide, cmu_pixels, mpp, downsamples, target, origin
):
    """Pyramids with power-of-two and other downsamples: what read_at_mpp returns is the exact area average of the
    level it reads (the reader's own pixels of that level), within rounding."""
    image = np.concatenate([cmu_pixels, cmu_pixels[:, ::-1]], axis=1)[:2880, :4320]
    slide = Slide.open(make_slide(image, mpp, "svs", downsamples, magnification=10 / mpp))
    level = level_read(slide, target).level
    scale_x, scale_y = slide.level_scale(level)
    level_pixels = slide.read_level(level, 0, 0, *slide.level_sizes[level])
    step = target / slide.mpp
    x, y = origin
    count = int(min((slide.size[0] - x) / step, (slide.size[1] - y) / step, 300))
    box = (x / scale_x, y / scale_y, (x + count * step) / scale_x, (y + count * step) / scale_y)
    read = read_at_mpp(slide, x, y, count, count, target)
    assert np.abs(read - exact_area(level_pixels, box, (count, count))).max() <= 1


def test_a_nominal_40x_region_is_the_2_block_reduce_and_its_20x_twin_agrees(make_slide, cmu_pixels):
    """The same tissue scanned at 40x (0.252 µm/px) and written as its exact 20x average: the 40x region's 20x tiles
    are within the 2-block reduce's blur of the twin's (mean <= 3.5, 99th percentile <= 25 grey levels), its 5x tiles
    closer still (mean <= 1)."""
    tissue = np.ascontiguousarray(np.concatenate([cmu_pixels, cmu_pixels[:, ::-1]], axis=1)[:2960, :4400])
    step = 0.5 / 0.252
    width, height = int(4400 / step), int(2960 / step)
    twin = np.rint(exact_area(tissue, (0, 0, width * step, height * step), (width, height))).astype(np.uint8)
    at_40x = Slide.open(make_slide(tissue, 0.252, "svs", (1, 4, 16), magnification=40, name="x40"))
    at_20x = Slide.open(make_slide(twin, 0.5, "svs", (1, 4, 16), magnification=20, name="x20"))
    plan_40x, plan_20x = plan_regions(at_40x), plan_regions(at_20x)
    region_40x, region_20x = plan_40x.regions[0], plan_20x.regions[0]
    tiles_40x, tiles_20x = read_region_tiles(at_40x, region_40x), read_region_tiles(at_20x, region_20x)
    valid = region_40x.valid_l0 & region_20x.valid_l0
    assert valid.sum() >= 20
    l0 = np.abs(tiles_40x.l0[valid].astype(int) - tiles_20x.l0[valid])
    assert l0.mean() <= 3.5 and np.percentile(l0, 99) <= 25
    inside = [plan.grid.inside(plan.grid.tile_boxes((0, 0), L1_SIDE)) for plan in (plan_40x, plan_20x)]
    both_l1 = region_40x.valid_l1 & region_20x.valid_l1 & inside[0] & inside[1]
    assert both_l1.sum() >= 1
    assert np.abs(tiles_40x.l1[both_l1].astype(int) - tiles_20x.l1[both_l1]).mean() <= 1


FORKED_READERS = """
import sys, numpy as np, cv2
from pathme.engines.region_loader import RegionDataset, SlideSource, region_loader
from pathme.wsi.regions import plan_regions
from pathme.wsi.resize import area_reduce
from pathme.wsi.slide import Slide
area_reduce(np.zeros((4096, 4096, 3), np.uint8), 2)  # the parent resamples first, as a thumbnail does
path = sys.argv[1]
regions = plan_regions(Slide.open(path)).regions
for threads in (1, 2):
    source = SlideSource(path, "s", "cucim", None, decode_threads=threads)
    loader = region_loader(RegionDataset(source, regions), num_workers=1, pin_memory=False)
    print(threads, sum(1 for _ in loader), flush=True)
"""


def test_reader_processes_forked_after_the_parent_resampled_read_their_regions(make_slide, cmu_pixels):
    """OpenCV's thread pool does not survive fork: when the parent had resampled on OpenCV's default threads, a
    DataLoader reader that set its own thread count hung for good (the whole test suite stopped at the first
    extraction). Run in a fresh process, with a deadline."""
    import subprocess
    import sys

    path = make_slide(np.ascontiguousarray(cmu_pixels[:2048, :2048]), 0.25, "svs", (1, 4), magnification=40)
    done = subprocess.run(
        [sys.executable, "-c", FORKED_READERS, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1", "2", "1"]
