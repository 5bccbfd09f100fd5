"""A deterministic demo cohort of multi-level slides built from real H&E pixels, with known answers.

Why: the pipeline (regions -> features -> distillation -> MIL) needs slides whose labels are learnable and whose
signal sits at a known place. Tissue is a mosaic of real 256-px tiles from the CMU-1 sample slide, half from its
nuclei-richer ("dense") tiles and half from the others ("sparse"). Every slide carries two independent tasks:

* **planted** (the easy control, ``labels.csv``): "positive" slides carry one planted tumour-like block (dense,
  hematoxylin-heavy texture made from the same real pixels) aligned to the L1 grid, visible in any of its 20x
  tiles. Each positive patient has a grade in [0, 1]: the texture is darker and survival shorter the higher it is.
* **context** (``labels_context.csv``): the label lives in how tiles are *arranged*, not in any tile. Both classes
  use the same two pools in the same proportion (exactly half of a slide's tissue cells dense); a negative
  ("scattered") slide places the dense cells at random, a positive ("organised") slide places them where a smooth
  random field is highest, so they form patches whose size grows with the patient's grade (and survival
  shortens with it). Each 20x tile is one pool tile in a random orientation, so the multiset of a slide's 20x tiles
  has the same distribution in both classes; the difference shows at 5x and 1.25x, where an L1 tile or a region
  is mostly one pool or a mix of both.

Everything comes from one seeded numpy Generator, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.color import hed2rgb, rgb2hed
from tqdm import tqdm

from pathme.demo.patient_truth import PatientTruth, assign_patients, draw_truth, patient_id
from pathme.store.atomic import write_atomic
from pathme.synthetic.slides import downsample_area, write_pyramid
from pathme.wsi.grid import CHILDREN_SIDE, REGION_PX, TILE_PX
from pathme.wsi.slide import Slide
from pathme.wsi.tissue import saturation as hsv_saturation

MPP = 0.5
MAGNIFICATION = 20.0
DOWNSAMPLES = (1, 4, 16)
TILE = TILE_PX  # an L0 tile
REGION = REGION_PX  # an L2 region: 16 x 16 L0 tiles
L1_TILES = CHILDREN_SIDE  # L0 tiles per side of an L1 tile
BLOCK_TILES = 8  # side of a planted block in L0 tiles (2 x 2 L1 tiles)
BASE_SIDE = 2 * REGION  # every slide has at least 2 x 2 regions
EXTRA_SIDE = (200, 1500)  # extra px per side, so edge regions are partial
SOURCE_STRIDE = 128
SOURCE_MPP_TOLERANCE = 0.05  # relative: source pixels are pasted at 0.5 µm/px without resampling
TISSUE_MIN_FRACTION = 0.8
TISSUE_MIN_SATURATION = 0.15
TUMOUR_H_GAIN = (1.6, 1.2)  # hematoxylin optical-density gain of the planted texture: 1.6 + 1.2 x grade
TUMOUR_E_GAIN = 0.4
CONTEXT_SIGMA = (1.0, 2.0)  # smoothing (sd, in 256-px cells) of an organised slide's field: 1 + 2 x grade
PLANTED_COLUMNS = [
    "slide_id",
    "region_x",
    "region_y",
    "l0_row0",
    "l0_col0",
    "l0_rows",
    "l0_cols",
    "x",
    "y",
    "width",
    "height",
    "grade",
]


@dataclass(frozen=True)
class PlannedSlide:
    """What one slide will be: its ids, file name, format, whether it carries the planted block and whether its
    tissue is organised (the context task), with the patient's grade of each (0 for negatives)."""

    slide_id: str
    patient_id: str
    filename: str
    flavour: str
    planted: bool
    grade: float
    organised: bool = False
    context_grade: float = 0.0


def make_demo_cohort(out_dir: Path, source: Path, n_slides: int = 8, seed: int = 0) -> Path:
    """Write slides, ``manifest.csv``, ``labels.csv`` (the planted task), ``labels_context.csv`` (the context task)
    and ``planted.csv`` under ``out_dir``; return the manifest.

    Raises ValueError when ``n_slides`` < 2 or the source slide is not at about 0.5 µm/px, FileNotFoundError when it
    is missing."""
    if n_slides < 2:
        raise ValueError(f"n_slides must be at least 2 (one positive and one negative patient), got {n_slides}")
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(
            f"source slide not found: {source} (get it with pathme.demo.sample_data.fetch_sample_slide)"
        )
    out_dir = Path(out_dir)
    (out_dir / "slides").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tiles = harvest_tiles(source)
    pools = split_pools(tiles)
    stains = tumour_stains(pools[1])
    patients = assign_patients(n_slides)
    planted = draw_truth(patients[-1] + 1, rng)
    context = draw_truth(patients[-1] + 1, rng)
    plan = plan_slides(patients, planted, context, rng)
    planted_rows = []
    # Slides are drawn here in plan order (the seeded rng's draws stay the same) while the previous one is being
    # compressed and written on a second thread (PIL's resize and JPEG encoding release the GIL): at most two
    # slides' pixels in memory.
    with ThreadPoolExecutor(max_workers=1) as writer:
        written: Future | None = None
        for slide in tqdm(plan, desc="demo slides", unit="slide", disable=not sys.stderr.isatty()):
            tumour = tumour_tiles(stains, slide.grade) if slide.planted else stains[:0]
            image, rows = draw_slide(slide, pools, tumour, rng)
            planted_rows += rows
            if written is not None:
                written.result()
            written = writer.submit(_write_slide, out_dir / "slides" / slide.filename, slide.flavour, image)
        if written is not None:
            written.result()
    _write_csv(out_dir / "planted.csv", PLANTED_COLUMNS, planted_rows)
    for name, truth in (("labels.csv", planted), ("labels_context.csv", context)):
        _write_csv(out_dir / name, ["patient_id", "label", "time", "event"], truth.rows())
    manifest_rows = [[s.slide_id, f"slides/{s.filename}", s.patient_id] for s in plan]
    manifest = out_dir / "manifest.csv"
    _write_csv(manifest, ["slide_id", "path", "patient_id"], manifest_rows)
    return manifest


def harvest_tiles(source: Path) -> np.ndarray:
    """Cut overlapping 256-px tissue tiles, [N, 256, 256, 3] uint8, from the source slide's level 0."""
    slide = Slide.open(source)
    if abs(slide.mpp - MPP) > SOURCE_MPP_TOLERANCE * MPP:
        raise ValueError(f"source slide {source} is at {slide.mpp:.3f} µm/px; the demo cohort needs about {MPP}")
    width, height = slide.size
    image = slide.read_level(0, 0, 0, width, height)
    saturation, stained = _stain_maps(image)
    tiles = [
        image[y : y + TILE, x : x + TILE]
        for y in range(0, height - TILE + 1, SOURCE_STRIDE)
        for x in range(0, width - TILE + 1, SOURCE_STRIDE)
        if stained[y : y + TILE, x : x + TILE].mean() >= TISSUE_MIN_FRACTION
        and saturation[y : y + TILE, x : x + TILE].mean() >= TISSUE_MIN_SATURATION
    ]
    if len(tiles) < 8:
        raise ValueError(f"source slide {source} has only {len(tiles)} tissue tiles of {TILE} px; need at least 8")
    return np.stack(tiles)


def split_pools(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sparse, dense): the source tiles below and at or above the median mean hematoxylin optical density."""
    hematoxylin = _mean_hematoxylin(tiles)
    dense = hematoxylin >= np.median(hematoxylin)
    return tiles[~dense], tiles[dense]


def _mean_hematoxylin(tiles: np.ndarray) -> np.ndarray:
    """[N] mean hematoxylin optical density (skimage ``rgb2hed``) of each RGB tile of [N, H, W, 3]."""
    return np.array([rgb2hed(tile)[..., 0].mean() for tile in tiles])


def _stain_maps(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel HSV saturation, and whether a pixel is stained (not white: dark or saturated)."""
    saturation = hsv_saturation(image)
    return saturation, (image.min(axis=-1) < 200) | (saturation > TISSUE_MIN_SATURATION)


def plan_slides(
    patients: list[int], planted: PatientTruth, context: PatientTruth, rng: np.random.Generator
) -> list[PlannedSlide]:
    """Ids, formats (even: SVS, odd: TIFF), the planted flag (a planted-positive patient's first slide always has
    the block, a second slide by a coin flip) and the organised flag (every slide of a context-positive patient)."""
    plan = []
    for index, patient in enumerate(patients):
        first = index == 0 or patients[index - 1] != patient
        flavour = "svs" if index % 2 == 0 else "tiff"
        has_block = bool(planted.labels[patient] == 1 and (first or rng.random() < 0.5))
        slide_id = f"demo_{index:03d}"
        plan.append(
            PlannedSlide(
                slide_id,
                patient_id(patient),
                f"{slide_id}.{flavour}",
                flavour,
                has_block,
                float(planted.grades[patient]),
                bool(context.labels[patient] == 1),
                float(context.grades[patient]),
            )
        )
    return plan


def _write_slide(path: Path, flavour: str, image: np.ndarray) -> None:
    """Write one slide's level-0 ``image`` as a JPEG pyramid of ``flavour`` ('svs' or 'tiff'), atomically."""
    magnification = MAGNIFICATION if flavour == "svs" else None
    write_atomic(
        path, lambda temp: write_pyramid(temp, image, MPP, flavour, DOWNSAMPLES, magnification, compression="jpeg")
    )


def draw_slide(
    slide: PlannedSlide, pools: tuple[np.ndarray, np.ndarray], tumour: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[list]]:
    """One slide's level-0 image, [H, W, 3] uint8 at 0.5 µm/px, and its planted.csv rows.

    ``pools`` are the (sparse, dense) source tiles (:func:`split_pools`), ``tumour`` the planted texture's tiles
    (:func:`tumour_tiles`, empty unless ``slide.planted``)."""
    width, height = (BASE_SIDE + int(rng.integers(*EXTRA_SIDE)) for _ in range(2))
    focus = _draw_focus(width, height, rng)
    mask = _tissue_mask(width, height, focus, rng)
    block = np.zeros_like(mask)
    if slide.planted:
        block[_block_cells(focus)] = True
    dense = tissue_types(mask & ~block, _full_cells(width, height), slide.organised, slide.context_grade, rng)
    lut = _stain_lut(rng)
    image = np.empty((height, width, 3), dtype=np.uint8)
    tissue = tuple(lut[np.arange(3), pool] for pool in pools)
    _paste_cells(image, mask, dense, tissue, _glass_tiles(rng), rng)
    rows = []
    if slide.planted:
        x, y = focus
        side = BLOCK_TILES * TILE
        image[y : y + side, x : x + side] = _mosaic(lut[np.arange(3), tumour], side // tumour.shape[1], rng)
        rows.append(_planted_row(slide.slide_id, x, y, slide.grade))
    return image, rows


def _full_cells(width: int, height: int) -> np.ndarray:
    """[rows, cols] bool: the 256-px cells that lie wholly inside a width x height image."""
    full = np.zeros((math.ceil(height / TILE), math.ceil(width / TILE)), dtype=bool)
    full[: height // TILE, : width // TILE] = True
    return full


def tissue_types(
    tissue: np.ndarray, full: np.ndarray, organised: bool, grade: float, rng: np.random.Generator
) -> np.ndarray:
    """[rows, cols] bool, True where a tissue cell takes a dense tile (the context task).

    Of the ``tissue`` cells that are ``full`` (wholly inside the slide), exactly half (rounded down) are dense in
    both classes: those with the highest score, the score being white noise for a scattered slide (a uniformly
    random half) and the same noise smoothed by a Gaussian of sd 1 + 2 x ``grade`` cells for an organised one
    (patches). Clipped edge cells are dense by a fair coin in both classes. So a slide's multiset of full 20x tiles
    has one distribution whatever its class; only where the dense ones are differs."""
    score = rng.standard_normal(tissue.shape)
    if organised:
        score = gaussian_filter(score, CONTEXT_SIGMA[0] + CONTEXT_SIGMA[1] * grade, mode="wrap")
    cells = np.flatnonzero(tissue & full)
    dense = (rng.random(tissue.shape) < 0.5) & tissue & ~full
    dense.flat[cells[np.argsort(-score.flat[cells], kind="stable")[: len(cells) // 2]]] = True
    return dense


def _draw_focus(width: int, height: int, rng: np.random.Generator) -> tuple[int, int]:
    """Level-0 (x, y) of a block position aligned to the L1 grid, inside one region and inside the slide."""
    side = BLOCK_TILES * TILE
    starts = range(0, REGION - side + 1, L1_TILES * TILE)
    candidates = [
        (region_x + dx, region_y + dy)
        for region_y in range(0, height, REGION)
        for region_x in range(0, width, REGION)
        for dy in starts
        for dx in starts
        if region_x + dx + side <= width and region_y + dy + side <= height
    ]
    return candidates[int(rng.integers(len(candidates)))]


def _tissue_mask(width: int, height: int, focus: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Tissue cells on the 256-px grid: an ellipse over the focus block, then random ellipses up to a coverage."""
    rows, cols = math.ceil(height / TILE), math.ceil(width / TILE)
    cell_y, cell_x = np.mgrid[0:rows, 0:cols] + 0.5
    centre = (focus[1] / TILE + BLOCK_TILES / 2, focus[0] / TILE + BLOCK_TILES / 2)
    mask = _ellipse(cell_y, cell_x, centre, rng.uniform(6.0, 9.0, size=2), rng.uniform(0, math.pi))
    target = rng.uniform(0.35, 0.5)
    while mask.mean() < target:
        centre = (rng.uniform(0, rows), rng.uniform(0, cols))
        mask |= _ellipse(cell_y, cell_x, centre, rng.uniform(3.0, 8.0, size=2), rng.uniform(0, math.pi))
    mask[_block_cells(focus)] = True
    return mask


def _block_cells(focus: tuple[int, int]) -> tuple[slice, slice]:
    """(rows, cols) of the 256-px cells the block at level-0 ``focus`` (x, y) covers."""
    row0, col0 = focus[1] // TILE, focus[0] // TILE
    return slice(row0, row0 + BLOCK_TILES), slice(col0, col0 + BLOCK_TILES)


def _ellipse(
    cell_y: np.ndarray, cell_x: np.ndarray, centre: tuple[float, float], axes: np.ndarray, angle: float
) -> np.ndarray:
    dy, dx = cell_y - centre[0], cell_x - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def _stain_lut(rng: np.random.Generator) -> np.ndarray:
    """Per-slide stain jitter as [3, 256] lookup tables: each channel's optical density scaled by 0.85-1.15."""
    gains = rng.uniform(0.85, 1.15, size=3)
    levels = np.arange(256) / 255.0
    return np.round(255.0 * levels[None, :] ** gains[:, None]).astype(np.uint8)


def _glass_tiles(rng: np.random.Generator, count: int = 4) -> np.ndarray:
    """Near-white background tiles: a slight per-slide tint around 240 with +-2 grey-level noise."""
    tint = rng.integers(238, 244, size=3).astype(np.uint8)
    noise = rng.integers(0, 5, size=(count, TILE, TILE, 1), dtype=np.uint8)
    return noise + (tint - 2)


def _oriented(tile: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations by multiples of 90 degrees."""
    turned = np.rot90(tile, code % 4)
    return turned[:, ::-1] if code >= 4 else turned


def _paste_cells(
    image: np.ndarray,
    mask: np.ndarray,
    dense: np.ndarray,
    tissue: tuple[np.ndarray, np.ndarray],
    glass: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Fill every 256-px cell with a random tile of its pool (glass outside ``mask``, else dense or sparse tissue)
    in a random orientation, clipped at the edge."""
    sparse, dense_tiles = tissue
    pool = np.concatenate([sparse, dense_tiles, glass])
    starts = np.where(~mask, len(sparse) + len(dense_tiles), np.where(dense, len(sparse), 0))
    sizes = np.where(~mask, len(glass), np.where(dense, len(dense_tiles), len(sparse)))
    picks = starts + (rng.random(mask.shape) * sizes).astype(np.int64)
    codes = rng.integers(8, size=mask.shape)
    height, width = image.shape[:2]
    for (row, col), pick in np.ndenumerate(picks):
        y, x = row * TILE, col * TILE
        h, w = min(TILE, height - y), min(TILE, width - x)
        image[y : y + h, x : x + w] = _oriented(pool[pick], codes[row, col])[:h, :w]


def tumour_stains(dense: np.ndarray) -> np.ndarray:
    """Stain densities (HED) of the dense pool's tiles (:func:`split_pools`) at half size (twice the nuclei per
    area): the raw material of the planted texture."""
    half = TILE // 2
    return rgb2hed(np.stack([downsample_area(tile, (half, half)) for tile in dense]))


def tumour_tiles(stains: np.ndarray, grade: float) -> np.ndarray:
    """Tumour-like tiles of a grade: hematoxylin boosted (more the higher the grade) and eosin faded, so the
    block stands out in colour and texture."""
    graded = stains * np.array([TUMOUR_H_GAIN[0] + TUMOUR_H_GAIN[1] * grade, TUMOUR_E_GAIN, 1.0])
    return np.round(np.clip(hed2rgb(graded), 0, 1) * 255).astype(np.uint8)


def _mosaic(tiles: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """A ``count`` x ``count`` mosaic of random tiles in random orientations."""
    picks = rng.integers(len(tiles), size=(count, count))
    codes = rng.integers(8, size=(count, count))
    rows = [
        np.concatenate([_oriented(tiles[p], c) for p, c in zip(prow, crow, strict=True)], axis=1)
        for prow, crow in zip(picks, codes, strict=True)
    ]
    return np.concatenate(rows, axis=0)


def _planted_row(slide_id: str, x: int, y: int, grade: float) -> list:
    region_x, region_y = x // REGION * REGION, y // REGION * REGION
    row0, col0 = (y - region_y) // TILE, (x - region_x) // TILE
    side = BLOCK_TILES * TILE
    return [slide_id, region_x, region_y, row0, col0, BLOCK_TILES, BLOCK_TILES, x, y, side, side, f"{grade:.3f}"]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write a CSV atomically (:func:`~pathme.store.atomic.write_atomic`) with fixed line endings, for byte-identical
    reruns."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
