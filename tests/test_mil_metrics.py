"""Metrics against hand-computed values on tiny arrays, and the c-index against lifelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines.utils import concordance_index

from pathme.metrics import (
    accuracy,
    auroc,
    balanced_accuracy,
    c_index,
    classification_metrics,
    macro_f1,
    survival_metrics,
)


def _binary(scores: list[float]) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return np.stack([1 - scores, scores], axis=1)


def test_auroc_perfect_and_reversed():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, _binary([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(y, _binary([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_auroc_counts_ties_half():
    # positives 0.5, 0.9; negatives 0.5, 0.1: pairs (0.5,0.5)=0.5 (0.5,0.1)=1 (0.9,0.5)=1 (0.9,0.1)=1 -> 3.5/4
    assert auroc(np.array([1, 0, 1, 0]), _binary([0.5, 0.5, 0.9, 0.1])) == pytest.approx(0.875)
    assert auroc(np.array([1, 0, 1, 0]), _binary([0.3] * 4)) == 0.5


def test_auroc_of_one_class_is_nan():
    assert math.isnan(auroc(np.array([1, 1, 1]), _binary([0.2, 0.5, 0.9])))


def test_auroc_macro_one_vs_rest_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.3, 0.4, 0.3],
            [0.2, 0.7, 0.1],
            [0.5, 0.2, 0.3],
            [0.1, 0.1, 0.8],
            [0.3, 0.5, 0.2],
        ]
    )
    # class 0: positives 0.6, 0.3 vs negatives 0.2, 0.5, 0.1, 0.3 -> (4 + 1 + 0 + 1 + 0.5) / 8 = 6.5 / 8
    # class 1: positives 0.7, 0.2 vs negatives 0.3, 0.4, 0.1, 0.5 -> (4 + 1) / 8 = 5 / 8
    # class 2: positives 0.8, 0.2 vs negatives 0.1, 0.3, 0.1, 0.3 -> (4 + 2) / 8 = 6 / 8
    assert auroc(y, probs) == pytest.approx((6.5 + 5 + 6) / 24)


def test_auroc_macro_skips_classes_without_positives():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.4, 0.5]])
    # class 2 has no positive in y; classes 0 and 1 are perfectly ranked
    assert auroc(y, probs) == 1.0


def test_accuracy_and_balanced_accuracy():
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 0])
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert balanced_accuracy(np.array([0, 0]), np.array([0, 2])) == 0.5  # only classes present in y_true


def test_macro_f1_skips_classes_absent_from_truth_and_prediction():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 2])
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 2 fp 1 fn 1 -> 4/6; class 2: tp 0 fp 1 -> 0; class 3 skipped
    assert macro_f1(y_true, y_pred, num_classes=4) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_classification_metrics_keys_and_argmax():
    y = np.array([0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    metrics = classification_metrics(y, probs)
    assert set(metrics) == {"auroc", "balanced_accuracy", "f1", "accuracy"}
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert metrics["auroc"] == 1.0


def test_c_index_by_hand_with_ties():
    time = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1, 0])
    risk = np.array([0.9, 0.5, 0.5, 0.6, 0.1])
    # comparable (i with event, j outlives i): (0,1)(0,2)(0,3)(0,4) all concordant: 4
    # (1,2): equal time, j censored: tie in risk -> 0.5; (1,3): 0.5 < 0.6 discordant; (1,4): concordant
    # (3,4): concordant; pairs 8, score 4 + 0.5 + 0 + 1 + 1 = 6.5
    assert c_index(time, event, risk) == pytest.approx(6.5 / 8)
    assert survival_metrics(time, event, risk) == {"c_index": pytest.approx(6.5 / 8)}


def test_c_index_ignores_events_tied_in_time():
    assert math.isnan(c_index(np.array([2.0, 2.0]), np.array([1, 1]), np.array([0.1, 0.9])))
    assert math.isnan(c_index(np.array([1.0, 2.0]), np.array([0, 0]), np.array([0.1, 0.9])))


def test_c_index_perfect_and_reversed():
    time = np.arange(1.0, 7.0)
    event = np.ones(6)
    assert c_index(time, event, -time) == 1.0
    assert c_index(time, event, time) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_c_index_equals_lifelines(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    time = rng.integers(1, 15, n).astype(np.float64)  # many ties in time
    event = (rng.random(n) < 0.6).astype(np.int64)
    risk = np.round(rng.normal(size=n), 1)  # ties in risk
    assert c_index(time, event, risk) == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)


def test_c_index_blocks_give_the_same_answer(monkeypatch):
    import pathme.metrics.concordance as survival

    rng = np.random.default_rng(0)
    time, event, risk = rng.integers(1, 30, 500).astype(float), rng.random(500) < 0.5, rng.normal(size=500)
    whole = c_index(time, event, risk)
    monkeypatch.setattr(survival, "BLOCK", 7)
    assert c_index(time, event, risk) == pytest.approx(whole, abs=1e-12)
