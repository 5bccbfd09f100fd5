"""A labels CSV read and its columns checked, row by row, before any row is matched to the feature stores: the id
column, the task's columns (filled, one class written one way, valid survival values) and the fold columns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathme.data.label_format import (
    FOLD_COLUMN,
    FOLD_SPLIT_COLUMN,
    ID_COLUMNS,
    MISSING,
    SPLITS,
    SURVIVAL,
    SURVIVAL_COLUMNS,
    LabelError,
    ids_text,
    rows_text,
)
from pathme.data.label_spelling import spelling_key
from pathme.tables import read_text_csv


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame field has no truth value, so compare by identity
class LabelRows:
    """The checked rows of a labels CSV (file row order as index): the id column, the task's values (the class as
    text, or ``time`` float and ``event`` int) and the fold values (test fold number, or lower-case split names),
    with the names of those columns."""

    rows: pd.DataFrame
    id_column: str
    task_columns: list[str]
    fold_columns: list[str]


def read_label_rows(path: Path, task: str) -> LabelRows:
    """Read the labels CSV at ``path`` for ``task`` and check its columns; LabelError naming the file, the rows and
    the fix for a missing or empty column, duplicate ids, one class written two ways, bad survival values or bad
    fold columns."""
    raw = _read(path)
    id_column = _id_column(raw, path)
    task_columns = _task_columns(raw, task, path)
    fold_columns = _fold_columns(raw, path)
    _check_filled(raw, [id_column, *task_columns, *fold_columns], id_column, path)
    _check_unique(raw, id_column, path)
    if task != SURVIVAL:
        _check_spellings(raw, task, id_column, path)
    values = _survival_values(raw, id_column, path) if task == SURVIVAL else raw[[task]]
    rows = pd.concat([raw[[id_column]], values, _fold_values(raw, fold_columns, id_column, path)], axis=1)
    return LabelRows(rows, id_column, task_columns, fold_columns)


def _read(path: Path) -> pd.DataFrame:
    """The CSV as stripped strings, with the file's row order as index."""
    raw = read_text_csv(path, "labels", LabelError, "give the path of the labels CSV")
    raw.columns = [str(column).strip() for column in raw.columns]
    if raw.empty:
        raise LabelError(f"labels {path}: no rows; add one row per patient")
    return raw.apply(lambda column: column.str.strip())


def _id_column(raw: pd.DataFrame, path: Path) -> str:
    for column in ID_COLUMNS:
        if column in raw.columns:
            return column
    raise LabelError(
        f"labels {path}: no id column; add a 'patient_id' (or 'slide_id') column (columns present: "
        f"{', '.join(raw.columns)})"
    )


def _task_columns(raw: pd.DataFrame, task: str, path: Path) -> list[str]:
    needed = list(SURVIVAL_COLUMNS) if task == SURVIVAL else [task]
    missing = [column for column in needed if column not in raw.columns]
    if missing:
        fix = (
            "survival needs columns 'time' and 'event'; add them"
            if task == SURVIVAL
            else "the task names the class column; set the task to one of the columns present or add the column"
        )
        raise LabelError(
            f"labels {path}: missing column(s) {', '.join(map(repr, missing))} for task {task!r}; {fix} "
            f"(columns present: {', '.join(raw.columns)})"
        )
    return needed


def _fold_columns(raw: pd.DataFrame, path: Path) -> list[str]:
    """``['fold']``, ``['fold_0', ..., 'fold_{k-1}']`` or ``[]``."""
    numbered = sorted(
        (int(match[1]), column) for column in raw.columns if (match := FOLD_SPLIT_COLUMN.fullmatch(column))
    )
    names = [column for _, column in numbered]
    if FOLD_COLUMN in raw.columns and numbered:
        raise LabelError(
            f"labels {path}: both a 'fold' column and {', '.join(names)}; keep one kind of fold column "
            "(a test-fold number, or train/val/test per fold)"
        )
    if FOLD_COLUMN in raw.columns:
        return [FOLD_COLUMN]
    if [index for index, _ in numbered] != list(range(len(numbered))):
        raise LabelError(
            f"labels {path}: fold columns {', '.join(names)} are not numbered fold_0 .. fold_{len(names) - 1}; "
            "rename them without gaps"
        )
    return names


def _check_filled(raw: pd.DataFrame, columns: list[str], id_column: str, path: Path) -> None:
    for column in columns:
        empty = raw[column].str.lower().isin(MISSING)
        if empty.any():
            raise LabelError(
                f"labels {path}: column {column!r} is empty (or NaN) in {rows_text(raw[empty], id_column)}; "
                "fill in the value or remove those rows"
            )


def _check_unique(raw: pd.DataFrame, id_column: str, path: Path) -> None:
    duplicated = raw[id_column].duplicated(keep=False)
    if duplicated.any():
        entity = "patient (a patient's slides share its row)" if id_column == "patient_id" else "slide"
        raise LabelError(
            f"labels {path}: duplicate {id_column!r} in {rows_text(raw[duplicated], id_column)}; "
            f"keep one row per {entity}"
        )


def _check_spellings(raw: pd.DataFrame, task: str, id_column: str, path: Path) -> None:
    """Refuse a class column that writes one class several ways: each spelling would train as a class of its own."""
    counts = raw[task].value_counts(sort=False)
    groups = counts.groupby(counts.index.map(spelling_key), sort=False)
    cases = []
    for _, group in groups:
        if len(group) < 2:
            continue
        group = group.sort_values(ascending=False, kind="stable")
        rarer = [f"{name!r} in {rows_text(raw[raw[task] == name], id_column)}" for name in group.index[1:]]
        cases.append(f"{group.index[0]!r} ({group.iloc[0]} rows) also written {', '.join(rarer)}")
    if cases:
        raise LabelError(
            f"labels {path}: column {task!r} writes one class several ways, which would train as separate classes: "
            f"{'; '.join(cases)}; write each class one way (case, spaces and number format count) and rerun"
        )


def _survival_values(raw: pd.DataFrame, id_column: str, path: Path) -> pd.DataFrame:
    time = pd.to_numeric(raw["time"], errors="coerce")
    bad = ~(np.isfinite(time) & (time > 0))
    if bad.any():
        raise LabelError(
            f"labels {path}: column 'time' must be a number > 0 in {rows_text(raw[bad], id_column)} "
            f"(got {ids_text(raw['time'][bad])}); correct or remove those rows"
        )
    event = pd.to_numeric(raw["event"], errors="coerce")
    bad = ~event.isin([0, 1])
    if bad.any():
        raise LabelError(
            f"labels {path}: column 'event' must be 0 (censored) or 1 (event) in {rows_text(raw[bad], id_column)} "
            f"(got {ids_text(raw['event'][bad])}); correct or remove those rows"
        )
    return pd.DataFrame({"time": time.astype(np.float64), "event": event.astype(np.int64)}, index=raw.index)


def _fold_values(raw: pd.DataFrame, columns: list[str], id_column: str, path: Path) -> pd.DataFrame:
    if not columns:
        return raw[[]]
    if columns == [FOLD_COLUMN]:
        number = pd.to_numeric(raw[FOLD_COLUMN], errors="coerce")
        bad = ~((number >= 0) & (number < len(raw)) & (number == np.round(number)))  # k folds need k patients
        if bad.any():
            raise LabelError(
                f"labels {path}: column 'fold' must be the test fold number 0 .. k-1 in "
                f"{rows_text(raw[bad], id_column)} (got {ids_text(raw[FOLD_COLUMN][bad])}); correct those rows"
            )
        return pd.DataFrame({FOLD_COLUMN: number.astype(np.int64)}, index=raw.index)
    values = raw[columns].apply(lambda column: column.str.lower())
    for column in columns:
        bad = ~values[column].isin(SPLITS)
        if bad.any():
            raise LabelError(
                f"labels {path}: column {column!r} must be train, val or test in {rows_text(raw[bad], id_column)} "
                f"(got {ids_text(raw[column][bad])}); correct those rows"
            )
    return values
