"""Every patient of a feature folder through the saved fold models of a MIL run (:mod:`pathme.engines.mil_workflow`):
an evaluation when labels are given (metrics of the ensemble and of each fold model, ``cohort.csv``, ``metrics.csv``
and ``report.html``), otherwise inference on new slides; both write ``predictions.csv``, ``slide_summary.csv`` and
the heatmaps (:mod:`pathme.engines.mil_outputs`).

A fold model predicts only on features of the weights it was trained on (:mod:`pathme.store.agreement`), and the
slides it was trained or validated on are named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathme.data.bags import BagDataset, BagIndex
from pathme.device import pick_device
from pathme.engines.mil import MILTask, fold_model_from, predict, read_fold_model, stack_predictions
from pathme.engines.mil_inputs import patient_targets, positive_or_none, state_cohort, store_labels
from pathme.engines.mil_outputs import SLIDE_COLUMNS, prediction_rows, slide_rows, summarise
from pathme.store.agreement import check_same_features
from pathme.store.atomic import write_csv_atomic
from pathme.viz.report import ReportInputs, write_report

logger = logging.getLogger(__name__)


def fold_models(models_dir: str | Path) -> list[Path]:
    """The fold models ``fold_<k>/model.pt`` of a MIL run, in fold order; FileNotFoundError when there are none."""
    found = sorted(Path(models_dir).glob("fold_*/model.pt"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not found:
        raise FileNotFoundError(
            f"no fold models (fold_<k>/model.pt) in {models_dir}; run the MIL training first (a --model linear-probe "
            "run keeps none)"
        )
    return found


@dataclass
class MILPredict:
    """Every patient of ``features_dir`` through the saved fold models (their mean), with heatmaps.

    With ``labels`` it is an evaluation (metrics of the ensemble and of each fold model, e.g. on an external
    cohort, and its ``report.html``); without, inference on new slides.
    """

    features_dir: str | Path
    models_dir: str | Path
    output_dir: str | Path
    labels: str | Path | None = None
    heatmaps: bool = True
    heatmap_mpp: float | None = None  # as MILRun's
    per_slide_contrast: bool = False
    device: torch.device | str | None = None
    leave_out_missing: bool = False  # with labels: leave out labelled patients without a usable store, or refuse

    def __post_init__(self) -> None:
        self.heatmap_mpp = positive_or_none(self.heatmap_mpp, "heatmap_mpp")  # refused before any work

    def run(self) -> pd.DataFrame:
        """Predict every patient (mean over fold models), write predictions (and, with ``labels``, cohort.csv and
        metrics) and heatmaps to ``output_dir``; returns the predictions table. Raises ValueError when the fold
        models disagree on task, feature source or the weights behind their features, or when the stores hold
        features of other weights than the models were trained on."""
        device = pick_device(self.device)
        output = Path(self.output_dir)
        paths = fold_models(self.models_dir)
        payloads = [read_fold_model(path, device) for path in paths]
        loaded = [fold_model_from(payload, device) for payload in payloads]
        task, source = loaded[0][1], loaded[0][2]
        if any(t != task or s != source or type(m) is not type(loaded[0][0]) for m, t, s in loaded):
            raise ValueError(f"fold models in {self.models_dir} disagree on task, feature source or aggregator")
        index = BagIndex(self.features_dir, source, cache_bytes=0)  # each patient is read once
        check_models_fit(paths, payloads, index)
        index.check_same_slides(refuse_across_patients=False)  # no folds here: each copy is predicted
        targets = None
        patients = sorted(set(index.slide_patients.values()))
        if self.labels is not None:
            labels = store_labels(self.labels, task.name, index, leave_out_missing=self.leave_out_missing)
            if not task.is_survival and tuple(labels.classes) != task.classes:
                raise ValueError(f"labels {self.labels} have classes {labels.classes}, the models {list(task.classes)}")
            edges = np.asarray(task.bin_edges) if task.bin_edges else None
            targets, patients = patient_targets(labels, edges), list(labels.table.index)
            output.mkdir(parents=True, exist_ok=True)
            state_cohort(labels, index, output, logger)
        _warn_trained_on(payloads, index, patients, self.models_dir)
        dataset = BagDataset(index, patients, targets)
        per_model = [predict(model, task, dataset, device) for model, _, _ in loaded]
        records = _ensemble(per_model, task)
        output.mkdir(parents=True, exist_ok=True)
        predictions = pd.DataFrame(prediction_rows(records, task))
        write_csv_atomic(output / "predictions.csv", predictions)
        heatmaps = output / "heatmaps" if self.heatmaps else None
        no_scores = loaded[0][0].no_instance_scores
        slides = slide_rows(records, index, task, heatmaps, self.heatmap_mpp, self.per_slide_contrast, no_scores)
        slides_frame = pd.DataFrame(slides, columns=SLIDE_COLUMNS)
        write_csv_atomic(output / "slide_summary.csv", slides_frame)
        if targets is None:
            return predictions
        rows = [_scored(f"fold_{k}", r, task) for k, r in enumerate(per_model)] + [_scored("ensemble", records, task)]
        metrics = pd.DataFrame(rows)
        write_csv_atomic(output / "metrics.csv", metrics)
        fold_models_rows = metrics[metrics["model"] != "ensemble"].rename(columns={"model": "fold"})
        title = f"Evaluation of the {len(paths)} fold models of {self.models_dir} (their mean) on {self.features_dir}"
        frames = (predictions.assign(fold="ensemble"), fold_models_rows, summarise(fold_models_rows), slides_frame)
        inputs = ReportInputs(title, task.classes, *frames, pooled="fold-model ensemble", unit="fold model")
        write_report(inputs, output)
        return metrics


def check_models_fit(paths: Sequence[Path], payloads: Sequence[Mapping[str, Any]], index: BagIndex) -> None:
    """Refuse stores whose features come from other weights than the fold models were trained on (ValueError naming
    both); fold models saved before pathme recorded the weights are named in a warning, since they cannot be
    checked."""
    unrecorded = [path for path, payload in zip(paths, payloads, strict=True) if not payload.get("feature_provenance")]
    if unrecorded:
        logger.warning(
            "%s: saved by an older pathme, without the weights behind their features: the stores in %s cannot be "
            "checked against them (train again to record them)",
            ", ".join(map(str, unrecorded)),
            index.features_dir,
        )
    for path, payload in zip(paths, payloads, strict=True):
        if payload.get("feature_provenance"):
            check_same_features(payload["feature_provenance"], index.feature_provenance, path, index.features_dir)


def _warn_trained_on(
    payloads: Sequence[Mapping[str, Any]], index: BagIndex, patients: Sequence[str], models_dir: str | Path
) -> None:
    """A warning naming the slides to predict that a fold model was trained (or validated) on: their scores are
    not those of unseen slides, and metrics on them overstate the model."""
    trained = {digest for payload in payloads for digest in payload.get("training_slides", [])}
    seen = [s for p in patients for s in index.patient_slides(p) if index.provenance(s).slide_digest in trained]
    if seen:
        shown = ", ".join(repr(slide) for slide in seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
        logger.warning(
            "%d of the slides in %s were in the training or validation patients of fold models in %s (same "
            "slide_digest): %s; their predictions are not those of unseen slides, and metrics on them overstate the "
            "models",
            len(seen),
            index.features_dir,
            models_dir,
            shown,
        )


def _scored(model: str, records: list[dict[str, Any]], task: MILTask) -> dict[str, Any]:
    """One metrics row: the model's metrics on ``records`` and which could not be computed, and why."""
    stacked = stack_predictions(records, task)
    metrics = task.metrics(stacked)
    return {"model": model, **metrics, "not_computable": task.not_computable(stacked, metrics)}


def _ensemble(per_model: list[list[dict[str, Any]]], task: MILTask) -> list[dict[str, Any]]:
    """Mean scores and attention (where the models have it) over fold models, patient by patient."""
    score = "risk" if task.is_survival else "probs"
    merged = []
    for rows in zip(*per_model, strict=True):
        record = dict(rows[0])
        record[score] = np.mean([r[score] for r in rows], axis=0)
        if record["attention"] is not None:
            record["attention"] = np.mean([r["attention"] for r in rows], axis=0)
        record.pop("embedding")  # each fold model embeds in its own space: a mean of them means nothing
        merged.append(record)
    return merged
