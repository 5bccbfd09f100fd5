"""The tables a MIL run or an evaluation of its fold models writes: ``predictions.csv`` (one row per patient),
``slide_summary.csv`` (one row per slide: its tokens, its heatmap, or why it has none) with the slides' attention
heatmaps under ``heatmaps/``, and ``summary.csv`` (mean and sd of each metric over the folds that could score it).

Slide images are opened for heatmaps as the stores record them (:mod:`pathme.store.provenance`): the same file,
reader and µm/px as at extraction, and only while the file is the one extraction read.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pathme.data.bags import BagIndex
from pathme.engines.mil import MILTask
from pathme.viz.heatmap import (
    AttentionMap,
    ColourScale,
    write_heatmap_geojson,
    write_slide_heatmap,
    write_top_tiles,
)
from pathme.wsi.slide_error import SlideError, failure_text

logger = logging.getLogger(__name__)


def prediction_rows(records: Sequence[dict[str, Any]], task: MILTask, **extra: object) -> list[dict[str, Any]]:
    """One flat row per patient: its scores (probability per class, or risk) and the targets it carries."""
    rows = []
    for record in records:
        row: dict[str, Any] = {"patient_id": record["patient_id"], **extra}
        if task.is_survival:
            row["risk"] = float(record["risk"])
        else:
            row |= {f"prob_{name}": float(p) for name, p in zip(task.classes, record["probs"], strict=True)}
            row["predicted"] = task.classes[int(np.argmax(record["probs"]))]
        row |= {key: record[key] for key in ("target", "time", "event") if key in record}
        if "target" in row:
            row["target"] = task.classes[int(row["target"])]
        rows.append(row)
    return rows


SLIDE_COLUMNS = [
    "slide_id",
    "patient_id",
    "fold",
    "tokens",
    "status",
    "png",
    "geojson",
    "nifti",
    "top_tiles",
    "top_attention",
    "note",
]


def prediction_caption(record: Mapping[str, Any], task: MILTask) -> str:
    """What a heatmap's title says the model predicted for the patient of ``record``: the class and its
    probability, or the risk with its direction (attention itself has none)."""
    if task.is_survival:
        return (
            f"predicted risk {float(record['risk']):.3g} (higher: shorter survival)\n"
            "attention: where the risk was read from, not which way it points"
        )
    probs = np.asarray(record["probs"])
    best = int(np.argmax(probs))
    return f"predicted {task.classes[best]} (p = {probs[best]:.2f})"


def slide_rows(
    records: Sequence[dict[str, Any]],
    index: BagIndex,
    task: MILTask,
    heatmaps_dir: Path | None,
    heatmap_mpp: float | None = None,
    per_slide_contrast: bool = False,
    no_scores: str = "",
) -> list[dict[str, Any]]:
    """One row per slide of every record (see ``SLIDE_COLUMNS``; a record's ``fold`` goes into its rows), drawing
    its attention heatmap into ``heatmaps_dir`` (None: no heatmaps) as PNG (over the thumbnail at ``heatmap_mpp``
    µm/px, default about 1,600 px on the long side), GeoJSON and NIfTI in level-0 µm (:mod:`pathme.viz.heatmap`).
    Every slide is coloured on one scale, the 1st-99th percentile of all the records' slides, unless
    ``per_slide_contrast``.

    A slide gets status ``done``; ``no tokens`` with the reason its store gives; ``no instance scores`` (the note
    is ``no_scores``, the aggregator's reason) when the records carry no attention; ``geojson only`` when its image
    is gone, unreadable or no longer the file extraction read (another fingerprint or size: the store's coordinates
    would be drawn on another image), the GeoJSON coming from the store's coordinates; ``failed`` on any other
    error; or ``scored`` without heatmaps. The note says why; one slide's problem never stops the others.
    """
    rows, drawn = [], []
    for record in records:
        for position, slide_id in enumerate(record["slide_ids"]):
            provenance = index.provenance(slide_id)
            tokens = record["slide_index"] == position
            row = dict.fromkeys(SLIDE_COLUMNS, "") | {"fold": record.get("fold", "")}
            row |= {"slide_id": slide_id, "patient_id": record["patient_id"], "tokens": int(tokens.sum())}
            if not tokens.any():
                rows.append(row | {"status": "no tokens", "note": provenance.no_region_reason or "no valid tile"})
                continue
            if record["attention"] is None:
                rows.append(row | {"status": "no instance scores", "note": no_scores})
                continue
            if heatmaps_dir is None:
                rows.append(row | {"status": "scored"})
                continue
            scored = (record["coords"][tokens], record["sizes"][tokens], record["attention"][tokens])
            attention = AttentionMap.paint(*scored, provenance.slide_size, provenance.mpp)
            rows.append(row)
            drawn.append((row, record, provenance, attention, scored))
    run_scale = ColourScale.of_run([attention for *_, attention, _ in drawn])
    bar = tqdm(drawn, desc="heatmaps", unit="slide", disable=not sys.stderr.isatty())  # ~1 s a slide: a bar
    for row, record, provenance, attention, scored in bar:
        slide_id = row["slide_id"]
        scale = ColourScale.of_slide(attention) if per_slide_contrast else run_scale
        try:
            slide = provenance.open_slide()
        except SlideError as error:  # the image is gone or unreadable: the store still places the tokens
            geojson = write_heatmap_geojson(heatmaps_dir, slide_id, attention, scale)
            logger.warning("slide %s: heatmap PNG skipped: %s", slide_id, error)
            row |= {"status": "geojson only", "geojson": str(geojson), "note": str(error)}
            continue
        fold = f" · fold {row['fold']}" if row["fold"] != "" else ""
        title = f"{slide_id} · patient {row['patient_id']}{fold}\n{prediction_caption(record, task)}"
        try:
            paths = write_slide_heatmap(slide, heatmaps_dir, slide_id, attention, scale, title, heatmap_mpp)
            tiles, values = write_top_tiles(slide, heatmaps_dir, slide_id, *scored)
        except Exception as error:  # one slide's heatmap, whatever went wrong, is its row; the others go on
            row |= {"status": "failed", "note": failure_text(error, slide_id, logger)}
            continue
        row |= {"status": "done", "top_tiles": str(tiles), "top_attention": " ".join(f"{v:.3g}" for v in values)}
        row |= {key: str(path) for key, path in paths.items()}
    return rows


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd of every metric over the folds that could score it; ``folds`` counts those folds and
    ``folds_total`` all of them (sd needs two scored folds, mean one; NaN otherwise)."""
    not_metrics = ("fold", "best_epoch", "epochs", "val_loss", "chosen_by", "patients", "not_computable")
    metrics = [c for c in results.columns if c not in not_metrics]
    rows = []
    for metric in metrics:
        scored = results[metric].dropna()
        rows.append(
            {
                "metric": metric,
                "mean": scored.mean() if len(scored) else float("nan"),
                "sd": scored.std(ddof=1) if len(scored) > 1 else float("nan"),
                "folds": len(scored),
                "folds_total": len(results),
            }
        )
    return pd.DataFrame(rows)
