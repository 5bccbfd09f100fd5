"""Patient-level cross-validation of any MIL aggregator, evaluation of saved fold models, and inference on new slides.

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
from pathme.data.labels import (
    SURVIVAL_LOSSES,
    Fold,
    Labels,
    cohort_line,
    cohort_table,
    load_labels,
    make_folds,
    write_folds,
)
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
from pathme.engines.probe import LINEAR_PROBE, NO_INSTANCE_SCORES, probe_fold
from pathme.losses import assign_bins, survival_bins
from pathme.networks.mil import AGGREGATORS, AggregatorSpec, aggregator_spec
from pathme.store import config_digest
from pathme.store.agreement import check_same_features
from pathme.store.atomic import set_aside, write_csv_atomic
from pathme.viz.heatmap import (
    AttentionMap,
    ColourScale,
    write_heatmap_geojson,
    write_slide_heatmap,
    write_top_tiles,
)
from pathme.viz.report import ReportInputs, write_report
from pathme.wsi.slide_error import SlideError, failure_text

logger = logging.getLogger(__name__)


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
        self.heatmap_mpp = _positive_or_none(self.heatmap_mpp, "heatmap_mpp")
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
        labels = _load_labels(self.labels, self.task, index, seed=self.seed, leave_out_missing=self.leave_out_missing)
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
        _state_cohort(labels, index, self.output_dir)
        write_folds(folds, self.output_dir / "folds.csv")
        targets = _targets(labels, np.asarray(task.bin_edges) if task.bin_edges else None)
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


def _positive_or_none(value: object, name: str) -> float | None:
    """``value`` as a positive float (a bundle override may give text), or None; ValueError otherwise."""
    if value is None:
        return None
    number = float(value)
    if not number > 0:
        raise ValueError(f"{name} must be a positive µm/px or null (about 1,600 px on the long side), got {value!r}")
    return number


def _load_labels(
    path: str | Path, task: str, index: BagIndex, seed: int = 0, leave_out_missing: bool = False
) -> Labels:
    """The labels checked against the stores found, with each token-less patient's reason from its stores."""
    counts = index.token_counts()
    reasons = index.empty_reasons(counts)
    return load_labels(
        path, task, counts, index.slide_patients, empty_reasons=reasons, seed=seed, leave_out_missing=leave_out_missing
    )


def _state_cohort(labels: Labels, index: BagIndex, output_dir: Path) -> None:
    """Write ``cohort.csv`` (every patient seen: included, or left out and why) and say the cohort in one line."""
    cohort = cohort_table(labels, index.slide_patients)
    write_csv_atomic(output_dir / "cohort.csv", cohort)
    announce(
        logger,
        "cohort of %s: %s (every patient in %s)",
        labels.path.name,
        cohort_line(labels, cohort),
        output_dir / "cohort.csv",
    )


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
        self.heatmap_mpp = _positive_or_none(self.heatmap_mpp, "heatmap_mpp")  # refused before any work

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
            labels = _load_labels(self.labels, task.name, index, leave_out_missing=self.leave_out_missing)
            if not task.is_survival and tuple(labels.classes) != task.classes:
                raise ValueError(f"labels {self.labels} have classes {labels.classes}, the models {list(task.classes)}")
            edges = np.asarray(task.bin_edges) if task.bin_edges else None
            targets, patients = _targets(labels, edges), list(labels.table.index)
            output.mkdir(parents=True, exist_ok=True)
            _state_cohort(labels, index, output)
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
