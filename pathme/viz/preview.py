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
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pathme.cohorts.manifest import ManifestRow, read_manifest
from pathme.shards import ShardRun, WorkItem, resolve_shard
from pathme.viz.figure import SlideFigure
from pathme.viz.nifti import write_map_nifti
from pathme.wsi.grid import L0_MPP, L0_SIDE, L1_SIDE, REGION_PX
from pathme.wsi.mpp import MPP_TOLERANCE
from pathme.wsi.readers import AUTO
from pathme.wsi.regions import SlidePlan, plan_regions
from pathme.wsi.slide import Slide
from pathme.wsi.slide_error import failure_text
from pathme.wsi.tissue import TissueConfig

logger = logging.getLogger(__name__)

TISSUE_COLOUR, INK_COLOUR = "#00b050", "#ff6e00"  # outlines: green tissue, orange pen ink
REGION_COLOUR, L1_COLOUR, INVALID_COLOUR = "#dc1e1e", "#fac800", "#5a5a5a"
INVALID_ALPHA = 0.35  # the grey over 20x tiles left out, through which the slide still shows


def render_preview(plan: SlidePlan, slide: Slide, tissue_mpp: float, min_side: int = 800) -> SlideFigure:
    """The preview figure: the thumbnail in its own colours (enlarged by whole pixels to ``min_side`` on the long
    side), the tissue and pen-ink outlines, each region's border, its 5x tiles and each 20x tile without
    enough tissue greyed (not encoded), with the slide id, µm/px and plan in the title, a legend and a scale bar."""
    zoom = max(1, math.ceil(min_side / max(plan.thumbnail.shape[:2])))

    def enlarge(pixels: np.ndarray) -> np.ndarray:
        return pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)

    image = enlarge(plan.thumbnail[..., :3])
    title = (
        f"{slide.slide_id} · level 0 at {slide.mpp:.3f} µm/px ({slide.mpp_source})\n"
        f"{len(plan.regions)} region(s), {plan.valid_tiles} 20x tile(s) on tissue · tissue "
        f"{plan.tissue_fraction:.0%} of the thumbnail, pen ink {plan.ink_fraction:.1%}"
    )
    figure = SlideFigure.around(image, tissue_mpp / zoom, title)
    axes = figure.image_axes
    scale = slide.mpp / tissue_mpp * zoom  # image pixels per level-0 pixel

    def corners(boxes: np.ndarray) -> np.ndarray:
        """[N, 4] level-0 (x, y, w, h) -> [N, 4] image (x0, y0, x1, y1) at pixel edges."""
        scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
        return np.column_stack([scaled[:, :2], scaled[:, :2] + scaled[:, 2:]]) - 0.5

    def outlines(boxes: np.ndarray) -> list[np.ndarray]:
        return [np.array([[a, b], [c, b], [c, d], [a, d], [a, b]]) for a, b, c, d in corners(boxes)]

    region_um = REGION_PX * L0_MPP
    regions = np.array([[r.x, r.y, plan.grid.region_extent, plan.grid.region_extent] for r in plan.regions])
    tiles_5x = [plan.grid.tile_boxes((r.x, r.y), L1_SIDE) for r in plan.regions]
    invalid = [plan.grid.tile_boxes((r.x, r.y), L0_SIDE)[~r.valid_l0] for r in plan.regions]
    greyed = [o for boxes in invalid for o in outlines(boxes)]
    axes.add_collection(PolyCollection(greyed, facecolors=INVALID_COLOUR, edgecolors="none", alpha=INVALID_ALPHA))
    handles = [
        Patch(facecolor=INVALID_COLOUR, alpha=INVALID_ALPHA, label="20x tile with too little\ntissue: not encoded"),
        Patch(facecolor="white", edgecolor="#999999", label="20x tile on tissue"),
    ]
    layers = [
        ([o for boxes in tiles_5x for o in outlines(boxes)], L1_COLOUR, 0.8, "5x tile (16 per region)"),
        (outlines(regions) if len(regions) else [], REGION_COLOUR, 2.0, f"1.25x region\n({region_um:,.0f} µm side)"),
    ]
    for segments, colour, width, label in layers:
        axes.add_collection(LineCollection(segments, colors=colour, linewidths=width))
        handles.append(Line2D([], [], color=colour, linewidth=max(width, 1.2), label=label))
    for mask, colour, label in (
        (plan.mask, TISSUE_COLOUR, "tissue outline"),
        (plan.ink, INK_COLOUR, "pen ink outline\n(left out)"),
    ):
        if mask.any():
            axes.contour(enlarge(mask).astype(np.float32), levels=[0.5], colors=colour, linewidths=1.5)
        handles.append(Line2D([], [], color=colour, linewidth=1.5, label=label))
    axes.set_xlim(-0.5, image.shape[1] - 0.5)
    axes.set_ylim(image.shape[0] - 0.5, -0.5)
    figure.panel_axes.set_axis_off()
    figure.panel_axes.legend(handles=handles, loc="upper left", fontsize=8, frameon=False, borderaxespad=0)
    return figure


def save_preview(plan: SlidePlan, slide: Slide, tissue_mpp: float, path: str | Path) -> Path:
    """Write the preview PNG (:func:`render_preview`) atomically and return its path."""
    return render_preview(plan, slide, tissue_mpp).save(path)


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
    reader_backend: str = AUTO,
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
    rows = run.run(
        mine, lambda item, local: _preview(entries[item.key], out_dir, reader_backend, tissue, mpp_tolerance)
    )
    return rows.astype({"regions": "Int64", "valid_l0_tiles": "Int64"})


def _preview(
    entry: ManifestRow, out_dir: Path, reader_backend: str, tissue: TissueConfig, mpp_tolerance: float
) -> dict:
    """The summary row of one slide, its preview and tissue mask written."""
    record: dict = {"slide_id": entry.slide_id, "path": str(entry.path), "note": "", "error": ""}
    try:
        slide = Slide.open(
            entry.path, backend=reader_backend, mpp=entry.mpp, slide_id=entry.slide_id, mpp_tolerance=mpp_tolerance
        )
        plan = plan_regions(slide, tissue)
        preview = save_preview(plan, slide, tissue.mpp, out_dir / f"{entry.slide_id}_preview.png")
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
        "valid_l0_tiles": plan.valid_tiles,
        "tissue_fraction": round(plan.tissue_fraction, 4),
        "ink_fraction": round(plan.ink_fraction, 4),
        "preview": str(preview),
        "tissue_mask": str(mask),
        "note": "; ".join(filter(None, (slide.reader_note, plan.resampling))),
        "error": plan.reason,
    }
