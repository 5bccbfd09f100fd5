"""The linear-probe baseline: a linear model on each patient's mean feature, on the same folds as the MIL models.

Classification: logistic regression (scikit-learn) on standardised features, classes weighted by their inverse
frequency, C = 0.5 (Patho-Bench's linear-probe configuration: COST 0.5, balanced). Survival: a Cox model (lifelines)
with an L2 penalty of 0.1 on standardised features: its partial hazard is the risk whatever the MIL task's survival
loss. The probe is fitted on the fold's training and validation patients together (it has nothing to stop early),
and predicts the test patients into the same records as :func:`pathme.engines.mil.predict`, without instance scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pathme.data.bags import BagDataset
from pathme.engines.mil import MILTask

LINEAR_PROBE = "linear-probe"
PROBE_C = 0.5  # inverse L2 strength of the logistic regression (Patho-Bench linprobe.yaml COST 0.5)
COX_PENALIZER = 0.1  # L2 penalty of the Cox probe (lifelines' penalizer): features outnumber patients
NO_INSTANCE_SCORES = "the linear probe reads each patient's mean feature: no instance scores"


def mean_features(dataset: BagDataset) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Each patient's mean feature [P, D] (float64) and its dataset item (targets and token places)."""
    items = [dataset[i] for i in range(len(dataset))]
    return np.stack([item["features"].double().mean(dim=0).numpy() for item in items]), items


def _fit_classifier(features: np.ndarray, items: list[Mapping[str, Any]], seed: int):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=5000))
    model.set_params(logisticregression__random_state=seed)
    return model.fit(features, [int(item["target"]) for item in items])


def _fit_cox(features: np.ndarray, items: list[Mapping[str, Any]]):
    scaler = StandardScaler().fit(features)
    frame = pd.DataFrame(scaler.transform(features)).add_prefix("f")
    frame["time"] = [float(item["time"]) for item in items]
    frame["event"] = [float(item["event"]) for item in items]
    with warnings.catch_warnings():  # lifelines warns on every near-collinear feature: the penalty is the answer
        warnings.simplefilter("ignore")
        cox = CoxPHFitter(penalizer=COX_PENALIZER).fit(frame, "time", "event")
    return scaler, cox


def probe_fold(task: MILTask, fit_on: BagDataset, test: BagDataset, seed: int) -> list[dict[str, Any]]:
    """Fit the probe on ``fit_on``'s patients and predict ``test``'s: one record per test patient (probs [C] or
    risk, the targets it has, its token places; ``attention`` None). ValueError from scikit-learn or lifelines when
    the training patients hold one class only or no event."""
    train_x, train_items = mean_features(fit_on)
    test_x, test_items = mean_features(test)
    if task.is_survival:
        scaler, cox = _fit_cox(train_x, train_items)
        frame = pd.DataFrame(scaler.transform(test_x)).add_prefix("f")
        scores = np.log(cox.predict_partial_hazard(frame).to_numpy())
    else:
        model = _fit_classifier(train_x, train_items, seed)
        probs = np.zeros((len(test_x), len(task.classes)))
        probs[:, model.classes_] = model.predict_proba(test_x)  # a class absent from training keeps probability 0
        scores = probs
    records = []
    for item, score in zip(test_items, scores, strict=True):
        record = {
            "patient_id": item["patient_id"],
            "attention": None,
            "slide_ids": item["slide_ids"],
            "slide_index": item["slide_index"].numpy(),
            "coords": item["coords"].numpy(),
            "sizes": item["sizes"].numpy(),
            "risk" if task.is_survival else "probs": score if task.is_survival else np.asarray(score),
        }
        records.append(record | {key: item[key].item() for key in ("target", "time", "event") if key in item})
    return records
