"""Labels and patient-level splits, validated before any training starts.

Why: a label file that silently loses patients, puts one patient in two folds or leaves a class out of a test
fold gives metrics that look fine and mean nothing. Every such problem is found here, when the file is loaded,
and reported with the file, the column, the offending ids and the fix.

The CSV has an id column (``patient_id``, or ``slide_id`` mapped to patients through the feature stores), the
task columns (a class column named by the task, or ``time`` and ``event`` for survival) and optionally fold
columns: one integer ``fold`` (each patient's test fold) or ``fold_0``, ``fold_1``, ... holding
``train``/``val``/``test`` (the format :func:`write_folds` writes).

The cohort a run evaluates is stated, never guessed: one class written two ways ('LUAD' and 'luad', '1' and '1.0')
is refused instead of becoming a class of its own; a labelled patient without a usable store is refused unless
``leave_out_missing`` says to leave such patients out; and :func:`cohort_table` / :func:`cohort_line` say which
patients a run includes, which it leaves out and why.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pathme.store.atomic import write_atomic
from pathme.tables import read_text_csv

logger = logging.getLogger(__name__)

SURVIVAL = "survival"
SURVIVAL_COLUMNS = ("time", "event")
#: the objectives a survival label trains with (pathme.losses.survival_likelihood): the discrete-time negative
#: log-likelihood over time bins, and Cox's partial likelihood
SURVIVAL_LOSSES = ("nll", "cox")
ID_COLUMNS = ("patient_id", "slide_id")
SPLITS = ("train", "val", "test")
FOLD_COLUMN = "fold"
FOLD_SPLIT_COLUMN = re.compile(r"fold_(0|[1-9][0-9]*)")
MISSING = frozenset({"", "na", "nan", "n/a", "none", "null"})  # cell texts that mean "no value"
SHOWN = 5  # offending ids named in a message
LEAVE_OUT = "or leave such patients out of the run (pathme mil --leave-out-missing, config id leave_out_missing)"
INCLUDED, LEFT_OUT = "included", "left out"


class LabelError(ValueError):
    """Bad labels: the message names the file, the column/rows and the fix."""


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: the sorted patient ids of each split."""

    index: int
    train: list[str]
    val: list[str]
    test: list[str]


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame field has no truth value, so compare by identity
class Labels:
    """One row per labelled patient that has features, with the classes and the file's folds (if any);
    ``left_out``: the patients (and, for a file keyed by slide, the slides) the run does not use, one row each with
    ``patient_id``, ``slide_id`` (only for a labelled slide without a store), the task's values as the file gives
    them (empty for a patient without a label row) and ``reason``."""

    path: Path
    task: str
    table: pd.DataFrame
    classes: list[str]
    folds: list[Fold] | None
    left_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["patient_id", "slide_id", "reason"]))

    @property
    def is_survival(self) -> bool:
        """True for a survival table (time, event), False for classification."""
        return self.task == SURVIVAL

    def strata(self) -> np.ndarray:
        """What folds are stratified by, per patient in table order: the class code, or the event for survival."""
        return self.table["event" if self.is_survival else "target"].to_numpy(dtype=np.int64)


def _ids(values: Iterable[object]) -> str:
    """The first few ids, quoted, and how many more there are."""
    values = list(values)
    shown = ", ".join(repr(str(value)) for value in values[:SHOWN])
    return shown + (f" and {len(values) - SHOWN} more" if len(values) > SHOWN else "")


def _rows(frame: pd.DataFrame, id_column: str) -> str:
    """The CSV rows (1-based, header is row 1) of ``frame`` and their ids; the frame keeps the file's row index."""
    lines = ", ".join(str(index + 2) for index in frame.index[:SHOWN])
    more = f" and {len(frame) - SHOWN} more" if len(frame) > SHOWN else ""
    return f"row(s) {lines}{more} ({id_column} {_ids(frame[id_column])})"


def spelling_key(text: str) -> str:
    """What two spellings of one value share: case, Unicode compatibility forms and runs of whitespace do not count,
    nor how a number is written (``'1'``, ``'1.0'``, ``'01'``, ``'1e0'`` are one)."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        return repr(number)
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _spellings(values: Iterable[str], known: Iterable[str]) -> dict[str, list[str]]:
    """Each of ``values`` absent from ``known`` -> the entries of ``known`` it equals but for spelling."""
    by_key: dict[str, list[str]] = {}
    for other in dict.fromkeys(known):
        by_key.setdefault(spelling_key(other), []).append(other)
    return {
        value: by_key[spelling_key(value)]
        for value in dict.fromkeys(values)
        if spelling_key(value) in by_key and value not in by_key[spelling_key(value)]
    }


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
                f"labels {path}: column {column!r} is empty (or NaN) in {_rows(raw[empty], id_column)}; "
                "fill in the value or remove those rows"
            )


def _check_unique(raw: pd.DataFrame, id_column: str, path: Path) -> None:
    duplicated = raw[id_column].duplicated(keep=False)
    if duplicated.any():
        entity = "patient (a patient's slides share its row)" if id_column == "patient_id" else "slide"
        raise LabelError(
            f"labels {path}: duplicate {id_column!r} in {_rows(raw[duplicated], id_column)}; keep one row per {entity}"
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
        rarer = [f"{name!r} in {_rows(raw[raw[task] == name], id_column)}" for name in group.index[1:]]
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
            f"labels {path}: column 'time' must be a number > 0 in {_rows(raw[bad], id_column)} "
            f"(got {_ids(raw['time'][bad])}); correct or remove those rows"
        )
    event = pd.to_numeric(raw["event"], errors="coerce")
    bad = ~event.isin([0, 1])
    if bad.any():
        raise LabelError(
            f"labels {path}: column 'event' must be 0 (censored) or 1 (event) in {_rows(raw[bad], id_column)} "
            f"(got {_ids(raw['event'][bad])}); correct or remove those rows"
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
                f"labels {path}: column 'fold' must be the test fold number 0 .. k-1 in {_rows(raw[bad], id_column)} "
                f"(got {_ids(raw[FOLD_COLUMN][bad])}); correct those rows"
            )
        return pd.DataFrame({FOLD_COLUMN: number.astype(np.int64)}, index=raw.index)
    values = raw[columns].apply(lambda column: column.str.lower())
    for column in columns:
        bad = ~values[column].isin(SPLITS)
        if bad.any():
            raise LabelError(
                f"labels {path}: column {column!r} must be train, val or test in {_rows(raw[bad], id_column)} "
                f"(got {_ids(raw[column][bad])}); correct those rows"
            )
    return values


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
            f"labels {path}: {_rows(rows[unknown], 'slide_id')} name slides with no feature store"
            f"{_written_otherwise(rows['slide_id'][unknown], slide_patients)}; extract those slides or remove their "
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
            f"patient {patient!r}: slides {_ids(rows.loc[rows['patient_id'] == patient, 'slide_id'])}"
            for patient in conflicting[:SHOWN]
        )
        raise LabelError(
            f"labels {path}: slides of one patient disagree on column(s) {', '.join(map(repr, columns))} ({cases}); "
            "give every slide of a patient the same values, or key the file by 'patient_id'"
        )
    return rows.drop_duplicates("patient_id").drop(columns="slide_id"), gone


def _written_otherwise(ids: Iterable[str], known: Iterable[str], where: str = "the stores") -> str:
    """`` (the stores write 'P1' as 'p1': one id written two ways?)`` for ids ``known`` spells otherwise, else ''."""
    return _otherwise_text(_spellings(ids, known), where)


def _each_written_otherwise(ids: Sequence[str], known: Iterable[str], where: str = "the stores") -> list[str]:
    """:func:`_written_otherwise` of each id alone, with ``known``'s spellings indexed once."""
    near = _spellings(ids, known)
    return [_otherwise_text({value: near[value]} if value in near else {}, where) for value in ids]


def _otherwise_text(near: Mapping[str, list[str]], where: str) -> str:
    if not near:
        return ""
    cases = ", ".join(f"{value!r} as {' or '.join(map(repr, others))}" for value, others in list(near.items())[:SHOWN])
    return f" ({where} write {cases}: one id written two ways?)"


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
            f"labels {path}: {_rows(rows[unknown], 'patient_id')} name patients with no feature store"
            f"{_written_otherwise(patient[unknown], feature_patients)}; extract their slides or remove those rows, "
            f"{LEAVE_OUT}"
        )
    empty = ~unknown & patient.map(lambda p: feature_patients.get(p) == 0)
    if empty.any() and not leave_out:
        why = "; ".join(f"{p!r}: {empty_reasons.get(p, 'no valid tile')}" for p in patient[empty][:SHOWN])
        raise LabelError(
            f"labels {path}: {_rows(rows[empty], 'patient_id')} name patients whose stores hold no valid feature "
            f"token ({why}); fix those slides (see their previews) or remove those rows, {LEAVE_OUT}"
        )
    reasons = pd.Series("", index=rows.index)
    reasons[unknown] = [f"no store{text}" for text in _each_written_otherwise(list(patient[unknown]), feature_patients)]
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
            _ids(unlabelled),
        )
    no_row = [f"no label row{text}" for text in _each_written_otherwise(unlabelled, patient, "the labels")]
    left = [rows[gone].assign(reason=reasons[gone]), pd.DataFrame({"patient_id": unlabelled, "reason": no_row})]
    return rows[~gone], _stack(left, ["patient_id", *rows.columns.drop("patient_id"), "reason"])


def _stack(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The rows of ``frames`` under ``columns`` (absent cells empty), as text; empty frames are skipped."""
    frames = [frame.reindex(columns=columns) for frame in frames if len(frame)]
    stacked = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return stacked.astype(object).where(stacked.notna(), "").astype(str)


def _classification_table(rows: pd.DataFrame, task: str, path: Path) -> tuple[pd.DataFrame, list[str]]:
    classes = sorted(set(rows[task]), key=str)
    if len(classes) < 2:
        raise LabelError(
            f"labels {path}: column {task!r} holds a single class {_ids(classes)}; a classifier needs at least 2 "
            "classes: check the column or add patients of another class"
        )
    codes = rows[task].map({name: code for code, name in enumerate(classes)}).astype(np.int64)
    return pd.DataFrame({"target": codes.to_numpy()}, index=pd.Index(rows["patient_id"], name="patient_id")), classes


def _survival_table(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    if not rows["event"].any():
        raise LabelError(f"labels {path}: column 'event' holds no event (1); survival needs observed events")
    return rows[["time", "event"]].set_axis(pd.Index(rows["patient_id"], name="patient_id"))


def _folds_from_file(
    table: pd.DataFrame, values: pd.DataFrame, strata: np.ndarray, path: Path, seed: int, val_fraction: float
) -> list[Fold]:
    """Folds of the file's columns (``values`` in table order); a ``fold`` column gets seeded validation draws."""
    ids = table.index.to_numpy(dtype=str)
    if list(values.columns) != [FOLD_COLUMN]:
        return [
            Fold(index, *(sorted(ids[values[column].to_numpy() == split].tolist()) for split in SPLITS))
            for index, column in enumerate(values.columns)
        ]
    test_fold = values[FOLD_COLUMN].to_numpy()
    count = int(test_fold.max()) + 1
    if count < 2:
        raise LabelError(f"labels {path}: column 'fold' puts every patient in test fold 0; number k >= 2 test folds")
    empty = sorted(set(range(count)) - set(test_fold.tolist()))
    if empty:
        raise LabelError(
            f"labels {path}: column 'fold' has no patient in test fold(s) {empty} of 0 .. {count - 1}; "
            "number the test folds without gaps"
        )
    rng = np.random.default_rng(seed)
    return [_fold(index, ids, strata, test_fold == index, val_fraction, rng) for index in range(count)]


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
    no_slide = pd.DataFrame()
    if id_column == "slide_id":
        rows, no_slide = _to_patients(rows, slide_patients, path, leave_out_missing)
    rows, left_out = _check_features(rows, feature_patients, empty_reasons or {}, path, leave_out_missing)
    rows = rows.sort_values("patient_id")
    if task == SURVIVAL:
        table, classes = _survival_table(rows, path), []
    else:
        table, classes = _classification_table(rows, task, path)
    left_out = _stack([left_out, no_slide], ["patient_id", "slide_id", *task_columns, "reason"])
    labels = Labels(path, task, table, classes, None, left_out)
    if not fold_columns:
        return labels
    folds = _folds_from_file(table, rows[fold_columns], labels.strata(), path, seed, val_fraction)
    check_folds(labels, folds)
    return replace(labels, folds=folds)


def _value_columns(labels: Labels) -> list[str]:
    return list(SURVIVAL_COLUMNS) if labels.is_survival else [labels.task]


def cohort_table(labels: Labels, slide_patients: Mapping[str, str]) -> pd.DataFrame:
    """The cohort a run evaluates, one row per patient it saw (every labelled patient and every patient with a
    store): ``patient_id``, the task's values (the class, or ``time`` and ``event``), ``slides`` (how many stores)
    and ``slide_ids`` (``;``-separated), ``status`` (``included`` or ``left out``) and ``reason`` (why left out).
    ``slide_patients``: slide_id -> patient_id of every store. A labelled slide without a store (a file keyed by
    slide) is a row of its own with an empty ``patient_id`` and ``slides`` 0."""
    values = _value_columns(labels)
    slides: dict[str, list[str]] = {}
    for slide, patient in sorted(slide_patients.items()):
        slides.setdefault(patient, []).append(slide)
    included = labels.table.reset_index()
    if not labels.is_survival:
        included[labels.task] = [labels.classes[code] for code in included["target"]]
    included = included.assign(status=INCLUDED, reason="")
    table = _stack([included, labels.left_out.assign(status=LEFT_OUT)], ["patient_id", *values, "status", "reason"])
    stores = [slides.get(patient, []) for patient in table["patient_id"]]
    labelled = [""] * len(included) + labels.left_out["slide_id"].tolist()  # a left-out labelled slide's id
    ids = [
        ";".join(found) if patient else slide
        for patient, found, slide in zip(table["patient_id"], stores, labelled, strict=True)
    ]
    return table.assign(slides=[len(found) for found in stores], slide_ids=ids)[
        ["patient_id", *values, "slides", "slide_ids", "status", "reason"]
    ]


def cohort_line(labels: Labels, cohort: pd.DataFrame) -> str:
    """One line stating the cohort of :func:`cohort_table` ``cohort``: patients and slides included, the classes
    with their counts (or the events), and who is left out and why (the first few)."""
    kept = cohort[cohort["status"] == INCLUDED]
    head = f"{len(kept)} patients with {int(kept['slides'].sum())} slides"
    if labels.is_survival:
        what = f"survival, {int(labels.table['event'].sum())} with an event"
    else:
        counts = kept[labels.task].value_counts()
        what = "classes " + ", ".join(f"{name!r} {int(counts.get(name, 0))}" for name in labels.classes)
    gone = cohort[cohort["status"] == LEFT_OUT]
    if not len(gone):
        return f"{head}; {what}; none left out"
    named = [
        f"{patient!r} ({reason.split(' (')[0]})" if patient else f"slide {ids!r} ({reason})"
        for patient, ids, reason in gone[["patient_id", "slide_ids", "reason"]].itertuples(index=False)
    ]
    more = f" and {len(named) - SHOWN} more" if len(named) > SHOWN else ""
    return f"{head}; {what}; {len(gone)} left out: {', '.join(named[:SHOWN])}{more}"


def _check_fold_count(labels: Labels, num_folds: int) -> None:
    """Each class (survival: the patients with an event) must reach every test fold."""
    strata = labels.strata()
    required = {1: "patients with an event"} if labels.is_survival else dict(enumerate(labels.classes))
    counts = {name: int((strata == code).sum()) for code, name in required.items()}
    short = {name: count for name, count in counts.items() if count < num_folds}
    if short:
        cases = ", ".join(f"{name!r} has {count}" for name, count in short.items())
        most = min(counts.values())
        fix = f"lower num_folds to at most {most}" if most >= 2 else "add patients (at least 2 of each)"
        raise LabelError(
            f"labels {labels.path}: too few patients for {num_folds} folds ({cases}); each test fold needs at least "
            f"one; {fix}"
        )


def _deal(strata: np.ndarray, num_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Test fold of each patient: every stratum shuffled and dealt round-robin, continuing where the last stopped."""
    test_fold = np.empty(len(strata), dtype=np.int64)
    start = 0
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        test_fold[members] = (start + np.arange(len(members))) % num_folds
        start = (start + len(members)) % num_folds
    return test_fold


def _draw_val(pool: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded share of each stratum of ``pool``: at least one patient, never the whole stratum (train keeps it)."""
    chosen = [np.empty(0, dtype=np.int64)]
    for stratum in np.unique(strata[pool]):
        members = rng.permutation(pool[strata[pool] == stratum])
        count = min(max(int(fraction * len(members) + 0.5), 1), len(members) - 1)
        chosen.append(members[:count])
    return np.concatenate(chosen)


def _fold(
    index: int, ids: np.ndarray, strata: np.ndarray, is_test: np.ndarray, fraction: float, rng: np.random.Generator
) -> Fold:
    pool = np.flatnonzero(~is_test)
    val = _draw_val(pool, strata, fraction, rng)
    train = np.setdiff1d(pool, val)
    return Fold(index, *(sorted(ids[members].tolist()) for members in (train, val, np.flatnonzero(is_test))))


def make_folds(labels: Labels, num_folds: int, seed: int, val_fraction: float = 0.2) -> list[Fold]:
    """Patient-level stratified k folds (by class, or by event for survival), seeded; each fold's validation
    patients are drawn (stratified, seeded) from its training patients."""
    if num_folds < 2:
        raise LabelError(f"labels {labels.path}: num_folds must be at least 2, got {num_folds}")
    if not 0 < val_fraction < 1:
        raise LabelError(f"labels {labels.path}: val_fraction must be between 0 and 1, got {val_fraction}")
    _check_fold_count(labels, num_folds)
    rng = np.random.default_rng(seed)
    strata = labels.strata()
    ids = labels.table.index.to_numpy(dtype=str)
    test_fold = _deal(strata, num_folds, rng)
    folds = [_fold(index, ids, strata, test_fold == index, val_fraction, rng) for index in range(num_folds)]
    check_folds(labels, folds)
    return folds


def _check_membership(labels: Labels, folds: list[Fold]) -> None:
    where = f"labels {labels.path}"
    known = set(labels.table.index)
    tested: dict[str, int] = {}
    for fold in folds:
        unknown = sorted({*fold.train, *fold.val, *fold.test} - known)
        if unknown:
            raise LabelError(
                f"{where}: fold {fold.index} names patients without a usable label row: {_ids(unknown)}; "
                "make the splits from this labels file"
            )
        for first, second in (("train", "test"), ("val", "test"), ("train", "val")):
            shared = sorted(set(getattr(fold, first)) & set(getattr(fold, second)))
            if shared:
                raise LabelError(
                    f"{where}: fold {fold.index} has patients in both {first} and {second}: {_ids(shared)}; "
                    "give each patient one split per fold"
                )
        twice = sorted(patient for patient in fold.test if patient in tested)
        if twice:
            raise LabelError(
                f"{where}: patients in the test splits of folds {tested[twice[0]]} and {fold.index}: {_ids(twice)}; "
                "put each patient in one test fold only"
            )
        tested.update(dict.fromkeys(fold.test, fold.index))


def _check_coverage(labels: Labels, fold: Fold) -> None:
    where = f"labels {labels.path}: fold {fold.index}"
    fix = "use fewer folds (num_folds) or rebalance the fold columns of the labels file"
    if not fold.val:
        raise LabelError(f"{where} has no validation patients; {fix}, or add patients")
    if labels.is_survival:
        if not labels.table.loc[fold.test, "event"].any():
            raise LabelError(f"{where} has no patient with an event in its test split; {fix}")
        return
    for split in ("train", "test"):
        present = set(labels.table.loc[getattr(fold, split), "target"].tolist())
        absent = [name for code, name in enumerate(labels.classes) if code not in present]
        if absent:
            raise LabelError(f"{where} has no patient of class(es) {_ids(absent)} in its {split} split; {fix}")


def check_folds(labels: Labels, folds: list[Fold]) -> None:
    """Refuse folds that would leak patients between splits or leave a class (or all events) out of a split."""
    _check_membership(labels, folds)
    for fold in folds:
        _check_coverage(labels, fold)


def folds_to_frame(folds: list[Fold]) -> pd.DataFrame:
    """Index patient_id, columns fold_0 .. fold_{k-1} with train/val/test: the format :func:`load_labels` reads."""
    columns = {
        f"fold_{fold.index}": pd.Series({patient: split for split in SPLITS for patient in getattr(fold, split)})
        for fold in sorted(folds, key=lambda fold: fold.index)
    }
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = "patient_id"
    return frame


def write_folds(folds: list[Fold], path: str | Path) -> Path:
    """Write :func:`folds_to_frame` as CSV atomically (a locked temporary file renamed into place)."""
    return write_atomic(path, folds_to_frame(folds).to_csv)
