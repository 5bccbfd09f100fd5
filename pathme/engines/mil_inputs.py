"""What a MIL run (:mod:`pathme.engines.mil_workflow`) and an evaluation of its fold models
(:mod:`pathme.engines.mil_predict`) read before any model runs: the labels checked against the stores, the cohort
they state, each patient's targets and the heatmap resolution asked for."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pathme.console import announce
from pathme.data.bags import BagIndex
from pathme.data.inclusion import cohort_line, cohort_table
from pathme.data.label_format import Labels
from pathme.data.labels import load_labels
from pathme.losses import assign_bins
from pathme.store.atomic import write_csv_atomic


def patient_targets(labels: Labels, edges: np.ndarray | None) -> dict[str, dict[str, float | int]]:
    """Per patient the tensors a batch needs: the class code, or time, event and time bin."""
    table = labels.table
    if not labels.is_survival:
        return {patient: {"target": int(code)} for patient, code in table["target"].items()}
    bins = assign_bins(table["time"].to_numpy(), edges) if edges is not None else np.zeros(len(table), np.int64)
    return {
        patient: {"time": float(row.time), "event": float(row.event), "bin": int(b)}
        for (patient, row), b in zip(table.iterrows(), bins, strict=True)
    }


def positive_or_none(value: object, name: str) -> float | None:
    """``value`` as a positive float (a bundle override may give text), or None; ValueError otherwise."""
    if value is None:
        return None
    number = float(value)
    if not number > 0:
        raise ValueError(f"{name} must be a positive µm/px or null (about 1,600 px on the long side), got {value!r}")
    return number


def store_labels(
    path: str | Path, task: str, index: BagIndex, seed: int = 0, leave_out_missing: bool = False
) -> Labels:
    """The labels checked against the stores found, with each token-less patient's reason from its stores."""
    counts = index.token_counts()
    reasons = index.empty_reasons(counts)
    return load_labels(
        path, task, counts, index.slide_patients, empty_reasons=reasons, seed=seed, leave_out_missing=leave_out_missing
    )


def state_cohort(labels: Labels, index: BagIndex, output_dir: Path, logger: logging.Logger) -> None:
    """Write ``cohort.csv`` (every patient seen: included, or left out and why) and say the cohort in one line,
    announced on ``logger`` (the caller's, so that ``pathme.console.unannounced`` of its module quiets it)."""
    cohort = cohort_table(labels, index.slide_patients)
    write_csv_atomic(output_dir / "cohort.csv", cohort)
    announce(
        logger,
        "cohort of %s: %s (every patient in %s)",
        labels.path.name,
        cohort_line(labels, cohort),
        output_dir / "cohort.csv",
    )
