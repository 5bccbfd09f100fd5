"""Classification metrics on class codes and probabilities, in numpy (no scikit-learn in the runtime).

Why our own: the MIL bundle reports these per fold, and a metric that is undefined on a fold (one class only)
must come back as NaN, not as an exception that stops the cross-validation.
"""

from __future__ import annotations

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC: P(score of a positive > score of a negative), ties counted half; NaN if one-sided."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """AUROC of probs [N, C]: of class 1 when C == 2, else the macro one-vs-rest mean over the classes that have
    both positives and negatives in ``y_true``; NaN when undefined."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must be [N, C] with N = len(y_true) = {len(y_true)}, got shape {probs.shape}")
    if probs.shape[1] == 2:
        return _binary_auroc(y_true == 1, probs[:, 1])
    scores = [_binary_auroc(y_true == code, probs[:, code]) for code in range(probs.shape[1])]
    defined = [score for score in scores if not np.isnan(score)]
    return float(np.mean(defined)) if defined else float("nan")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches; NaN when empty."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``; NaN when empty."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == code] == code) for code in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean F1 over classes 0 .. num_classes-1, skipping those absent from both truth and prediction."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for code in range(num_classes):
        true, pred = y_true == code, y_pred == code
        if true.any() or pred.any():
            hits = np.count_nonzero(true & pred)
            scores.append(2 * hits / (np.count_nonzero(true) + np.count_nonzero(pred)))
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUROC, balanced accuracy, macro F1 and accuracy, predicting the most probable class."""
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    return {
        "auroc": auroc(y_true, probs),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "f1": macro_f1(y_true, y_pred, probs.shape[1]),
        "accuracy": accuracy(y_true, y_pred),
    }
