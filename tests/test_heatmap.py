"""Attention heatmaps: grid painting with known numbers, overlay colours at known places, QuPath GeoJSON, writing."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathme.viz.heatmap import (
    apply_colormap,
    attention_grid,
    heatmap_geojson,
    render_heatmap,
    top_tiles,
    write_slide_heatmap,
)
from pathme.wsi.slide import Slide

GREY = 200
JET_LOW, JET_HIGH = (0, 0, 128), (128, 0, 0)  # jet at 0 and at 1
WRITTEN = ["s1_attention.geojson", "s1_attention.nii.gz", "s1_attention.png"]


def blend(colour: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    return np.rint((1 - alpha) * GREY + alpha * np.array(colour)).astype(int)


def tile_grid(side: int, size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Coords and sizes of a ``side`` x ``side`` grid of square tiles, row by row."""
    ys, xs = np.mgrid[0:side, 0:side] * size
    return np.stack([xs.ravel(), ys.ravel()], axis=1), np.full(side * side, float(size))


def test_tile_fills_its_cell_and_region_spreads_evenly() -> None:
    coords = np.array([[1024, 0], [0, 0]])
    grid = attention_grid(coords, [1024, 4096], [2.0, 16.0], slide_size=(4096, 4096), cell=1024)
    expected = np.ones((4, 4), dtype=np.float32)
    expected[0, 1] = 3.0  # the tile's 2 on top of the region's 16 / 16
    np.testing.assert_array_equal(grid, expected)
    assert grid.dtype == np.float32


def test_cells_without_tokens_are_nan_and_overlaps_add() -> None:
    coords = np.array([[1024, 2048], [1024, 2048], [512, 0]])
    grid = attention_grid(coords, [1024, 1024, 1024], [0.25, 0.5, 4.0], slide_size=(4000, 3000), cell=1024)
    assert grid.shape == (3, 4)
    assert grid[2, 1] == pytest.approx(0.75)
    assert grid[0, 0] == grid[0, 1] == pytest.approx(2.0)  # half of an unaligned tile in each cell
    assert np.isnan(grid).sum() == 12 - 3


def test_region_past_the_slide_edge_keeps_its_density() -> None:
    grid = attention_grid([[0, 2048]], [4096], [16.0], slide_size=(4096, 3000), cell=1024)
    np.testing.assert_array_equal(grid[2], np.ones(4))
    assert np.isnan(grid[:2]).all()


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="disagree"):
        attention_grid([[0, 0]], [1024, 1024], [1.0], slide_size=(2048, 2048), cell=1024)
    with pytest.raises(ValueError, match="positive"):
        heatmap_geojson([[0, 0]], [0], [1.0], "s")


@pytest.mark.parametrize(("colormap", "tolerance"), [("jet", 1), ("viridis", 6)])
def test_colormaps_follow_matplotlib(colormap: str, tolerance: int) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    values = np.arange(256) / 255  # the centres of matplotlib's 256-entry lookup table
    reference = np.rint(matplotlib.colormaps[colormap](values)[:, :3] * 255)
    assert np.abs(apply_colormap(values, colormap).astype(int) - reference).max() <= tolerance


def test_render_blends_normalised_grid_and_leaves_nan_alone() -> None:
    thumbnail = np.full((8, 8, 3), GREY, dtype=np.uint8)
    grid = np.array([[5.0, 9.0], [np.nan, 7.0]], dtype=np.float32)
    out = render_heatmap(thumbnail, grid)
    assert out.shape == thumbnail.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1, 1], blend(JET_LOW))
    np.testing.assert_array_equal(out[1, 6], blend(JET_HIGH))
    np.testing.assert_array_equal(out[6, 1], [GREY] * 3)
    np.testing.assert_array_equal(out[6, 6], blend(tuple(apply_colormap(np.array(0.5))[()])))


def test_geojson_has_one_closed_square_per_tile_with_scores() -> None:
    coords = np.array([[0, 0], [1024, 0], [0, 0]])
    sizes = np.array([1024.0, 1024.0, 4096.0])
    scores = np.array([0.2, 0.7, 0.1])
    collection = json.loads(json.dumps(heatmap_geojson(coords, sizes, scores, "s1")))
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == 3
    ring = features[1]["geometry"]["coordinates"][0]
    assert features[1]["geometry"]["type"] == "Polygon"
    assert ring == [[1024, 0], [2048, 0], [2048, 1024], [1024, 1024], [1024, 0]]
    assert features[2]["geometry"]["coordinates"][0][2] == [4096, 4096]
    properties = [feature["properties"] for feature in features]
    assert [p["measurements"]["attention"] for p in properties] == pytest.approx(scores.tolist())
    assert [p["measurements"]["attention_rank"] for p in properties] == [1, 0, 2]
    assert {p["objectType"] for p in properties} == {"tile"}
    assert properties[0]["name"] == "s1 tile"
    assert properties[1]["classification"] == {"name": "attention", "color": list(JET_HIGH)}
    assert properties[2]["classification"]["color"] == list(JET_LOW)


def test_written_overlay_colours_the_attended_tile(make_slide: Callable[..., Path], tmp_path: Path) -> None:
    slide = Slide.open(make_slide(np.full((4096, 4096, 3), GREY, dtype=np.uint8), mpp=0.5))
    coords, sizes = tile_grid(4)
    scores = np.ones(16)
    scores[6] = 10.0  # the tile at level-0 (2048, 1024): thumbnail rows 32-63, columns 64-95 at 32 px per pixel
    coords, sizes, scores = np.vstack([coords, [[0, 0]]]), np.append(sizes, 4096.0), np.append(scores, 16.0)
    paths = write_slide_heatmap(slide, tmp_path / "out", "s1", coords, sizes, scores, thumbnail_mpp=16)
    assert paths == {
        "png": tmp_path / "out/s1_attention.png",
        "geojson": tmp_path / "out/s1_attention.geojson",
        "nifti": tmp_path / "out/s1_attention.nii.gz",
    }
    image = np.asarray(Image.open(paths["png"]).convert("RGB")).astype(int)
    assert image.shape == (128, 128, 3)
    np.testing.assert_allclose(image[48, 80], blend(JET_HIGH), atol=1)
    for row, col in [(16, 16), (31, 80), (48, 63), (64, 96), (120, 120)]:
        np.testing.assert_allclose(image[row, col], blend(JET_LOW), atol=1)
    collection = json.loads(paths["geojson"].read_text())
    assert len(collection["features"]) == 17


def test_overlay_places_cells_on_their_tiles_when_the_slide_is_not_whole_cells(
    make_slide: Callable[..., Path], tmp_path: Path
) -> None:
    slide = Slide.open(make_slide(np.full((3000, 4000, 3), GREY, dtype=np.uint8), mpp=0.5))
    coords, sizes = tile_grid(4)
    scores = np.where((coords == [3072, 2048]).all(axis=1), 5.0, 1.0)  # the corner tile, partly past the edge
    paths = write_slide_heatmap(slide, tmp_path, "s2", coords, sizes, scores)
    image = np.asarray(Image.open(paths["png"]).convert("RGB")).astype(int)
    assert image.shape == (math.ceil(3000 / 32), math.ceil(4000 / 32), 3)
    np.testing.assert_allclose(image[64, 96], blend(JET_HIGH), atol=1)  # level-0 (3072, 2048): the tile's corner
    np.testing.assert_allclose(image[63, 95], blend(JET_LOW), atol=1)  # one pixel up-left: its neighbour


def test_second_write_replaces_both_files_atomically(
    make_slide: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide = Slide.open(make_slide(np.full((2048, 2048, 3), GREY, dtype=np.uint8), mpp=0.5))
    coords, sizes = tile_grid(2)
    out = tmp_path / "out"
    first = write_slide_heatmap(slide, out, "s1", coords, sizes, [1.0, 2.0, 3.0, 4.0])
    png_before = first["png"].read_bytes()
    second = write_slide_heatmap(slide, out, "s1", coords, sizes, [4.0, 3.0, 2.0, 1.0])
    assert second == first
    assert sorted(path.name for path in out.iterdir()) == WRITTEN
    measurements = [
        f["properties"]["measurements"]["attention"] for f in json.loads(second["geojson"].read_text())["features"]
    ]
    assert measurements == [4.0, 3.0, 2.0, 1.0]
    png_after = second["png"].read_bytes()
    assert png_after != png_before

    def broken_save(image: Image.Image, path: Path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_slide_heatmap(slide, out, "s1", coords, sizes, [1.0, 1.0, 1.0, 9.0])
    assert second["png"].read_bytes() == png_after
    assert sorted(path.name for path in out.iterdir()) == WRITTEN


def test_top_tiles_ignores_region_tokens() -> None:
    coords = np.zeros((5, 2))
    sizes = np.array([1024.0, 4096.0, 1024.0, 1024.0, 1024.0])
    scores = np.array([0.3, 9.0, 0.8, 0.1, 0.5])
    np.testing.assert_array_equal(top_tiles(coords, sizes, scores, k=2), [2, 4])
    np.testing.assert_array_equal(top_tiles(coords, sizes, scores, k=10), [2, 4, 0, 3])
