"""Which patients a run includes, which it leaves out and why: the cohort a run evaluates is stated, never guessed,
as a table (one row per patient seen, written as ``cohort.csv``) and as one line for the console."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from pathme.data.label_format import SHOWN, SURVIVAL_COLUMNS, Labels, stack_text

INCLUDED, LEFT_OUT = "included", "left out"


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
    columns = ["patient_id", *values, "status", "reason"]
    table = stack_text([included, labels.left_out.assign(status=LEFT_OUT)], columns)
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
