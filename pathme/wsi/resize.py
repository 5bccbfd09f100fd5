"""Area resampling of a decoded patch: what a read at a target µm/px does to the level's pixels.

Every path is an area average: an output pixel is the mean of the level's pixels under its footprint, each weighted by
how much of it the footprint covers. OpenCV's ``INTER_AREA`` computes exactly that (within 0.5 grey levels of
rounding) for any scale, with a fast path for integer factors; it is used wherever the footprint grid starts on a pixel
edge of the patch, which is every region read of extraction (regions start on level-0 pixels). Why OpenCV and not
PIL, which pathme used before: PIL's ``BOX`` filter weights each source pixel by where its centre falls, not by the
area it shares with the footprint, so at non-integer scales (1.9-2.4) it is 1.2-3.5 grey levels from the area
average on H&E on average and up to 82; and OpenCV's reduce of an 8,192² patch by 2 is 25x faster than PIL's resize
(``scripts/bench_read_speed.py``, docs/benchmarks.md "Reading speed").

Cases, by the scale ``s`` (patch pixels per output pixel):

* ``s`` 1: the level's own pixels, a view;
* ``s`` an integer (a 0.25 µm/px 40x level 0 read at 0.5 µm/px): the block mean, exact;
* ``s`` within :data:`~pathme.wsi.mpp.MPP_TOLERANCE` of 2 (an Aperio 40x scan at 0.2520 µm/px read at 20x:
  ``s = 1.984``): the exact 2-block mean, then an area resample by ``s / 2`` (under 5 %), so the costly general
  resample runs on a quarter of the pixels. The footprints stay where they are; within them the weights are those of
  2-blocks, which blurs sharp edges by up to one level pixel (against the exact area average on H&E: mean 1.6-3.3
  grey levels, 99th percentile 18-24, where PIL's box filter was at 1.7-3.5 and 20-27; tests/test_resize.py);
* any other scale: OpenCV's area average at that scale, exact.

A footprint grid that starts inside a pixel (a read whose level-0 origin falls between the pixels of the level read:
thumbnail blocks, heatmap crops, tiles read one by one) has no OpenCV path; it is averaged exactly from the integral
image (:func:`_area_from`), slower (about 2 s for a 4,096² block halved, 0.1 s for one reduced 32-fold), and never on
the region reads of extraction.
"""

from __future__ import annotations

import cv2
import numpy as np

from pathme.wsi.mpp import MPP_TOLERANCE

# OpenCV resamples on one thread unless a reader process asks for more (pathme.engines.region_loader): a thread pool
# OpenCV has started does not survive fork, and a forked child (a DataLoader worker) that then changes OpenCV's
# thread count hangs for good
cv2.setNumThreads(1)

#: the integer reduce a nominally integral scale is read with: 2, a 40x scan read at 20x (every region read of a 40x
#: slide). Its 2-blocks blur a footprint by at most one level pixel; a larger factor would blur by more (a 16-block
#: reduce, 40x read at 1.25x, by up to 15 pixels: 3.8 grey levels on average against the area average on H&E), so
#: other scales are resampled exactly
NOMINAL_FACTOR = 2
#: how far (in patch pixels) a box edge may be from a pixel edge and count as on it: float noise of level scales only
EDGE_TOLERANCE = 1e-6


def area_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of an (H, W, 3) uint8 image, within 0.5 grey levels (the rounding)
    of the exact mean: shape (round(H / factor), round(W / factor), 3), a partial block at the bottom or right edge
    being the mean of its pixels. Raises ValueError for a factor below 1."""
    if factor < 1:
        raise ValueError(f"reduce factor must be >= 1, got {factor}")
    if factor == 1:
        return image
    # the factor as fx/fy, not an output size: OpenCV takes its integer fast path only for an exact integer ratio
    return cv2.resize(image, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)


def resize_area(patch: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The area average of ``patch`` ((H, W, 3) uint8, a strided view allowed) over ``box`` (left, top, right, bottom,
    in patch pixels, inside the patch) at ``size`` (width, height): (height, width, 3) uint8, by the case of the
    module docstring.

    The result may be a view of ``patch`` (a box of exactly ``size`` pixels starting on a pixel edge)."""
    left, top, right, bottom = box
    width, height = size
    col, row = round(left), round(top)
    if abs(left - col) > EDGE_TOLERANCE or abs(top - row) > EDGE_TOLERANCE:
        return _area_from(patch, box, size)
    scale_x, scale_y = (right - left) / width, (bottom - top) / height
    patch = patch[row : row + _ceil(bottom - top), col : col + _ceil(right - left)]
    factor = _reduce_factor(scale_x, scale_y)
    if factor > 1:  # integer block means first: exact, and OpenCV's fast path
        patch = area_reduce(patch, factor)
        scale_x, scale_y = scale_x / factor, scale_y / factor
    if _is_one(scale_x) and _is_one(scale_y):
        return patch[:height, :width]
    return cv2.resize(patch, None, fx=1 / scale_x, fy=1 / scale_y, interpolation=cv2.INTER_AREA)[:height, :width]


def _is_one(scale: float) -> bool:
    return abs(scale - 1) <= EDGE_TOLERANCE


def _ceil(value: float) -> int:
    return int(np.ceil(value - EDGE_TOLERANCE))


def _reduce_factor(scale_x: float, scale_y: float) -> int:
    """The integer block reduce a read starts with: the scale itself where both axes share one integer scale, else
    :data:`NOMINAL_FACTOR` where both are within :data:`MPP_TOLERANCE` of it, else 1 (none)."""
    factor = round(scale_x)
    if factor > 1 and _is_one(scale_x / factor) and _is_one(scale_y / factor):
        return factor
    nominal = all(abs(scale / NOMINAL_FACTOR - 1) <= MPP_TOLERANCE for scale in (scale_x, scale_y))
    return NOMINAL_FACTOR if nominal else 1


def _area_from(patch: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The exact area average over a box whose edges fall inside pixels (see the module docstring).

    The sum of a piecewise-constant image over any rectangle is the integral image (OpenCV's ``integral``) at its four
    corners, and between pixel edges the integral image is bilinear, so bilinear interpolation of it at the footprint
    corners is exact. Written here because neither OpenCV (whose area grid starts on a pixel edge) nor PIL (whose box
    filter is no area average) resamples by area on a grid with a sub-pixel origin."""
    left, top, right, bottom = box
    width, height = size
    scale_x, scale_y = (right - left) / width, (bottom - top) / height
    integral = cv2.integral(np.ascontiguousarray(patch), sdepth=cv2.CV_64F)  # (H + 1, W + 1, 3): sums above-left
    rows, row_fraction = _corners(top, scale_y, height, patch.shape[0])
    cols, col_fraction = _corners(left, scale_x, width, patch.shape[1])
    row_fraction, col_fraction = row_fraction[:, None, None], col_fraction[None, :, None]
    corners = (1 - row_fraction) * (
        (1 - col_fraction) * integral[np.ix_(rows, cols)] + col_fraction * integral[np.ix_(rows, cols + 1)]
    ) + row_fraction * (
        (1 - col_fraction) * integral[np.ix_(rows + 1, cols)] + col_fraction * integral[np.ix_(rows + 1, cols + 1)]
    )
    sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    return np.rint(sums / (scale_x * scale_y)).astype(np.uint8)


def _corners(start: float, scale: float, count: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixel each of the ``count + 1`` footprint edges start + i * scale falls in along an axis of ``length``
    pixels, and how far into it, 0-1."""
    edges = np.minimum(start + np.arange(count + 1) * scale, length)
    pixels = np.minimum(np.floor(edges).astype(np.intp), length - 1)
    return pixels, edges - pixels
