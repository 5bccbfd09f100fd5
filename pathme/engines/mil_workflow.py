"""Patient-level cross-validation of attention MIL, evaluation of saved fold models, and inference on new slides.

Everything a run writes lives under ``output_dir``: ``folds.csv`` (the splits used, generated and seeded when the
labels have none), ``fold_<k>/model.pt``, ``predictions.csv``, ``results.csv`` (one row per fold),
``summary.csv`` (mean and sd over folds), ``heatmaps/<slide_id>_attention.{png,geojson}`` and
``tensorboard/fold_<k>``. Labels are checked completely before any training starts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from pathme.data.bags import BagDataset, BagIndex
from pathme.data.labels import Labels, load_labels, make_folds, write_folds
from pathme.engines.mil import (
    MILModelConfig,
    MILTask,
    TrainSettings,
    load_fold_model,
    predict,
    save_fold_model,
    stack_predictions,
    train_fold,
)
from pathme.losses import assign_bins, survival_bins
from pathme.store.atomic import write_atomic
from pathme.viz.heatmap import write_heatmap_geojson, write_slide_heatmap

logger = logging.getLogger(__name__)


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _targets(labels: Labels, edges: np.ndarray | None) -> dict[str, dict[str, float | int]]:
    """Per patient the tensors a batch needs: the class code, or time, event and time bin."""
    table = labels.table
    if not labels.is_survival:
        return {patient: {"target": int(code)} for patient, code in table["target"].items()}
    bins = assign_bins(table["time"].to_numpy(), edges) if edges is not None else np.zeros(len(table), np.int64)
    return {
        patient: {"time": float(row.time), "event": float(row.event), "bin": int(b)}
        for (patient, row), b in zip(table.iterrows(), bins, strict=True)
    }


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return write_atomic(path, lambda temp: frame.to_csv(temp, index=False))


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


def write_heatmaps(
    records: Sequence[dict[str, Any]], index: BagIndex, out_dir: Path, thumbnail_mpp: float, backend: str = "cucim"
) -> list[Path]:
    """Attention of every slide of every record over its thumbnail (PNG) and as GeoJSON; slides whose image is
    gone get no PNG (their GeoJSON is still written from the store's coordinates)."""
    written = []
    for record in records:
        for position, slide_id in enumerate(record["slide_ids"]):
            rows = record["slide_index"] == position
            if not rows.any():  # a slide of the patient without tissue: nothing to draw
                continue
            args = (slide_id, record["coords"][rows], record["sizes"][rows], record["attention"][rows])
            slide_path = Path(index.slide_path(slide_id))
            if slide_path.is_file():
                written += write_slide_heatmap(
                    slide_path, out_dir, *args, thumbnail_mpp=thumbnail_mpp, backend=backend
                ).values()
            else:
                logger.warning("slide %s: image %s not found, heatmap PNG skipped", slide_id, slide_path)
                written.append(write_heatmap_geojson(out_dir, *args))
    return written


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd over folds of every metric column."""
    metrics = [c for c in results.columns if c not in ("fold", "best_epoch", "val_loss", "patients")]
    return pd.DataFrame(
        {
            "metric": metrics,
            "mean": [results[m].mean() for m in metrics],
            "sd": [results[m].std(ddof=1) if len(results) > 1 else 0.0 for m in metrics],
            "folds": len(results),
        }
    )


@dataclass
class MILRun:
    """k-fold cross-validated attention MIL on one feature source; :meth:`run` returns the summary table."""

    features_dir: str | Path
    labels: str | Path
    task: str
    output_dir: str | Path
    feature_source: str = "pathme"
    num_folds: int = 5
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # MILModelConfig fields other than in_dim/num_outputs
    settings: TrainSettings = field(default_factory=TrainSettings)
    survival_loss: str = "nll"
    num_bins: int = 4
    heatmaps: bool = True
    thumbnail_mpp: float = 16.0
    reader_backend: str = "cucim"  # reads the thumbnails of the heatmaps
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.device = _device(self.device)
        if self.survival_loss not in ("nll", "cox"):
            raise ValueError(f"survival_loss must be 'nll' or 'cox', got {self.survival_loss!r}")

    def prepare(self) -> tuple[BagIndex, Labels, list, MILTask]:
        """Everything checked before training: stores, labels, folds and the task's head."""
        index = BagIndex(self.features_dir, self.feature_source)
        labels = load_labels(self.labels, self.task, index.token_counts(), index.slide_patients, seed=self.seed)
        # both paths check the folds (no shared patient, every class in every split) before returning them
        folds = labels.folds if labels.folds is not None else make_folds(labels, self.num_folds, self.seed)
        edges: tuple[float, ...] = ()
        if labels.is_survival and self.survival_loss == "nll":
            edges = tuple(
                survival_bins(labels.table["time"].to_numpy(), labels.table["event"].to_numpy(), self.num_bins)
            )
        task = MILTask(self.task, tuple(labels.classes), self.survival_loss, edges)
        return index, labels, folds, task

    def run(self) -> pd.DataFrame:
        index, labels, folds, task = self.prepare()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_folds(folds, self.output_dir / "folds.csv")
        targets = _targets(labels, np.asarray(task.bin_edges) if task.bin_edges else None)
        in_dim = index.feature_dim()
        config = MILModelConfig(in_dim=in_dim, num_outputs=task.num_outputs, **self.model)
        results, predictions = [], []
        bar = tqdm(folds, desc=f"MIL {self.task} ({self.feature_source})", unit="fold", disable=not sys.stderr.isatty())
        for fold in bar:
            datasets = {split: BagDataset(index, getattr(fold, split), targets) for split in ("train", "val", "test")}
            with SummaryWriter(self.output_dir / "tensorboard" / f"fold_{fold.index}") as writer:
                model, best = train_fold(
                    config,
                    task,
                    datasets["train"],
                    datasets["val"],
                    self.settings,
                    self.device,
                    self.seed + fold.index,
                    writer,
                )
                records = predict(model, task, datasets["test"], self.device)
                metrics = task.metrics(stack_predictions(records, task))
                for name, value in metrics.items():
                    writer.add_scalar(f"test/{name}", value, 0)
            save_fold_model(
                self.output_dir / f"fold_{fold.index}" / "model.pt", model, config, task, self.feature_source
            )
            results.append({"fold": fold.index, "patients": len(fold.test), **best, **metrics})
            predictions += prediction_rows(records, task, fold=fold.index)
            if self.heatmaps:
                write_heatmaps(records, index, self.output_dir / "heatmaps", self.thumbnail_mpp, self.reader_backend)
            logger.info("fold %d: %s", fold.index, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        table = pd.DataFrame(results)
        _write_csv(table, self.output_dir / "results.csv")
        _write_csv(pd.DataFrame(predictions), self.output_dir / "predictions.csv")
        summary = summarise(table)
        _write_csv(summary, self.output_dir / "summary.csv")
        return summary


def fold_models(models_dir: str | Path) -> list[Path]:
    found = sorted(Path(models_dir).glob("fold_*/model.pt"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not found:
        raise FileNotFoundError(f"no fold models (fold_<k>/model.pt) in {models_dir}; run the MIL training first")
    return found


@dataclass
class MILPredict:
    """Every patient of ``features_dir`` through the saved fold models (their mean), with heatmaps.

    With ``labels`` it is an evaluation (metrics of the ensemble and of each fold model, e.g. on an external
    cohort); without, inference on new slides.
    """

    features_dir: str | Path
    models_dir: str | Path
    output_dir: str | Path
    labels: str | Path | None = None
    heatmaps: bool = True
    thumbnail_mpp: float = 16.0
    reader_backend: str = "cucim"  # reads the thumbnails of the heatmaps
    device: torch.device | str | None = None

    def run(self) -> pd.DataFrame:
        device = _device(self.device)
        output = Path(self.output_dir)
        loaded = [load_fold_model(path, device) for path in fold_models(self.models_dir)]
        task, source = loaded[0][1], loaded[0][2]
        if any(t != task or s != source for _, t, s in loaded):
            raise ValueError(f"fold models in {self.models_dir} disagree on task or feature source")
        index = BagIndex(self.features_dir, source)
        targets = None
        patients = sorted(set(index.slide_patients.values()))
        if self.labels is not None:
            labels = load_labels(self.labels, task.name, index.token_counts(), index.slide_patients)
            if not task.is_survival and tuple(labels.classes) != task.classes:
                raise ValueError(f"labels {self.labels} have classes {labels.classes}, the models {list(task.classes)}")
            edges = np.asarray(task.bin_edges) if task.bin_edges else None
            targets, patients = _targets(labels, edges), list(labels.table.index)
        dataset = BagDataset(index, patients, targets)
        per_model = [predict(model, task, dataset, device) for model, _, _ in loaded]
        records = _ensemble(per_model, task)
        output.mkdir(parents=True, exist_ok=True)
        predictions = pd.DataFrame(prediction_rows(records, task))
        _write_csv(predictions, output / "predictions.csv")
        if self.heatmaps:
            write_heatmaps(records, index, output / "heatmaps", self.thumbnail_mpp, self.reader_backend)
        if targets is None:
            return predictions
        rows = [{"model": f"fold_{k}", **task.metrics(stack_predictions(r, task))} for k, r in enumerate(per_model)]
        rows.append({"model": "ensemble", **task.metrics(stack_predictions(records, task))})
        metrics = pd.DataFrame(rows)
        _write_csv(metrics, output / "metrics.csv")
        return metrics


def _ensemble(per_model: list[list[dict[str, Any]]], task: MILTask) -> list[dict[str, Any]]:
    """Mean scores and mean attention over fold models, patient by patient."""
    score = "risk" if task.is_survival else "probs"
    merged = []
    for rows in zip(*per_model, strict=True):
        record = dict(rows[0])
        record[score] = np.mean([r[score] for r in rows], axis=0)
        record["attention"] = np.mean([r["attention"] for r in rows], axis=0)
        merged.append(record)
    return merged
