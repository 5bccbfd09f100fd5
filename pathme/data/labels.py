"""Labels read and checked against the feature stores, before any training starts.

Why: a label file that silently loses patients, puts one patient in two folds or leaves a class out of a test
fold gives metrics that look fine and mean nothing. Every such problem is found when the file is loaded, and
reported with the file, the column, the offending ids and the fix. The file's format is
:mod:`pathme.data.label_format`; its columns are checked in :mod:`pathme.data.label_csv`, its folds in
:mod:`pathme.data.folds`.

The cohort a run evaluates is stated, never guessed: one class written two ways ('LUAD' and 'luad', '1' and '1.0')
is refused instead of becoming a class of its own; a labelled patient without a usable store is refused unless
``leave_out_missing`` says to leave such patients out; and :func:`pathme.data.inclusion.cohort_table` /
:func:`pathme.data.inclusion.cohort_line` say which patients a run includes, which it leaves out and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pathme.data.folds import check_folds, folds_from_columns
from pathme.data.label_csv import read_label_rows
from pathme.data.label_format import (
    ID_COLUMNS,
    SHOWN,
    SURVIVAL,
    LabelError,
    Labels,
    ids_text,
    rows_text,
    stack_text,
)
from pathme.data.label_spelling import each_written_otherwise, written_otherwise

logger = logging.getLogger(__name__)

LEAVE_OUT = "or leave such patients out of the run (pathme mil --leave-out-missing, config id leave_out_missing)"


def _to_patients(
    rows: pd.DataFrame, slide_patients: Mapping[str, str] | None, path: Path, leave_out: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slide rows -> one row per patient (its first slide's row), after checking the slides exist and agree; with
    ``leave_out`` the rows of slides without a store are returned apart (with their reason) instead of refused."""
    if slide_patients is None:
        raise LabelError(
            f"labels {path}: rows are keyed by 'slide_id' but no slide -> patient mapping was given; "
            "add a 'patient_id' column to the labels or pass the mapping of the feature stores"
        )
    patients = rows["slide_id"].map(lambda slide: slide_patients.get(slide))
    unknown = patients.isna()
    if unknown.any() and not leave_out:
        raise LabelError(
            f"labels {path}: {rows_text(rows[unknown], 'slide_id')} name slides with no feature store"
            f"{written_otherwise(rows['slide_id'][unknown], slide_patients)}; extract those slides or remove their "
            f"rows, {LEAVE_OUT}"
        )
    gone = rows[unknown].assign(patient_id="", reason=[f"slide {s!r} has no store" for s in rows["slide_id"][unknown]])
    rows = rows[~unknown].assign(patient_id=patients[~unknown].astype(str))
    values = [column for column in rows.columns if column not in ID_COLUMNS]
    differs = rows.groupby("patient_id")[values].nunique().gt(1)
    conflicting = differs.index[differs.any(axis=1)]
    if len(conflicting):
        columns = [column for column in values if differs.loc[conflicting, column].any()]
        cases = "; ".join(
            f"patient {patient!r}: slides {ids_text(rows.loc[rows['patient_id'] == patient, 'slide_id'])}"
            for patient in conflicting[:SHOWN]
        )
        raise LabelError(
            f"labels {path}: slides of one patient disagree on column(s) {', '.join(map(repr, columns))} ({cases}); "
            "give every slide of a patient the same values, or key the file by 'patient_id'"
        )
    return rows.drop_duplicates("patient_id").drop(columns="slide_id"), gone


def _check_features(
    rows: pd.DataFrame,
    feature_patients: Mapping[str, int],
    empty_reasons: Mapping[str, str],
    path: Path,
    leave_out: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows whose patients have feature tokens, and the patients the run leaves out with the reason: labelled
    ones without a store or without a valid token (refused unless ``leave_out``), and store patients without a
    label row (left out with a warning)."""
    patient = rows["patient_id"]
    unknown = ~patient.isin(list(feature_patients))
    if unknown.any() and not leave_out:
        raise LabelError(
            f"labels {path}: {rows_text(rows[unknown], 'patient_id')} name patients with no feature store"
            f"{written_otherwise(patient[unknown], feature_patients)}; extract their slides or remove those rows, "
            f"{LEAVE_OUT}"
        )
    empty = ~unknown & patient.map(lambda p: feature_patients.get(p) == 0)
    if empty.any() and not leave_out:
        why = "; ".join(f"{p!r}: {empty_reasons.get(p, 'no valid tile')}" for p in patient[empty][:SHOWN])
        raise LabelError(
            f"labels {path}: {rows_text(rows[empty], 'patient_id')} name patients whose stores hold no valid feature "
            f"token ({why}); fix those slides (see their previews) or remove those rows, {LEAVE_OUT}"
        )
    reasons = pd.Series("", index=rows.index)
    reasons[unknown] = [f"no store{text}" for text in each_written_otherwise(list(patient[unknown]), feature_patients)]
    reasons[empty] = [f"no valid token ({empty_reasons.get(p, 'no valid tile')})" for p in patient[empty]]
    gone = reasons != ""
    if gone.any():
        logger.warning(
            "labels %s: %d labelled patient(s) left out (leave_out_missing): %s",
            path,
            int(gone.sum()),
            "; ".join(f"{p!r}: {why}" for p, why in zip(patient[gone][:SHOWN], reasons[gone], strict=False)),
        )
    unlabelled = sorted(set(feature_patients) - set(patient))
    if unlabelled:
        logger.warning(
            "labels %s: %d patient(s) with feature stores have no label row and are left out: %s",
            path,
            len(unlabelled),
            ids_text(unlabelled),
        )
    no_row = [f"no label row{text}" for text in each_written_otherwise(unlabelled, patient, "the labels")]
    left = [rows[gone].assign(reason=reasons[gone]), pd.DataFrame({"patient_id": unlabelled, "reason": no_row})]
    return rows[~gone], stack_text(left, ["patient_id", *rows.columns.drop("patient_id"), "reason"])


def _classification_table(rows: pd.DataFrame, task: str, path: Path) -> tuple[pd.DataFrame, list[str]]:
    classes = sorted(set(rows[task]), key=str)
    if len(classes) < 2:
        raise LabelError(
            f"labels {path}: column {task!r} holds a single class {ids_text(classes)}; a classifier needs at least 2 "
            "classes: check the column or add patients of another class"
        )
    codes = rows[task].map({name: code for code, name in enumerate(classes)}).astype(np.int64)
    return pd.DataFrame({"target": codes.to_numpy()}, index=pd.Index(rows["patient_id"], name="patient_id")), classes


def _survival_table(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    if not rows["event"].any():
        raise LabelError(f"labels {path}: column 'event' holds no event (1); survival needs observed events")
    return rows[["time", "event"]].set_axis(pd.Index(rows["patient_id"], name="patient_id"))


def load_labels(
    path: str | Path,
    task: str,
    feature_patients: Mapping[str, int],
    slide_patients: Mapping[str, str] | None = None,
    *,
    empty_reasons: Mapping[str, str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    leave_out_missing: bool = False,
) -> Labels:
    """Read and check a labels CSV against the feature stores found.

    feature_patients: patient_id -> number of feature tokens found for that patient (0 = stores exist but no
    valid tokens). slide_patients: slide_id -> patient_id of every store found (needed when the CSV is keyed by
    slide_id). empty_reasons: patient_id -> why a patient without tokens has none (named in the error).
    seed, val_fraction: how validation patients are drawn when the file has a single ``fold`` column.
    leave_out_missing: leave out labelled patients (and slides) without a store or without a valid token, listed
    in ``Labels.left_out`` with the reason, instead of refusing the file.

    Raises LabelError naming the file, the rows and the fix: a missing or empty column, duplicate ids, one class
    written two ways (``'LUAD'``/``'luad'``, ``'1'``/``'1.0'``), patients without a usable store (unless
    ``leave_out_missing``), a single class, bad survival values or fold columns.
    """
    path = Path(path)
    read = read_label_rows(path, task)
    rows, task_columns, fold_columns = read.rows, read.task_columns, read.fold_columns
    no_slide = pd.DataFrame()
    if read.id_column == "slide_id":
        rows, no_slide = _to_patients(rows, slide_patients, path, leave_out_missing)
    rows, left_out = _check_features(rows, feature_patients, empty_reasons or {}, path, leave_out_missing)
    rows = rows.sort_values("patient_id")
    if task == SURVIVAL:
        table, classes = _survival_table(rows, path), []
    else:
        table, classes = _classification_table(rows, task, path)
    left_out = stack_text([left_out, no_slide], ["patient_id", "slide_id", *task_columns, "reason"])
    labels = Labels(path, task, table, classes, None, left_out)
    if not fold_columns:
        return labels
    folds = folds_from_columns(table, rows[fold_columns], labels.strata(), path, seed, val_fraction)
    check_folds(labels, folds)
    return replace(labels, folds=folds)
