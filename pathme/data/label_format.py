"""The label format and what labels are read into: the column names and values of a labels CSV, :class:`Labels`,
:class:`Fold`, :class:`LabelError`, and the helpers that name offending ids and rows in its messages.

The CSV has an id column (``patient_id``, or ``slide_id`` mapped to patients through the feature stores), the
task columns (a class column named by the task, or ``time`` and ``event`` for survival) and optionally fold
columns: one integer ``fold`` (each patient's test fold) or ``fold_0``, ``fold_1``, ... holding
``train``/``val``/``test`` (the format :func:`pathme.data.folds.write_folds` writes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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


def ids_text(values: Iterable[object]) -> str:
    """The first few ids, quoted, and how many more there are."""
    values = list(values)
    shown = ", ".join(repr(str(value)) for value in values[:SHOWN])
    return shown + (f" and {len(values) - SHOWN} more" if len(values) > SHOWN else "")


def rows_text(frame: pd.DataFrame, id_column: str) -> str:
    """The CSV rows (1-based, header is row 1) of ``frame`` and their ids; the frame keeps the file's row index."""
    lines = ", ".join(str(index + 2) for index in frame.index[:SHOWN])
    more = f" and {len(frame) - SHOWN} more" if len(frame) > SHOWN else ""
    return f"row(s) {lines}{more} ({id_column} {ids_text(frame[id_column])})"


def stack_text(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The rows of ``frames`` under ``columns`` (absent cells empty), as text; empty frames are skipped."""
    frames = [frame.reindex(columns=columns) for frame in frames if len(frame)]
    stacked = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return stacked.astype(object).where(stacked.notna(), "").astype(str)
