"""Tissue and grid preview: the thumbnail with the tissue mask, pen ink, the valid L0 tiles and the region grid.

It is what a user looks at to check tissue detection and the region layout before spending hours on features.
The tissue mask itself is written beside the preview as a NIfTI image in level-0 micrometres
(:mod:`pathme.viz.nifti`), where MONAI, MONAI Label and medical viewers overlay it on the slide's other maps.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pathme.shards import ShardRun, WorkItem, resolve_shard
from pathme.store.atomic import write_atomic
from pathme.viz.nifti import write_map_nifti
from pathme.wsi.backends import AUTO
from pathme.wsi.grid import L0_SIDE, L1_SIDE
from pathme.wsi.manifest import ManifestRow, read_manifest
from pathme.wsi.mpp import MPP_TOLERANCE
from pathme.wsi.regions import SlidePlan, plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import failure_text
from pathme.wsi.tissue import TissueConfig

logger = logging.getLogger(__name__)

TISSUE_TINT = np.array([0, 170, 80], dtype=np.float32)
INK_TINT = np.array([255, 110, 0], dtype=np.float32)  # orange: what was rejected as pen ink
REGION_COLOUR, L1_COLOUR, INVALID_COLOUR = (220, 30, 30), (250, 200, 0), (90, 90, 90)


def render_preview(plan: SlidePlan, slide_mpp: float, tissue_mpp: float, min_side: int = 800) -> Image.Image:
    """An RGB image: tissue tinted green, pen ink tinted orange, invalid L0 tiles of each region crossed grey,
    L1 and region borders."""
    pixels = plan.thumbnail.astype(np.float32)
    pixels[plan.mask] = 0.75 * pixels[plan.mask] + 0.25 * TISSUE_TINT
    pixels[plan.ink] = 0.4 * pixels[plan.ink] + 0.6 * INK_TINT
    zoom = max(1, math.ceil(min_side / max(plan.thumbnail.shape[:2])))
    image = Image.fromarray(pixels.astype(np.uint8)).resize(
        (plan.thumbnail.shape[1] * zoom, plan.thumbnail.shape[0] * zoom), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(image)
    scale = slide_mpp / tissue_mpp * zoom  # preview pixels per level-0 pixel

    def outline(box: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
        x, y, w, h = box * scale
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)

    for region in plan.regions:
        origin = (region.x, region.y)
        for box, valid in zip(plan.grid.tile_boxes(origin, L0_SIDE), region.valid_l0, strict=True):
            if not valid:
                x, y, w, h = box * scale
                draw.line([x, y, x + w, y + h], fill=INVALID_COLOUR)
        for box in plan.grid.tile_boxes(origin, L1_SIDE):
            outline(box, L1_COLOUR, 1)
        outline(np.array([region.x, region.y, plan.grid.region_extent, plan.grid.region_extent]), REGION_COLOUR, 3)
    return image


def save_preview(plan: SlidePlan, slide_mpp: float, tissue_mpp: float, path: str | Path) -> Path:
    """Write the preview PNG atomically and return its path."""
    return write_atomic(path, lambda temp: render_preview(plan, slide_mpp, tissue_mpp).save(temp, format="PNG"))


SUMMARY_COLUMNS = [
    "slide_id",
    "path",
    "backend",
    "mpp",
    "mpp_source",
    "regions",
    "valid_l0_tiles",
    "tissue_fraction",
    "ink_fraction",
    "preview",
    "tissue_mask",
    "note",
    "error",
]


def preview_manifest(
    manifest: str | Path,
    out_dir: str | Path,
    backend: str = AUTO,
    tissue: TissueConfig = TissueConfig(),
    mpp_tolerance: float = MPP_TOLERANCE,
    shard: str | None = None,
) -> pd.DataFrame:
    """Write one preview per slide of a manifest (``<slide_id>_preview.png``), its tissue mask
    (``<slide_id>_tissue.nii.gz``: uint8 1 on tissue, 0 elsewhere, ``tissue.mpp`` µm per pixel, see
    :mod:`pathme.viz.nifti`) and a ``preview_summary.csv``; a slide that fails, or has no region, is reported
    there with the reason (its preview and mask are still written when it could be read) and the others go on. A
    slide is refused, or its 20x resampling noted, exactly as extraction would (``mpp_tolerance``).

    ``shard``: ``I/N``, or None for the SLURM array task, torchrun rank or all slides (:mod:`pathme.shards`); returns
    this task's rows, and ``preview_summary.csv`` holds every slide previewed so far."""
    out_dir = Path(out_dir)
    entries = {entry.slide_id: entry for entry in read_manifest(manifest)}
    run = ShardRun("preview", out_dir, resolve_shard(shard), "preview_summary.csv", SUMMARY_COLUMNS)
    items = [WorkItem(key, e.path, out_dir / f"{key}_preview.png") for key, e in entries.items()]
    mine = run.share(items, manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run.run(mine, lambda item, local: _preview(entries[item.key], out_dir, backend, tissue, mpp_tolerance))
    return rows.astype({"regions": "Int64", "valid_l0_tiles": "Int64"})


def _preview(entry: ManifestRow, out_dir: Path, backend: str, tissue: TissueConfig, mpp_tolerance: float) -> dict:
    """The summary row of one slide, its preview and tissue mask written."""
    record: dict = {"slide_id": entry.slide_id, "path": str(entry.path), "note": "", "error": ""}
    try:
        slide = Slide.open(
            entry.path, backend=backend, mpp=entry.mpp, slide_id=entry.slide_id, mpp_tolerance=mpp_tolerance
        )
        plan = plan_regions(slide, tissue)
        preview = save_preview(plan, slide.mpp, tissue.mpp, out_dir / f"{entry.slide_id}_preview.png")
        mask_path = out_dir / f"{entry.slide_id}_tissue.nii.gz"
        mask = write_map_nifti(mask_path, plan.mask, slide.mpp, tissue.mpp / slide.mpp, "pathme tissue mask")
    except Exception as error:  # one slide's failure, whatever it is, is its row; the others go on
        record["error"] = failure_text(error, entry.slide_id, logger)
        return record
    if plan.reason:
        logger.warning("slide %s: %s", entry.slide_id, plan.reason)
    return record | {
        "backend": slide.backend,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "regions": len(plan.regions),
        "valid_l0_tiles": int(sum(region.valid_l0.sum() for region in plan.regions)),
        "tissue_fraction": round(plan.tissue_fraction, 4),
        "ink_fraction": round(plan.ink_fraction, 4),
        "preview": str(preview),
        "tissue_mask": str(mask),
        "note": "; ".join(filter(None, (slide.reader_note, plan.resampling))),
        "error": plan.reason,
    }
