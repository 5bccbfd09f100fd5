"""Attention heatmaps: cells painted with known numbers, one colour scale per run, the figure's colour bar and scale
bar as pixels, QuPath GeoJSON equal to the PNG at its centres, atomic writing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from pathme.viz.figure import scale_bar_length
from pathme.viz.heatmap import (
    ALPHA,
    AttentionMap,
    ColourScale,
    default_heatmap_mpp,
    heatmap_figure,
    heatmap_geojson,
    overlay,
    top_tiles,
    write_slide_heatmap,
)
from pathme.wsi.slide import Slide

GLASS, TISSUE = (242, 242, 242), (170, 80, 160)  # slide background, an H&E-like purple
MPP = 0.5
WRITTEN = ["s1_attention.geojson", "s1_attention.nii.gz", "s1_attention.png"]


def tile_grid(side: int, size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Coords and sizes of a ``side`` x ``side`` grid of square tiles, row by row."""
    ys, xs = np.mgrid[0:side, 0:side] * size
    return np.stack([xs.ravel(), ys.ravel()], axis=1), np.full(side * side, float(size))


def tissue_image(height: int, width: int, tissue: tuple[slice, slice]) -> np.ndarray:
    """Glass with a purple block of tissue (rows, columns) and a little noise, as a slide's level 0."""
    image = np.empty((height, width, 3), dtype=np.float64)
    image[:] = GLASS
    image[tissue] = TISSUE
    noise = np.random.default_rng(0).normal(0, 2, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def blend(under: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.rint((1 - ALPHA) * under.astype(float) + ALPHA * np.asarray(colour, float))


def test_a_tile_fills_its_cell_and_region_prompts_spread_evenly_over_the_tiles_shown() -> None:
    coords = np.array([[1024, 0], [0, 0], [0, 0]])
    attention = AttentionMap.paint(coords, [1024, 4096, 4096], [2.0, 10.0, 6.0], (4096, 4096), MPP)
    grid = attention.grid
    assert grid.dtype == np.float32 and grid.shape == (4, 4)
    assert grid[0, 1] == 3.0  # the tile's 2 on top of the two prompt tokens' (10 + 6) / 16
    assert np.isnan(grid).sum() == 15  # cells under the region alone (glass, no 5x tile) are not shown
    np.testing.assert_array_equal(attention.parts[4096.0], np.ones((4, 4)))
    assert attention.footprint == "5x tile"


def test_cells_without_tokens_are_nan_and_overlaps_add() -> None:
    coords = np.array([[1024, 2048], [1024, 2048], [512, 0]])
    grid = AttentionMap.paint(coords, [1024] * 3, [0.25, 0.5, 4.0], (4000, 3000), MPP, cell=1024).grid
    assert grid.shape == (3, 4)
    assert grid[2, 1] == pytest.approx(0.75)
    assert grid[0, 0] == grid[0, 1] == pytest.approx(2.0)  # half of an unaligned tile in each cell
    assert np.isnan(grid).sum() == 12 - 3


def test_region_past_the_slide_edge_keeps_its_density() -> None:
    grid = AttentionMap.paint([[0, 2048]], [4096], [16.0], (4096, 3000), MPP, cell=1024).grid
    np.testing.assert_array_equal(grid[2], np.ones(4))
    assert np.isnan(grid[:2]).all()


def test_mismatched_or_empty_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="disagree"):
        AttentionMap.paint([[0, 0]], [1024, 1024], [1.0], (2048, 2048), MPP)
    with pytest.raises(ValueError, match="positive"):
        AttentionMap.paint([[0, 0]], [0], [1.0], (2048, 2048), MPP)
    with pytest.raises(ValueError, match="no scored tokens"):
        AttentionMap.paint(np.zeros((0, 2)), [], [], (2048, 2048), MPP)


def test_one_run_scale_gives_one_value_one_colour_on_every_slide() -> None:
    coords, sizes = tile_grid(2)
    small = AttentionMap.paint(coords, sizes, [0.1, 0.2, 0.3, 0.4], (2048, 2048), MPP)
    large = AttentionMap.paint(coords, sizes, [0.3, 0.3, 0.9, 1.0], (2048, 2048), MPP)
    run = ColourScale.of_run([small, large])
    values = np.concatenate([small.values(), large.values()])
    assert (run.low, run.high) == pytest.approx(tuple(np.percentile(values, [1, 99])))
    # 0.3 is on both slides: the same colour there, and viridis at its place on the run's scale
    np.testing.assert_array_equal(run.colours(small.grid[1, 0]), run.colours(large.grid[0, 0]))
    expected = matplotlib.colormaps["viridis"]((0.3 - run.low) / (run.high - run.low), bytes=True)[:3]
    np.testing.assert_array_equal(run.colours(np.float64(0.3)), expected)
    # per-slide contrast stretches each slide: the same 0.3 is coloured differently, and the scale says so
    own = [ColourScale.of_slide(m) for m in (small, large)]
    assert not np.array_equal(own[0].colours(np.float64(0.3)), own[1].colours(np.float64(0.3)))
    assert "do not compare across slides" in own[0].note and "run's 2 slide(s)" in run.note


def test_the_overlay_colours_tissue_in_shown_cells_and_leaves_glass_and_other_cells_alone() -> None:
    thumbnail = tissue_image(64, 64, (slice(8, 56), slice(8, 56)))  # at 32 µm/px: level-0 4096 x 4096
    coords, sizes = tile_grid(2, 2048)
    attention = AttentionMap.paint(coords[:3], sizes[:3], [1.0, 2.0, 3.0], (4096, 4096), MPP)
    scale = ColourScale(1.0, 3.0, "test")
    out = overlay(thumbnail, attention, 32.0, scale)
    for (row, col), value in {(20, 20): 1.0, (20, 40): 2.0, (40, 20): 3.0}.items():
        np.testing.assert_array_equal(out[row, col], blend(thumbnail[row, col], scale.colours(np.float64(value))))
    np.testing.assert_array_equal(out[2, 2], thumbnail[2, 2])  # glass in a shown cell: the slide as it is
    np.testing.assert_array_equal(out[40, 40], thumbnail[40, 40])  # tissue in a cell without a token


def test_the_figure_has_a_colour_bar_with_the_scale_and_a_scale_bar_in_micrometres() -> None:
    thumbnail = tissue_image(300, 400, (slice(20, 280), slice(20, 380)))
    coords, sizes = tile_grid(4, 2000)
    attention = AttentionMap.paint(coords, sizes, np.linspace(0.0, 1.5, 16), (8000, 6000), MPP)
    scale = ColourScale(0.0, 1.5, "test scale")
    figure = heatmap_figure(thumbnail, attention, 10.0, scale, "s1\npredicted tumour (p = 0.90)")
    pixels = figure.pixels().astype(int)
    np.testing.assert_array_equal(figure.image.crop(pixels), overlay(thumbnail, attention, 10.0, scale))
    # the colour bar: a column of viridis rising from its low end (bottom) to its high end (top), past the ends
    # the arrows of the values clipped
    bar = figure.parts["colour bar"].crop(pixels)
    column = bar[2:-2, bar.shape[1] // 2]  # inside the outline
    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256), bytes=True)[:, :3].astype(int)
    distance = np.abs(column[:, None, :] - lut[None]).sum(axis=2)
    on_map, nearest = distance.min(axis=1) <= 8, distance.argmin(axis=1)
    assert on_map.mean() > 0.9 and np.all(np.diff(nearest[on_map]) <= 0)
    assert nearest[on_map][0] == 255 and nearest[on_map][-1] == 0
    inner = np.flatnonzero(on_map & (nearest < 255) & (nearest > 0))
    middle = nearest[(inner[0] + inner[-1]) // 2]
    assert abs(middle - 128) <= 4  # linear in the value: the middle row is the middle of the scale
    # the scale bar: black, as long as its µm at 10 µm/px (1/5 of 4 mm is 800 µm: 500 µm, 50 px)
    assert figure.scale_bar_um == scale_bar_length(10.0, 400) == 500
    black = (figure.scale_bar.crop(pixels) < 40).all(axis=2)
    assert black.all() and black.shape[1] == 50


def test_geojson_has_one_clipped_square_per_shown_cell_equal_to_the_png_at_its_centre() -> None:
    # a region of 5x tiles running past a 3000 x 2500 slide, with its ten prompt tokens
    tiles, sizes = tile_grid(4)
    coords = np.vstack([tiles, np.zeros((10, 2))])
    sizes = np.append(sizes, np.full(10, 4096.0))
    scores = np.append(np.linspace(0.01, 0.05, 16), np.full(10, 0.05))
    attention = AttentionMap.paint(coords, sizes, scores, (3000, 2500), MPP)
    scale = ColourScale.of_run([attention])
    features = json.loads(json.dumps(heatmap_geojson(attention, scale, "s1")))["features"]
    assert len(features) == 9  # the 3 x 3 tiles that reach into the slide; none stacked, none past the edge
    grid = attention.grid
    for feature in features:
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.min() >= 0 and ring[:, 0].max() <= 3000 and ring[:, 1].max() <= 2500
        centre = ring[:4].mean(axis=0)
        value = grid[int(centre[1] // 1024), int(centre[0] // 1024)]
        measurements = feature["properties"]["measurements"]
        assert measurements["attention"] == pytest.approx(value)
        parts = measurements["from 5x tile tokens"] + measurements["from 1.25x region tokens"]
        assert parts == pytest.approx(value) and measurements["from 1.25x region tokens"] == pytest.approx(0.5 / 16)
        assert feature["properties"]["color"] == scale.colours(np.float64(value)).tolist()
    corner = next(f for f in features if f["properties"]["name"] == "s1 5x tile row 2 col 2")
    assert corner["geometry"]["coordinates"][0][2] == [3000, 2500]
    ranks = sorted(f["properties"]["measurements"]["attention rank"] for f in features)
    assert ranks == list(range(9))
    top = min(features, key=lambda f: f["properties"]["measurements"]["attention rank"])
    assert top["properties"]["measurements"]["attention"] == pytest.approx(np.nanmax(grid))


def test_the_default_heatmap_is_about_1600_px_on_its_long_side() -> None:
    assert default_heatmap_mpp((100_000, 60_000), 0.25) == pytest.approx(15.625)  # 1,600 x 960 px
    assert default_heatmap_mpp((1000, 800), 0.5) == 0.5  # never finer than level 0


def test_written_heatmap_files(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    slide = Slide.open(make_slide(tissue_image(4096, 4096, (slice(512, 3584), slice(512, 3584))), mpp=MPP))
    coords, sizes = tile_grid(4)
    attention = AttentionMap.paint(coords, sizes, np.arange(16.0), slide.size, slide.mpp)
    paths = write_slide_heatmap(slide, tmp_path / "out", "s1", attention, ColourScale.of_run([attention]), "s1")
    assert paths == {key: tmp_path / "out" / f"s1_attention.{suffix}" for key, suffix in
                     (("png", "png"), ("geojson", "geojson"), ("nifti", "nii.gz"))}  # fmt: skip
    with Image.open(paths["png"]) as image:
        assert image.mode == "RGB" and image.size[1] >= 1600  # the image itself is 1,600 px high by default
    assert len(json.loads(paths["geojson"].read_text())["features"]) == 16


def test_second_write_replaces_the_files_and_a_failed_one_leaves_them(
    make_slide: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide = Slide.open(make_slide(tissue_image(2048, 2048, (slice(0, 2048), slice(0, 2048))), mpp=MPP))
    coords, sizes = tile_grid(2)
    out = tmp_path / "out"

    def write(scores: list[float]) -> dict[str, Path]:
        attention = AttentionMap.paint(coords, sizes, scores, slide.size, slide.mpp)
        return write_slide_heatmap(slide, out, "s1", attention, ColourScale(0, 4, "fixed"), heatmap_mpp=16)

    first = write([1.0, 2.0, 3.0, 4.0])
    png_before = first["png"].read_bytes()
    second = write([4.0, 3.0, 2.0, 1.0])
    assert second == first and sorted(path.name for path in out.iterdir()) == WRITTEN
    features = json.loads(second["geojson"].read_text())["features"]
    assert [f["properties"]["measurements"]["attention"] for f in features] == [4.0, 3.0, 2.0, 1.0]
    png_after = second["png"].read_bytes()
    assert png_after != png_before

    def broken_save(image: Image.Image, path: Path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write([1.0, 1.0, 1.0, 9.0])
    assert second["png"].read_bytes() == png_after
    assert sorted(path.name for path in out.iterdir()) == WRITTEN


def test_top_tiles_ignores_region_tokens() -> None:
    coords = np.zeros((5, 2))
    sizes = np.array([1024.0, 4096.0, 1024.0, 1024.0, 1024.0])
    scores = np.array([0.3, 9.0, 0.8, 0.1, 0.5])
    np.testing.assert_array_equal(top_tiles(coords, sizes, scores, k=2), [2, 4])
    np.testing.assert_array_equal(top_tiles(coords, sizes, scores, k=10), [2, 4, 0, 3])
