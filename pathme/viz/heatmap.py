"""Attention heatmaps of MIL models over slides: a PNG overlay on the thumbnail, a GeoJSON QuPath can import and
the attention grid as a NIfTI image in level-0 micrometres (:mod:`pathme.viz.nifti`) for MONAI and medical viewers.

They show where a slide-level prediction comes from. Tokens of different sizes (region-level tokens of 4096 px
next to 1024-px tiles) are painted on one grid of level-0 cells, each token spreading its score over the area
it covers, so a large token does not outshine small ones just by being large.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pathme.store.atomic import write_atomic
from pathme.viz.nifti import write_map_nifti
from pathme.wsi.reading import read_thumbnail
from pathme.wsi.slide import Slide

_VIRIDIS = np.array(  # matplotlib's viridis at 17 even steps: within 6/255 of it when interpolated linearly
    [
        [68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
        [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128], [63, 188, 115],
        [94, 201, 98], [132, 212, 75], [173, 220, 48], [216, 226, 25], [253, 231, 37],
    ],
    dtype=np.float64,
) / 255  # fmt: skip

#: per colour channel, the (positions, values) of a piecewise-linear colormap on [0, 1]
COLORMAPS: dict[str, tuple[tuple[np.ndarray, np.ndarray], ...]] = {
    "jet": (  # matplotlib's jet, exactly
        (np.array([0, 0.35, 0.66, 0.89, 1]), np.array([0, 0, 1, 1, 0.5])),
        (np.array([0, 0.125, 0.375, 0.64, 0.91, 1]), np.array([0, 0, 1, 1, 0, 0])),
        (np.array([0, 0.11, 0.34, 0.65, 1]), np.array([0.5, 1, 1, 0, 0])),
    ),
    "viridis": tuple((np.linspace(0, 1, len(_VIRIDIS)), _VIRIDIS[:, channel]) for channel in range(3)),
}


def apply_colormap(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """uint8 RGB [..., 3] for values in [0, 1] (clipped), without depending on matplotlib."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    values = np.clip(np.asarray(values, dtype=np.float64), 0, 1)
    channels = [np.interp(values, positions, levels) for positions, levels in COLORMAPS[colormap]]
    return np.rint(np.stack(channels, axis=-1) * 255).astype(np.uint8)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Values scaled to [0, 1] by their min/max, ignoring NaN; constant values map to 0."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return values
    low, span = finite.min(), finite.max() - finite.min()
    return (values - low) / (span if span > 0 else 1)


def _check_tokens(coords, sizes, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three token arrays as numpy, refused early when their shapes disagree or sizes are not positive."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(coords) == len(sizes) == len(scores):
        raise ValueError(f"coords, sizes and scores disagree: {len(coords)}, {len(sizes)} and {len(scores)} tokens")
    if np.any(sizes <= 0):
        raise ValueError("every token size must be positive")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return coords, sizes, scores


def _overlaps(start: float, side: float, cell: float, count: int) -> tuple[int, np.ndarray]:
    """First cell index and the fraction of ``side`` that falls in each cell from there on, along one axis."""
    first = max(math.floor(start / cell), 0)
    edges = np.arange(first, max(min(math.ceil((start + side) / cell), count), first) + 1) * cell
    lengths = np.minimum(edges[1:], start + side) - np.maximum(edges[:-1], start)
    return first, np.clip(lengths, 0, None) / side


def attention_grid(coords, sizes, scores, slide_size: tuple[int, int], cell: float) -> np.ndarray:
    """Scores painted on a grid of ``cell`` level-0 px per cell, [ceil(h/cell), ceil(w/cell)] float32, NaN where
    no token lies.

    Each token adds to a cell its score times the share of its area inside that cell, so a region-level token
    aligned to the grid spreads its score evenly (score / number of cells it spans, counting cells past the
    slide edge so edge regions are not brighter) and a tile of side ``cell`` fills its cell; overlapping tokens
    add up.
    """
    if cell <= 0:
        raise ValueError(f"cell must be positive, got {cell}")
    coords, sizes, scores = _check_tokens(coords, sizes, scores)
    width, height = slide_size
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    total = np.zeros((rows, cols), dtype=np.float64)
    covered = np.zeros((rows, cols), dtype=bool)
    for (x, y), side, score in zip(coords, sizes, scores, strict=True):
        top, along_y = _overlaps(y, side, cell, rows)
        left, along_x = _overlaps(x, side, cell, cols)
        share = np.outer(along_y, along_x)
        window = (slice(top, top + len(along_y)), slice(left, left + len(along_x)))
        total[window] += score * share
        covered[window] |= share > 0
    return np.where(covered, total, np.nan).astype(np.float32)


def _nearest(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """``grid`` resized to (height, width) by nearest neighbour, sampling at pixel centres (NaN kept)."""
    rows = ((np.arange(height) + 0.5) * grid.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * grid.shape[1] / width).astype(np.int64)
    return grid[np.ix_(rows, cols)]


def render_heatmap(thumbnail: np.ndarray, grid: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """uint8 RGB of the thumbnail's size: the min/max-normalised grid, stretched over the whole thumbnail by
    nearest neighbour, coloured and blended with weight ``alpha`` wherever the grid is not NaN."""
    height, width = thumbnail.shape[:2]
    values = _nearest(_normalise(np.asarray(grid, dtype=np.float64)), height, width)
    painted = ~np.isnan(values)
    colours = apply_colormap(np.nan_to_num(values), colormap).astype(np.float64)
    out = thumbnail[..., :3].astype(np.float64)
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[painted]
    return np.rint(out).astype(np.uint8)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each score, 0 for the highest; ties keep input order."""
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return ranks


def heatmap_geojson(coords, sizes, scores, slide_id: str, name: str = "attention") -> dict:
    """A GeoJSON FeatureCollection of one square tile object per token, in level-0 px, for QuPath's
    File > Import objects: the score and its rank as measurements, coloured by the normalised score."""
    coords, sizes, scores = _check_tokens(coords, sizes, scores)
    colours = apply_colormap(_normalise(scores)).tolist()
    features = []
    for (x, y), side, score, rank, colour in zip(coords, sizes, scores, _ranks(scores), colours, strict=True):
        x, y, side = float(x), float(y), float(side)
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        properties = {
            "objectType": "tile",
            "name": f"{slide_id} tile",
            "measurements": {name: float(score), f"{name}_rank": int(rank)},
            "classification": {"name": name, "color": colour},
            "color": colour,  # QuPath keeps one colour per class name; the object's own colour shows the score
        }
        features.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}
        )
    return {"type": "FeatureCollection", "features": features}


def _overlay(slide: Slide, grid: np.ndarray, cell: float, thumbnail_mpp: float) -> np.ndarray:
    """The heatmap on the slide thumbnail, with grid cells placed at their level-0 positions.

    The grid spans whole cells, past the slide edge; the thumbnail is padded white to that span before
    rendering and cropped back, so cells land where their tiles are rather than being stretched.
    """
    thumbnail = read_thumbnail(slide, thumbnail_mpp)
    per_pixel = thumbnail_mpp / slide.mpp  # level-0 px per thumbnail px
    height, width = thumbnail.shape[:2]
    spans = [math.ceil(cells * cell / per_pixel - 1e-6) for cells in grid.shape]
    padding = ((0, max(spans[0] - height, 0)), (0, max(spans[1] - width, 0)), (0, 0))
    return render_heatmap(np.pad(thumbnail, padding, constant_values=255), grid)[:height, :width]


def write_slide_heatmap(
    slide: Slide,
    out_dir: str | Path,
    slide_id: str,
    coords,
    sizes,
    scores,
    thumbnail_mpp: float = 16.0,
    cell: float | None = None,
) -> dict[str, Path]:
    """Write ``<slide_id>_attention.png`` (the overlay on the open ``slide``'s thumbnail at ``thumbnail_mpp``
    µm/px), ``<slide_id>_attention.geojson`` and ``<slide_id>_attention.nii.gz`` into ``out_dir``, each
    atomically; returns their paths under the keys ``png``, ``geojson`` and ``nifti``. ``cell`` defaults to the
    smallest token size, the finest detail the scores hold. Open the slide as its store records it
    (:meth:`pathme.store.provenance.SlideProvenance.open_slide`), so its reader and µm/px are extraction's.

    The NIfTI holds :func:`attention_grid` (float32, ``cell * slide.mpp`` µm per pixel, placed in level-0 µm as
    :mod:`pathme.viz.nifti` describes) with 0 where no token lies: an attention weight is never negative, and
    viewers and MONAI's transforms handle 0 where NaN would spread or break their intensity windows."""
    coords, sizes, scores = _check_tokens(coords, sizes, scores)
    if len(sizes) == 0:
        raise ValueError(f"slide {slide_id}: no scored tiles to draw")
    cell = float(sizes.min()) if cell is None else cell
    grid = attention_grid(coords, sizes, scores, slide.size, cell)
    overlay = Image.fromarray(_overlay(slide, grid, cell, thumbnail_mpp))
    png = write_atomic(Path(out_dir) / f"{slide_id}_attention.png", lambda path: overlay.save(path, format="PNG"))
    geojson = write_heatmap_geojson(out_dir, slide_id, coords, sizes, scores)
    values = np.nan_to_num(grid, nan=0.0)
    nifti = write_map_nifti(Path(out_dir) / f"{slide_id}_attention.nii.gz", values, slide.mpp, cell, "pathme attention")
    return {"png": png, "geojson": geojson, "nifti": nifti}


def write_heatmap_geojson(out_dir: str | Path, slide_id: str, coords, sizes, scores) -> Path:
    """Write ``<slide_id>_attention.geojson`` into ``out_dir`` atomically (also when the slide image is gone)."""
    collection = heatmap_geojson(coords, sizes, scores, slide_id)
    return write_atomic(Path(out_dir) / f"{slide_id}_attention.geojson", json.dumps(collection))


def top_tiles(coords, sizes, scores, k: int) -> np.ndarray:
    """Indices of the ``k`` highest-scoring tile-level tokens (those of the smallest size), highest first, so
    the tiles that drive a prediction can be looked at; region-level tokens are left out."""
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}")
    _, sizes, scores = _check_tokens(coords, sizes, scores)
    if len(sizes) == 0:
        return np.empty(0, dtype=np.int64)
    tiles = np.flatnonzero(np.isclose(sizes, sizes.min()))
    return tiles[np.argsort(-scores[tiles], kind="stable")[:k]]
