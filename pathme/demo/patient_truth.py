"""The demo cohort's patients and their truth: which slides belong to whom, half of them positive, a grade for each
positive, and survival times that shorten with label and grade (log-normal, independently censored)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_MONTHS = 60.0  # median survival of a negative patient
LOG_HAZARD = (1.0, 2.0)  # log time shortened by 1 + 2 x grade for positives (grade 0 -> e^-1, grade 1 -> e^-3)
TIME_NOISE = 0.3  # sd of the log-normal noise of event times
CENSOR_MONTHS = (24.0, 120.0)  # uniform censoring window
TWO_SLIDE_EVERY = 4  # every 4th patient has two slides


@dataclass(frozen=True)
class PatientTruth:
    """One task's truth per patient (arrays indexed by patient): label, grade in [0, 1] (0 for negatives), survival
    time in months and event (1: death observed, 0: censored)."""

    labels: np.ndarray
    grades: np.ndarray
    times: np.ndarray
    events: np.ndarray

    def rows(self) -> list[list]:
        """labels.csv rows: patient_id, label, time, event."""
        return [
            [patient_id(i), int(label), f"{time:.2f}", int(event)]
            for i, (label, time, event) in enumerate(zip(self.labels, self.times, self.events, strict=True))
        ]


def draw_truth(n_patients: int, rng: np.random.Generator) -> PatientTruth:
    """Half the patients positive, a uniform grade for each positive, and survival from label and grade."""
    labels = draw_labels(n_patients, rng)
    grades = np.where(labels == 1, rng.uniform(0.0, 1.0, size=n_patients), 0.0)
    return PatientTruth(labels, grades, *draw_survival(labels, grades, rng))


def assign_patients(n_slides: int) -> list[int]:
    """Patient index of each slide: one slide per patient, except every 4th patient who has two."""
    patients: list[int] = []
    index = 0
    while len(patients) < n_slides:
        count = 2 if index % TWO_SLIDE_EVERY == TWO_SLIDE_EVERY - 1 else 1
        patients += [index] * min(count, n_slides - len(patients))
        index += 1
    return patients


def patient_id(index: int) -> str:
    """The demo's id of the patient of that index: ``P007``."""
    return f"P{index:03d}"


def draw_labels(n_patients: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly half the patients (rounded down) positive, chosen at random."""
    labels = np.zeros(n_patients, dtype=np.int64)
    labels[rng.permutation(n_patients)[: n_patients // 2]] = 1
    return labels


def draw_survival(labels: np.ndarray, grades: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal event times (months), shorter for positives and the more the higher their grade, with
    independent uniform censoring: (time, event)."""
    shortening = np.where(labels == 1, LOG_HAZARD[0] + LOG_HAZARD[1] * grades, 0.0)
    event_times = BASE_MONTHS * np.exp(-shortening + TIME_NOISE * rng.standard_normal(len(labels)))
    censor_times = rng.uniform(*CENSOR_MONTHS, size=len(labels))
    return np.minimum(event_times, censor_times), (event_times <= censor_times).astype(np.int64)
