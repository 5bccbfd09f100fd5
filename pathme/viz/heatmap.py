"""Attention heatmaps of MIL models over slides: a PNG figure (the slide's H&E with the attention drawn on its
tissue, a colour bar with its numbers and a scale bar), a GeoJSON QuPath imports, and the attention grid as a NIfTI
image in level-0 micrometres (:mod:`pathme.viz.nifti`) for MONAI and medical viewers. All three show one quantity.

**What is drawn.** Tokens of different sizes are painted on one grid of cells the side of the smallest token
(a 20x tile for raw 20x features, a 5x tile for PatHME tokens, a 1.25x region for region-level features): each
token adds its attention times the share of its area inside a cell, so a large token does not outshine small ones
by being large. For a PatHME token model a region's ten scale-prompt tokens all cover the whole region: their
attention is summed and spread evenly over the region's 16 5x tiles, and each 5x tile adds its own token's. A
cell is shown only where a token of the smallest size lies (a 5x tile with tissue), never on the glass a region
token spans; in the PNG, only on the tissue detected in the thumbnail, with the H&E visible around it.

**Colours** (:class:`ColourScale`): perceptually uniform (viridis), from the 1st to the 99th percentile of every
shown cell of every slide of the run, so one attention value has one colour on every slide of a run (values past
the ends take the end colours; the colour bar's arrows say so). :meth:`ColourScale.of_slide` (the MIL runs'
``per_slide_contrast``) stretches each slide's own 1st-99th percentile instead, and the colour bar says that those
colours do not compare across slides.

Attention is where a model read its prediction from, not which way it pushed it: the figure's title gives the
prediction (class and probability, or the risk and its direction for survival models).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import FormatStrFormatter
from PIL import Image

from pathme.store.atomic import write_atomic
from pathme.viz.figure import Box, SlideFigure
from pathme.viz.nifti import write_map_nifti
from pathme.wsi.grid import L0_MPP, L1_MPP, L2_MPP, TILE_PX
from pathme.wsi.reading import read_at_mpp, read_thumbnail
from pathme.wsi.slide import Slide
from pathme.wsi.tissue import TissueConfig, tissue_mask

logger = logging.getLogger(__name__)

COLORMAP = "viridis"
ALPHA = 0.6  # weight of the attention colour over the tissue
LONG_SIDE_PX = 1600  # the default heatmap's long side: readable, and a few MB of PNG for real H&E
TOP_TILES, TILE_IMAGE_PX = 4, 192  # best-attended tiles shown per slide, and their side in the picture
PERCENTILES = (1.0, 99.0)
#: footprint side in µm -> its name
FOOTPRINTS = {TILE_PX * L0_MPP: "20x tile", TILE_PX * L1_MPP: "5x tile", TILE_PX * L2_MPP: "1.25x region"}


def footprint_name(side_um: float) -> str:
    """ "20x tile", "5x tile" or "1.25x region" for a token's side in µm (within 1 %), else "<side> µm square"."""
    for known, name in FOOTPRINTS.items():
        if math.isclose(side_um, known, rel_tol=0.01):
            return name
    return f"{side_um:g} µm square"


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


@dataclass(frozen=True)
class AttentionMap:
    """One slide's token attention painted on cells (see the module docstring).

    ``parts``: per token side (level-0 px), [rows, cols] float64 of what tokens of that side add to each cell;
    ``shown``: [rows, cols] bool, cells under a token of the smallest side; ``cell``: cell side in level-0 px;
    ``slide_size``: level-0 (width, height); ``mpp``: level-0 µm/px."""

    parts: dict[float, np.ndarray]
    shown: np.ndarray
    cell: float
    slide_size: tuple[int, int]
    mpp: float

    @classmethod
    def paint(cls, coords, sizes, scores, slide_size: tuple[int, int], mpp: float, cell: float | None = None):
        """Paint tokens (``coords`` [N, 2] level-0 x, y of their top-left, ``sizes`` [N] sides in level-0 px,
        ``scores`` [N]) on cells of ``cell`` level-0 px (default: the smallest token side). Each token adds to a
        cell its score times the share of its area inside it (cells past the slide edge count, so an edge region is
        not brighter). Raises ValueError on arrays that disagree, no tokens, or a cell that is not positive."""
        coords, sizes, scores = _check_tokens(coords, sizes, scores)
        if len(sizes) == 0:
            raise ValueError("no scored tokens to draw")
        cell = float(sizes.min()) if cell is None else float(cell)
        if cell <= 0:
            raise ValueError(f"cell must be positive, got {cell}")
        width, height = slide_size
        rows, cols = math.ceil(height / cell), math.ceil(width / cell)
        parts = {float(side): np.zeros((rows, cols)) for side in np.unique(sizes)}
        shown = np.zeros((rows, cols), dtype=bool)
        smallest = sizes.min()
        for (x, y), side, score in zip(coords, sizes, scores, strict=True):
            top, along_y = _overlaps(y, side, cell, rows)
            left, along_x = _overlaps(x, side, cell, cols)
            share = np.outer(along_y, along_x)
            window = (slice(top, top + len(along_y)), slice(left, left + len(along_x)))
            parts[float(side)][window] += score * share
            if side == smallest:
                shown[window] |= share > 0
        return cls(parts, shown, cell, (int(width), int(height)), float(mpp))

    @property
    def grid(self) -> np.ndarray:
        """[rows, cols] float32: the attention of each shown cell, NaN elsewhere (what the PNG colours)."""
        return np.where(self.shown, sum(self.parts.values()), np.nan).astype(np.float32)

    @property
    def footprint(self) -> str:
        """The cell's name: "5x tile" and so on."""
        return footprint_name(self.cell * self.mpp)

    def values(self) -> np.ndarray:
        """The attention of the shown cells, in raster order."""
        return self.grid[self.shown].astype(np.float64)


@dataclass(frozen=True)
class ColourScale:
    """The mapping of attention to colour: ``low`` and ``high`` are the colour bar's ends; ``note`` says where they
    come from."""

    low: float
    high: float
    note: str

    @classmethod
    def of_run(cls, maps: Sequence[AttentionMap]) -> ColourScale:
        """One scale for every slide of a run: the 1st-99th percentile of all their shown cells."""
        values = np.concatenate([m.values() for m in maps]) if maps else np.zeros(0)
        return cls._spanning(values, f"colours: 1st-99th percentile of the run's {len(maps)} slide(s)")

    @classmethod
    def of_slide(cls, attention: AttentionMap) -> ColourScale:
        """This slide's own 1st-99th percentile: contrast within the slide, not comparable across slides."""
        return cls._spanning(attention.values(), "per-slide contrast: colours do not compare across slides")

    @classmethod
    def _spanning(cls, values: np.ndarray, note: str) -> ColourScale:
        if values.size == 0:
            return cls(0.0, 1.0, note)
        low, high = (float(v) for v in np.percentile(values, PERCENTILES))
        if high <= low:  # one value everywhere: centre it
            low, high = low - 0.5 * (abs(low) or 1.0), high + 0.5 * (abs(high) or 1.0)
        return cls(low, high, note)

    @property
    def norm(self) -> Normalize:
        """matplotlib's normalisation of this scale, clipping values past its ends."""
        return Normalize(self.low, self.high, clip=True)

    def colours(self, values: np.ndarray) -> np.ndarray:
        """uint8 RGB [..., 3] of ``values`` (NaN gives the low end's colour)."""
        values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=self.low)
        rgba = matplotlib.colormaps[COLORMAP](np.asarray(self.norm(values.ravel())), bytes=True)
        return rgba[:, :3].reshape(*values.shape, 3)


def default_heatmap_mpp(slide_size: tuple[int, int], mpp: float, long_side: int = LONG_SIDE_PX) -> float:
    """µm/px of a heatmap whose long side is ``long_side`` px (never finer than level 0)."""
    return max(mpp, max(slide_size) * mpp / long_side)


def _cell_image(grid: np.ndarray, cell_px: float, height: int, width: int) -> np.ndarray:
    """``grid`` sampled at the centres of an image of (height, width) px whose pixel is 1 / ``cell_px`` of a cell."""
    rows = np.minimum(((np.arange(height) + 0.5) / cell_px).astype(np.int64), grid.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) / cell_px).astype(np.int64), grid.shape[1] - 1)
    return grid[np.ix_(rows, cols)]


def tissue_on(thumbnail: np.ndarray, mpp: float) -> np.ndarray:
    """[H, W] bool tissue of an RGB ``thumbnail`` at ``mpp`` µm/px, detected as extraction does at its 8 µm/px
    (:func:`pathme.wsi.tissue.tissue_mask`, whose morphology at a finer scale would take seconds) and enlarged back
    with bilinear smoothing, so outlines follow the tissue rather than 8-µm steps."""
    config = TissueConfig()
    height, width = thumbnail.shape[:2]
    if mpp >= config.mpp:
        return tissue_mask(thumbnail, TissueConfig(mpp=mpp))
    factor = config.mpp / mpp
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    coarse = np.asarray(Image.fromarray(thumbnail).resize(small, Image.Resampling.BOX))
    mask = tissue_mask(coarse, TissueConfig(mpp=width * mpp / small[0]))
    enlarged = Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(enlarged) >= 0.5


def overlay(thumbnail: np.ndarray, attention: AttentionMap, thumbnail_mpp: float, scale: ColourScale) -> np.ndarray:
    """uint8 RGB of the thumbnail's size (``thumbnail_mpp`` µm/px): each shown cell's colour blended with weight
    :data:`ALPHA` over the tissue detected in the thumbnail; glass and cells not shown keep the H&E. Where no tissue
    is detected inside the shown cells (an unusual stain, a synthetic slide), the shown cells are painted whole."""
    height, width = thumbnail.shape[:2]
    values = _cell_image(attention.grid, attention.cell * attention.mpp / thumbnail_mpp, height, width)
    painted = ~np.isnan(values)
    on_tissue = painted & tissue_on(thumbnail[..., :3], thumbnail_mpp)
    if on_tissue.any():
        painted = on_tissue
    else:
        logger.info("no tissue detected under the attention: its cells are painted whole")
    out = thumbnail[..., :3].astype(np.float64)
    out[painted] = (1 - ALPHA) * out[painted] + ALPHA * scale.colours(values[painted])
    return np.rint(out).astype(np.uint8)


def heatmap_figure(
    thumbnail: np.ndarray, attention: AttentionMap, thumbnail_mpp: float, scale: ColourScale, title: str
) -> SlideFigure:
    """The heatmap PNG's figure: :func:`overlay`, ``title`` above, the colour bar (its numbers, the footprint it is
    summed over and ``scale.note``) beside it and a scale bar in µm under it."""
    figure = SlideFigure.around(overlay(thumbnail, attention, thumbnail_mpp, scale), thumbnail_mpp, title)
    figure.panel_axes.set_axis_off()
    panel = figure.panel
    box = Box(panel.left, panel.top + 16, panel.left + 22, panel.bottom - 16)  # room for the arrow tips
    mappable = ScalarMappable(norm=scale.norm, cmap=COLORMAP)
    colour_bar = figure.figure.colorbar(mappable, cax=figure.add_axes("colour bar", box), extend="both")
    colour_bar.set_label(f"attention per {attention.footprint}\n{scale.note}", fontsize=9)
    colour_bar.ax.tick_params(labelsize=9)
    colour_bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    return figure


def heatmap_geojson(attention: AttentionMap, scale: ColourScale, slide_id: str) -> dict:
    """A GeoJSON FeatureCollection for QuPath's File > Import objects: one tile object per shown cell (the
    footprint of the smallest tokens), its square clipped to the slide, in level-0 px, with the PNG's value as the
    measurement "attention", its rank ("attention rank", 0 the highest), its side in µm and, where tokens of several
    sizes add up, what each size contributed ("from 5x tile tokens", "from 1.25x region tokens"); coloured by the
    PNG's scale."""
    grid = attention.grid
    rows, cols = np.nonzero(attention.shown)
    values = grid[rows, cols].astype(np.float64)
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.argsort(-values, kind="stable")] = np.arange(len(values))
    colours = scale.colours(values).tolist()
    width, height = attention.slide_size
    side_um = attention.cell * attention.mpp
    features = []
    for row, col, value, rank, colour in zip(rows, cols, values, ranks, colours, strict=True):
        x0, y0 = float(col * attention.cell), float(row * attention.cell)
        x1, y1 = min(x0 + attention.cell, float(width)), min(y0 + attention.cell, float(height))
        if x1 <= x0 or y1 <= y0:
            continue  # wholly past the slide's edge
        measurements = {"attention": float(value), "attention rank": int(rank), "side µm": side_um}
        if len(attention.parts) > 1:
            for side, part in attention.parts.items():
                measurements[f"from {footprint_name(side * attention.mpp)} tokens"] = float(part[row, col])
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        properties = {
            "objectType": "tile",
            "name": f"{slide_id} {attention.footprint} row {row} col {col}",
            "measurements": measurements,
            "classification": {"name": f"attention per {attention.footprint}", "color": colour},
            "color": colour,  # QuPath keeps one colour per class name; the object's own colour shows the value
        }
        features.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}
        )
    return {"type": "FeatureCollection", "features": features}


def write_slide_heatmap(
    slide: Slide,
    out_dir: str | Path,
    slide_id: str,
    attention: AttentionMap,
    scale: ColourScale,
    title: str = "",
    heatmap_mpp: float | None = None,
) -> dict[str, Path]:
    """Write ``<slide_id>_attention.png`` (:func:`heatmap_figure` on the open ``slide``'s thumbnail at
    ``heatmap_mpp`` µm/px, default :func:`default_heatmap_mpp`), ``<slide_id>_attention.geojson`` and
    ``<slide_id>_attention.nii.gz`` into ``out_dir``, each atomically; returns their paths under the keys ``png``,
    ``geojson`` and ``nifti``. Open the slide as its store records it
    (:meth:`pathme.store.provenance.SlideProvenance.open_slide`), so its reader and µm/px are extraction's.

    The NIfTI holds :attr:`AttentionMap.grid` (float32, ``cell * slide.mpp`` µm per pixel, placed in level-0 µm as
    :mod:`pathme.viz.nifti` describes) with 0 where no cell is shown: an attention weight is never negative, and
    viewers and MONAI's transforms handle 0 where NaN would spread or break their intensity windows. Raises
    SlideError when the thumbnail cannot be read."""
    mpp = default_heatmap_mpp(slide.size, slide.mpp) if heatmap_mpp is None else heatmap_mpp
    figure = heatmap_figure(read_thumbnail(slide, mpp), attention, mpp, scale, title or slide_id)
    png = figure.save(Path(out_dir) / f"{slide_id}_attention.png")
    geojson = write_heatmap_geojson(out_dir, slide_id, attention, scale)
    values = np.nan_to_num(attention.grid, nan=0.0)
    nifti = write_map_nifti(
        Path(out_dir) / f"{slide_id}_attention.nii.gz", values, slide.mpp, attention.cell, "pathme attention"
    )
    return {"png": png, "geojson": geojson, "nifti": nifti}


def write_heatmap_geojson(out_dir: str | Path, slide_id: str, attention: AttentionMap, scale: ColourScale) -> Path:
    """Write ``<slide_id>_attention.geojson`` into ``out_dir`` atomically (also when the slide image is gone)."""
    collection = heatmap_geojson(attention, scale, slide_id)
    return write_atomic(Path(out_dir) / f"{slide_id}_attention.geojson", json.dumps(collection))


def write_top_tiles(
    slide: Slide, out_dir: str | Path, slide_id: str, coords, sizes, scores, k: int = TOP_TILES
) -> tuple[Path, np.ndarray]:
    """Write ``<slide_id>_top_tiles.png``: the ``k`` best-attended tiles (:func:`top_tiles`), highest first, side by
    side at :data:`TILE_IMAGE_PX` px each, read at their own scale; returns its path and their attention values."""
    coords, sizes, scores = _check_tokens(coords, sizes, scores)
    chosen = top_tiles(coords, sizes, scores, k)
    gap = np.full((TILE_IMAGE_PX, 4, 3), 255, dtype=np.uint8)  # white between the tiles
    parts = []
    for token in chosen:
        x, y = coords[token]
        parts += [gap, read_at_mpp(slide, x, y, TILE_IMAGE_PX, TILE_IMAGE_PX, sizes[token] * slide.mpp / TILE_IMAGE_PX)]
    image = Image.fromarray(np.concatenate(parts[1:], axis=1) if parts else gap[:, :1])
    path = write_atomic(Path(out_dir) / f"{slide_id}_top_tiles.png", lambda temp: image.save(temp, format="PNG"))
    return path, scores[chosen]


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
