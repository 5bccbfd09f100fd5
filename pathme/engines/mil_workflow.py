"""Patient-level cross-validation of any MIL aggregator; the saved fold models are evaluated, or predict on new
slides, with :class:`pathme.engines.mil_predict.MILPredict`.

Everything a run writes lives under ``output_dir``: ``cohort.csv`` (every patient it saw: included, or left out
and why; stated in one console line before training), ``folds.csv`` (the splits used, generated and seeded when
the labels have none), ``fold_<k>/model.pt``, ``predictions.csv``, ``results.csv`` (one row per fold, with the
metrics a fold could not compute and why), ``summary.csv`` (mean and sd over the folds that could be scored, and
how many those were), ``slide_summary.csv`` (one row per slide: its tokens, its heatmap, or why it has none),
``heatmaps/<slide_id>_attention.{png,geojson,nii.gz}`` and ``tensorboard/fold_<k>``. Labels are checked completely
before any training starts. A rerun reuses every fold whose saved model was trained on the same inputs (the
digest of its splits, targets, stores and settings is in the model file) and trains only the others.

Slide images are opened for heatmaps as the stores record them (:mod:`pathme.store.provenance`): the same file,
reader and µm/px as at extraction, and only while the file is the one extraction read. The stores of a run must
agree on the weights behind their features, and a fold model predicts only on features of the weights it was
trained on (:mod:`pathme.store.agreement`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from pathme.console import announce
from pathme.data.bags import BagDataset, BagIndex
from pathme.data.feature_source import PATHME
from pathme.data.folds import make_folds, write_folds
from pathme.data.label_format import SURVIVAL_LOSSES, Fold, Labels
from pathme.device import pick_device
from pathme.engines.mil import (
    MILModelConfig,
    MILTask,
    TrainSettings,
    fold_model_from,
    predict,
    read_fold_model,
    save_fold_model,
    stack_predictions,
    train_fold,
)
from pathme.engines.mil_inputs import patient_targets, positive_or_none, state_cohort, store_labels
from pathme.engines.mil_outputs import SLIDE_COLUMNS, prediction_rows, slide_rows, summarise
from pathme.engines.probe import LINEAR_PROBE, NO_INSTANCE_SCORES, probe_fold
from pathme.losses import survival_bins
from pathme.networks.mil import AGGREGATORS, AggregatorSpec, aggregator_spec
from pathme.store import config_digest
from pathme.store.atomic import set_aside, write_csv_atomic
from pathme.viz.report import ReportInputs, write_report

logger = logging.getLogger(__name__)


@dataclass
class MILRun:
    """k-fold cross-validated MIL with the aggregator named ``model`` on one feature source; :meth:`run` returns the
    summary table. ``hidden``, ``dropout`` and the settings' ``lr``/``weight_decay`` None take the member's
    defaults (:mod:`pathme.networks.mil.aggregators`); ``model_options`` are its other arguments."""

    features_dir: str | Path
    labels: str | Path
    task: str
    output_dir: str | Path
    feature_source: str = PATHME
    num_folds: int = 5
    seed: int = 0
    model: str = "abmil"
    hidden: int | None = None
    dropout: float | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    settings: TrainSettings = field(default_factory=TrainSettings)
    survival_loss: str = "nll"
    num_bins: int = 4
    heatmaps: bool = True
    heatmap_mpp: float | None = None  # µm/px of the heatmap PNGs; None: about 1,600 px on the long side
    per_slide_contrast: bool = False  # colour each heatmap by its own slide's percentiles, not the run's
    device: torch.device | str | None = None
    cache_bytes: int | None = None  # patient bags kept in memory (BagIndex); None: an eighth of the machine's
    leave_out_missing: bool = False  # leave out labelled patients without a usable store (cohort.csv) or refuse
    spec: AggregatorSpec | None = field(init=False, repr=False)  # the aggregator's entry; None: the linear probe

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.device = pick_device(self.device)
        self.heatmap_mpp = positive_or_none(self.heatmap_mpp, "heatmap_mpp")
        if self.survival_loss not in SURVIVAL_LOSSES:
            raise ValueError(f"survival_loss must be 'nll' or 'cox', got {self.survival_loss!r}")
        # an unknown name is refused before any work; the linear probe has no spec and no training settings
        if self.model not in (*AGGREGATORS, LINEAR_PROBE):
            raise ValueError(
                f"unknown MIL model {self.model!r}: choose one of {', '.join([*AGGREGATORS, LINEAR_PROBE])}"
            )
        self.spec = None if self.model == LINEAR_PROBE else aggregator_spec(self.model)
        if self.spec is not None:
            self.settings = self.settings.for_model(self.spec)

    def prepare(self) -> tuple[BagIndex, Labels, list, MILTask]:
        """Everything checked before training: stores, labels, folds and the task's head."""
        index = BagIndex(self.features_dir, self.feature_source, self.cache_bytes)
        index.check_same_slides(refuse_across_patients=True)
        labels = store_labels(self.labels, self.task, index, seed=self.seed, leave_out_missing=self.leave_out_missing)
        # both paths check the folds (no shared patient, every class in every split) before returning them
        folds = labels.folds if labels.folds is not None else make_folds(labels, self.num_folds, self.seed)
        edges: tuple[float, ...] = ()
        if labels.is_survival and self.survival_loss == "nll":
            edges = tuple(
                survival_bins(labels.table["time"].to_numpy(), labels.table["event"].to_numpy(), self.num_bins)
            )
        task = MILTask(self.task, tuple(labels.classes), self.survival_loss, edges)
        if self.spec is not None:  # a member that cannot learn the task says so before training
            aggregator_spec(self.model, task.kind)
        return index, labels, folds, task

    def run(self) -> pd.DataFrame:
        """Train and test every fold; writes cohort.csv, folds.csv, fold_<k>/model.pt, results.csv (metrics per
        fold), predictions.csv, slide_summary.csv and summary.csv (mean, sd) in ``output_dir``; returns the summary.
        Raises ValueError (LabelError) on labels that do not fit the stores, and on stores that disagree on the
        weights behind their features or hold one slide file in two patients, before anything is written."""
        index, labels, folds, task = self.prepare()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state_cohort(labels, index, self.output_dir, logger)
        write_folds(folds, self.output_dir / "folds.csv")
        targets = patient_targets(labels, np.asarray(task.bin_edges) if task.bin_edges else None)
        in_dim = index.feature_dim()
        sizes = {"hidden": self.hidden, "dropout": self.dropout, "options": dict(self.model_options)}
        config = MILModelConfig(in_dim, task.num_outputs, self.model, **sizes)
        heatmaps = self.output_dir / "heatmaps" if self.heatmaps else None
        self._state_small_validation(folds)
        results, predictions, tested = [], [], []
        desc = f"MIL {self.model} {self.task} ({self.feature_source})"
        bar = tqdm(folds, desc=desc, unit="fold", disable=not sys.stderr.isatty())
        for fold in bar:
            datasets = {split: BagDataset(index, getattr(fold, split), targets) for split in ("train", "val", "test")}
            with SummaryWriter(self.output_dir / "tensorboard" / f"fold_{fold.index}") as writer:
                records, best = self._fold_records(fold, datasets, index, targets, config, task, writer)
                stacked = stack_predictions(records, task)
                metrics = task.metrics(stacked)
                for name, value in metrics.items():
                    writer.add_scalar(f"test/{name}", value, 0)
            note = task.not_computable(stacked, metrics)
            results.append({"fold": fold.index, "patients": len(fold.test), **best, **metrics, "not_computable": note})
            predictions += prediction_rows(records, task, fold=fold.index)
            tested += [record | {"fold": fold.index} for record in records]
            logger.info("fold %d: %s", fold.index, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            if note:
                logger.warning("fold %d: %s", fold.index, note)
        no_scores = NO_INSTANCE_SCORES if self.spec is None else self.spec.cls.no_instance_scores
        slides = slide_rows(tested, index, task, heatmaps, self.heatmap_mpp, self.per_slide_contrast, no_scores)
        table = pd.DataFrame(results)
        write_csv_atomic(self.output_dir / "results.csv", table)
        write_csv_atomic(self.output_dir / "predictions.csv", pd.DataFrame(predictions))
        write_csv_atomic(self.output_dir / "slide_summary.csv", pd.DataFrame(slides, columns=SLIDE_COLUMNS))
        summary = summarise(table)
        write_csv_atomic(self.output_dir / "summary.csv", summary)
        title = f"MIL {self.model} '{self.task}' on {self.feature_source}: {len(folds)}-fold cross-validation"
        frames = (pd.DataFrame(predictions), table, summary, pd.DataFrame(slides, columns=SLIDE_COLUMNS))
        write_report(ReportInputs(title, task.classes, *frames), self.output_dir)
        return summary

    def _state_small_validation(self, folds: Sequence[Fold]) -> None:
        """One console line when folds validate on fewer than ``min_val_patients`` patients: their models are the
        last epoch's, not chosen on a validation loss (results.csv ``chosen_by`` says which)."""
        if self.spec is None:
            return
        small = [fold for fold in folds if len(fold.val) < self.settings.min_val_patients]
        if small:
            sizes = ", ".join(f"fold {fold.index}: {len(fold.val)}" for fold in small)
            announce(
                logger,
                "%d of %d folds validate on fewer than min_val_patients %d patients (%s): a loss over so few cannot "
                "choose a model, so these train max_epochs %d and keep the last weights",
                len(small),
                len(folds),
                self.settings.min_val_patients,
                sizes,
                self.settings.max_epochs,
            )

    def _fold_records(
        self,
        fold: Fold,
        datasets: Mapping[str, BagDataset],
        index: BagIndex,
        targets: Mapping[str, Any],
        config: MILModelConfig,
        task: MILTask,
        writer: SummaryWriter,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The test patients' prediction records of one fold and how its model was chosen: the linear probe fitted
        on the training and validation patients, or the aggregator's fold model (reused when its saved model was
        trained on these inputs, else trained and saved)."""
        seed = self.seed + fold.index
        if self.spec is None:
            fit_on = BagDataset(index, fold.train + fold.val, targets)
            return probe_fold(task, fit_on, datasets["test"], seed), {"chosen_by": "fit on train + validation"}
        digest = self.fold_digest(fold, index, targets, config, task)
        path = self.output_dir / f"fold_{fold.index}" / "model.pt"
        model, best = self._finished_fold(path, digest)
        if model is None:
            model, best = train_fold(
                config, task, datasets["train"], datasets["val"], self.settings, self.device, seed, writer
            )
            trained = [index.provenance(s).slide_digest for p in fold.train + fold.val for s in index.patient_slides(p)]
            provenance = index.feature_provenance
            save_fold_model(path, model, config, task, self.feature_source, digest, best, provenance, trained)
        return predict(model, task, datasets["test"], self.device), best

    def fold_digest(
        self, fold: Fold, index: BagIndex, targets: Mapping[str, Any], config: MILModelConfig, task: MILTask
    ) -> str:
        """Digest of everything a fold's model depends on: its splits, their targets and stores, the network,
        the task, the optimisation settings, the seed and the feature source."""
        patients = sorted({*fold.train, *fold.val, *fold.test})
        return config_digest(
            {
                "splits": {"train": fold.train, "val": fold.val, "test": fold.test, "index": fold.index},
                "targets": {patient: targets[patient] for patient in patients},
                "stores": {s: index.store_digest(s) for patient in patients for s in index.patient_slides(patient)},
                "model": asdict(config),
                "task": asdict(task),
                "settings": asdict(self.settings),
                "seed": self.seed,
                "feature_source": self.feature_source,
            }
        )

    def _finished_fold(self, path: Path, digest: str) -> tuple[Any, dict[str, Any]]:
        """(model, best) of a fold model at ``path`` trained on these inputs, else (None, {}). A damaged file is
        set aside (renamed, never deleted) and its fold trained again."""
        if not path.is_file():
            return None, {}
        try:
            payload = read_fold_model(path, self.device)
        except ValueError as error:
            logger.warning("%s; set aside as %s, the fold is trained again", error, set_aside(path))
            return None, {}
        if payload.get("inputs_digest") != digest:
            logger.info("%s was trained on other inputs or settings: the fold is trained again", path)
            return None, {}
        logger.info("%s: finished fold reused (same inputs and settings)", path)
        return fold_model_from(payload, self.device)[0], dict(payload["best"])
