"""Patient-level cross-validation folds: made (stratified, seeded) or read from a labels file's fold columns, checked
so that no patient is in two splits of a fold or two test folds and every class (or some event) reaches every
split, and written in the format :func:`pathme.data.labels.load_labels` reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pathme.data.label_format import FOLD_COLUMN, SPLITS, Fold, LabelError, Labels, ids_text
from pathme.store.atomic import write_atomic


def folds_from_columns(
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
                f"{where}: fold {fold.index} names patients without a usable label row: {ids_text(unknown)}; "
                "make the splits from this labels file"
            )
        for first, second in (("train", "test"), ("val", "test"), ("train", "val")):
            shared = sorted(set(getattr(fold, first)) & set(getattr(fold, second)))
            if shared:
                raise LabelError(
                    f"{where}: fold {fold.index} has patients in both {first} and {second}: {ids_text(shared)}; "
                    "give each patient one split per fold"
                )
        twice = sorted(patient for patient in fold.test if patient in tested)
        if twice:
            raise LabelError(
                f"{where}: patients in the test splits of folds {tested[twice[0]]} and {fold.index}: "
                f"{ids_text(twice)}; put each patient in one test fold only"
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
            raise LabelError(f"{where} has no patient of class(es) {ids_text(absent)} in its {split} split; {fix}")


def check_folds(labels: Labels, folds: list[Fold]) -> None:
    """Refuse folds that would leak patients between splits or leave a class (or all events) out of a split."""
    _check_membership(labels, folds)
    for fold in folds:
        _check_coverage(labels, fold)


def folds_to_frame(folds: list[Fold]) -> pd.DataFrame:
    """Index patient_id, columns fold_0 .. fold_{k-1} with train/val/test: the format
    :func:`pathme.data.labels.load_labels` reads."""
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
