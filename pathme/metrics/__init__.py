"""Slide-level metrics in plain numpy: AUROC, balanced accuracy, macro F1, accuracy and Harrell's c-index."""

from pathme.metrics.classification import accuracy, auroc, balanced_accuracy, classification_metrics, macro_f1
from pathme.metrics.concordance import c_index, survival_metrics

__all__ = [
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "c_index",
    "classification_metrics",
    "macro_f1",
    "survival_metrics",
]
