"""The region hierarchy: exact parent/child geometry, validity flags, and one-read multi-scale tiles."""

from __future__ import annotations

import numpy as np
import pytest

from pathme.wsi.grid import L0_PARENT, L0_SIDE, L1_SIDE, RegionGrid, l1_validity, tile_origins
from pathme.wsi.reading import read_at_mpp
from pathme.wsi.regions import plan_regions
from pathme.wsi.resize import area_reduce
from pathme.wsi.slide import Slide
from pathme.wsi.tiles import read_region_tiles

BACKGROUND = (242, 241, 244)
TISSUE = (196, 118, 172)  # pink-purple, like eosin and haematoxylin
CELL = 256  # L0 tile side in level-0 px at 0.5 µm/px


def test_the_canonical_order_of_parents():
    rows, cols = np.divmod(np.arange(256), 16)
    np.testing.assert_array_equal(L0_PARENT, (rows // 4) * 4 + cols // 4)
    assert np.bincount(L0_PARENT).tolist() == [16] * 16


@pytest.mark.parametrize(("width", "height", "mpp"), [(9000, 5000, 0.5), (20000, 17000, 0.25), (2220, 2967, 0.499)])
def test_every_l1_tile_covers_exactly_its_sixteen_l0_children(width, height, mpp):
    grid = RegionGrid(width, height, mpp)
    for origin in grid.origins():
        l0 = grid.tile_boxes(origin, L0_SIDE)
        l1 = grid.tile_boxes(origin, L1_SIDE)
        assert tuple(l0[0, :2]) == tuple(l1[0, :2]) == tuple(origin)
        for parent in range(16):
            children = l0[parent == L0_PARENT]
            assert len(children) == 16
            np.testing.assert_allclose(children[:, :2].min(axis=0), l1[parent, :2])
            np.testing.assert_allclose((children[:, :2] + children[:, 2:]).max(axis=0), l1[parent, :2] + l1[parent, 2:])
            np.testing.assert_allclose(children[:, 2:].prod(axis=1).sum(), l1[parent, 2:].prod())
        np.testing.assert_allclose(l0[-1, :2] + l0[-1, 2:], np.asarray(origin) + grid.region_extent)


@pytest.mark.parametrize(
    ("width", "height", "mpp", "shape", "extent"),
    [(9000, 5000, 0.5, (2, 3), 4096), (20000, 17000, 0.25, (3, 3), 8192), (2220, 2967, 0.499, (1, 1), 4104.208)],
)
def test_regions_tile_the_slide_from_its_origin(width, height, mpp, shape, extent):
    grid = RegionGrid(width, height, mpp)
    assert grid.shape == shape
    assert grid.region_extent == pytest.approx(extent, abs=1e-3)
    origins = grid.origins()
    assert len(origins) == shape[0] * shape[1]
    np.testing.assert_array_equal(origins[0], [0, 0])
    if shape[1] > 1:
        np.testing.assert_array_equal(origins[1], [round(extent), 0])
    assert origins[:, 0].max() < width and origins[:, 1].max() < height


def test_l1_validity_follows_the_children():
    valid_l0 = np.zeros(256, dtype=bool)
    valid_l0[[0, 16 * 5 + 7, 255]] = True
    assert np.flatnonzero(l1_validity(valid_l0)).tolist() == [0, 5, 15]


def test_l1_validity_by_hand_two_children_of_one_parent_and_lone_children():
    # L0 (row, col) -> L1 (row // 4, col // 4): (3, 3) -> 0, (4, 12) -> 7, (12, 0) -> 12; L1 tile 7 has two children
    valid_l0 = np.zeros((16, 16), dtype=bool)
    valid_l0[3, 3] = valid_l0[4, 12] = valid_l0[7, 15] = valid_l0[12, 0] = True
    expected = np.zeros(16, dtype=bool)
    expected[[0, 7, 12]] = True
    np.testing.assert_array_equal(l1_validity(valid_l0.ravel()), expected)
    assert not l1_validity(np.zeros(256, dtype=bool)).any() and l1_validity(np.ones(256, dtype=bool)).all()


def test_tile_origins_by_hand():
    # two regions of a 0.25 µm/px slide: 8192 level-0 px per region side, 512 per 20x tile, 2048 per 5x tile
    origins = np.array([[0, 0], [8192, 16384]])
    l0 = tile_origins(origins, 8192.0, L0_SIDE)
    assert l0.shape == (2, 256, 2) and l0.dtype == np.float64
    np.testing.assert_array_equal(
        l0[0, [0, 1, 15, 16, 17, 255]], [[0, 0], [512, 0], [7680, 0], [0, 512], [512, 512], [7680, 7680]]
    )
    np.testing.assert_array_equal(l0[1, 17], [8192 + 512, 16384 + 512])
    l1 = tile_origins(origins[1], 8192.0, L1_SIDE)
    assert l1.shape == (16, 2)
    np.testing.assert_array_equal(l1[[0, 3, 4, 15]], [[8192, 16384], [14336, 16384], [8192, 18432], [14336, 22528]])
    # a fractional extent (0.499 µm/px) stays fractional; callers round
    np.testing.assert_allclose(
        tile_origins(np.array([10, 20]), 4096 * 0.5 / 0.499, L1_SIDE)[5], [10 + 1024 / 0.998, 20 + 1024 / 0.998]
    )


def test_tile_boxes_are_the_tile_origins_with_the_tile_side():
    grid = RegionGrid(20000, 17000, 0.25)
    for origin in grid.origins()[[0, 5]]:
        boxes = grid.tile_boxes(origin, L1_SIDE)
        np.testing.assert_array_equal(boxes[:, :2], tile_origins(origin, grid.region_extent, L1_SIDE))
        assert (boxes[:, 2:] == grid.region_extent / L1_SIDE).all()


def _tissue_slide(make_slide, cells: list[tuple[slice, slice]], width: int, height: int):
    """A 0.5 µm/px slide whose tissue occupies exactly the given 256-px cells (row slice, col slice)."""
    rng = np.random.default_rng(3)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    tissue = np.zeros((-(-height // CELL), -(-width // CELL)), dtype=bool)
    for rows, cols in cells:
        tissue[rows, cols] = True
    for row, col in zip(*np.nonzero(tissue), strict=True):
        block = image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
        block[:] = np.clip(np.array(TISSUE) + rng.normal(0, 12, size=block.shape), 0, 255)
    image = np.clip(image + rng.normal(0, 2, size=image.shape), 0, 255).astype(np.uint8)
    return make_slide(image, 0.5, "svs", (1, 4, 16), magnification=20), tissue


def test_validity_is_false_exactly_outside_the_slide_or_off_tissue(make_slide):
    width, height = 4096 + 1500, 4096 + 700  # 2 x 2 regions, the right and bottom ones partial
    cells = [(slice(2, 10), slice(3, 13)), (slice(14, 19), slice(10, 22)), (slice(1, 4), slice(19, 22))]
    path, tissue = _tissue_slide(make_slide, cells, width, height)
    plan = plan_regions(Slide.open(path))
    assert [(region.row, region.col) for region in plan.regions] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for region in plan.regions:
        rows = region.row * 16 + np.arange(256) // 16
        cols = region.col * 16 + np.arange(256) % 16
        inside = ((cols + 1) * CELL <= width) & ((rows + 1) * CELL <= height)
        on_tissue = np.zeros(256, dtype=bool)
        known = (rows < tissue.shape[0]) & (cols < tissue.shape[1])
        on_tissue[known] = tissue[rows[known], cols[known]]
        np.testing.assert_array_equal(region.valid_l0, inside & on_tissue, err_msg=f"region {region.row, region.col}")
        np.testing.assert_array_equal(region.valid_l1, l1_validity(region.valid_l0))


def test_a_slide_smaller_than_one_region_yields_one_partial_region(cmu_slide):
    plan = plan_regions(Slide.open(cmu_slide))
    assert len(plan.regions) == 1
    region = plan.regions[0]
    assert (region.x, region.y) == (0, 0)
    assert 40 <= region.valid_l0.sum() <= 90  # the tissue strip, checked by eye on the preview
    assert not region.valid_l0.reshape(16, 16)[:, 9:].any()  # columns past x = 2220 lie outside the slide
    assert not region.valid_l0.reshape(16, 16)[12:].any()  # rows past y = 2967 likewise


def _scale_by_scale(slide: Slide, plan, region):
    """What reading each scale separately gives: L0 and L1 tiles and the L2 tile read one box at a time."""
    origin = (region.x, region.y)
    l0 = np.stack([read_at_mpp(slide, x, y, 256, 256, 0.5) for x, y, _, _ in plan.grid.tile_boxes(origin, L0_SIDE)])
    l1 = np.stack([read_at_mpp(slide, x, y, 256, 256, 2.0) for x, y, _, _ in plan.grid.tile_boxes(origin, L1_SIDE)])
    l2 = read_at_mpp(slide, region.x, region.y, 256, 256, 8.0)
    return l0, l1, l2


@pytest.mark.parametrize(("mpp", "downsamples"), [(0.5, (1, 4, 16)), (0.25, (1, 3, 9))])
def test_one_read_tiles_equal_tiles_read_scale_by_scale(make_slide, cmu_pixels, mpp, downsamples):
    """Tolerance: L0 identical; L1 and L2 within rounding (max 2 grey levels, mean < 0.6) on 0.5 µm/px pyramids,
    and within the blur of re-averaging a pre-averaged level (mean < 3, 99th percentile < 20) on 0.25 µm/px
    pyramids whose levels do not line up with the 5x and 1.25x tile grids."""
    image = np.concatenate([cmu_pixels, cmu_pixels[:, ::-1]], axis=1)[:2880, :4320]
    slide = Slide.open(make_slide(image, mpp, "svs", downsamples, magnification=10 / mpp))
    plan = plan_regions(slide)
    region = plan.regions[0]
    tiles = read_region_tiles(slide, region)
    l0, l1, l2 = _scale_by_scale(slide, plan, region)
    np.testing.assert_array_equal(tiles.l0[region.valid_l0], l0[region.valid_l0])
    l1_diff = np.abs(tiles.l1[region.valid_l1].astype(int) - l1[region.valid_l1])
    l2_diff = np.abs(tiles.l2.astype(int) - l2)
    if mpp == 0.5:
        assert l1_diff.max() <= 2 and l1_diff.mean() < 0.6
        assert l2_diff.max() <= 2 and l2_diff.mean() < 0.6
    else:
        assert l1_diff.mean() < 3 and np.percentile(l1_diff, 99) < 20
        assert l2_diff.mean() < 3 and np.percentile(l2_diff, 99) < 20


def test_one_read_tiles_of_the_cmu_slide(cmu_slide):
    slide = Slide.open(cmu_slide)
    plan = plan_regions(slide)
    region = plan.regions[0]
    tiles = read_region_tiles(slide, region)
    assert (
        tiles.l0.shape == (256, 256, 256, 3) and tiles.l1.shape == (16, 256, 256, 3) and tiles.l2.shape == (256, 256, 3)
    )
    l0, l1, l2 = _scale_by_scale(slide, plan, region)
    assert np.abs(tiles.l0[region.valid_l0].astype(int) - l0[region.valid_l0]).max() <= 1
    # at the slide's edge the one read averages tissue with white padding: compare what lies wholly inside
    inside_l1 = region.valid_l1 & plan.grid.inside(plan.grid.tile_boxes((0, 0), L1_SIDE))
    assert inside_l1.sum() >= 4
    # 0.499 µm/px: both paths are exact area averages of level 0; the one read rounds at 20x, then at 5x and 1.25x,
    # so they differ by rounding only
    l1_diff = np.abs(tiles.l1[inside_l1].astype(int) - l1[inside_l1])
    assert l1_diff.max() <= 1 and l1_diff.mean() < 0.4
    width, height = (int(side * slide.mpp / 8.0) for side in slide.size)
    l2_diff = np.abs(tiles.l2[:height, :width].astype(int) - l2[:height, :width])
    assert l2_diff.max() <= 1 and l2_diff.mean() < 0.4


def test_invalid_tiles_are_white_and_flagged(cmu_slide):
    slide = Slide.open(cmu_slide)
    region = plan_regions(slide).regions[0]
    tiles = read_region_tiles(slide, region)
    assert (tiles.l0[~tiles.valid_l0] == 255).all()
    assert (tiles.l1[~tiles.valid_l1] == 255).all()
    assert (tiles.l0[tiles.valid_l0] < 200).mean() > 0.2  # valid tiles hold stained tissue, not padding


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 16])
def test_area_reduce_is_the_block_mean_within_rounding(factor):
    """Every output pixel within 0.5 grey levels of its block's exact mean (PIL's reduce(3), used before, was not)."""
    image = np.random.default_rng(factor).integers(0, 256, (factor * 37, factor * 23, 3), dtype=np.uint8)
    exact = image.reshape(37, factor, 23, factor, 3).astype(float).mean(axis=(1, 3))
    reduced = area_reduce(image, factor)
    assert reduced.shape == (37, 23, 3) and reduced.dtype == np.uint8
    assert np.abs(reduced - exact).max() <= 0.5
