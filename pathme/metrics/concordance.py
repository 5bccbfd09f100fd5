"""Harrell's concordance index for risk scores, with lifelines' rules for tied times.

Why our own: lifelines is a test-only dependency, and its ``concordance_index`` takes predicted survival times
(higher = better) where our models output risks (higher = worse): ``c_index(t, e, r)`` equals
``lifelines.utils.concordance_index(t, -r, e)``.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1024  # events compared against all patients at a time: memory O(BLOCK x N)


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Concordance over comparable pairs (i, j): i had an event and j outlived i (time_j > time_i, or an equal
    time with j censored). Concordant if risk_i > risk_j; a tie in risk counts 0.5. NaN if no pair is comparable."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=np.float64)
    if not time.shape == event.shape == risk.shape or time.ndim != 1:
        raise ValueError(
            f"time, event and risk must be 1-D of one length, got {time.shape}, {event.shape}, {risk.shape}"
        )
    events = np.flatnonzero(event)
    pairs = concordant = tied = 0
    for start in range(0, len(events), BLOCK):
        rows = events[start : start + BLOCK, None]
        comparable = (time > time[rows]) | ((time == time[rows]) & ~event)
        pairs += np.count_nonzero(comparable)
        concordant += np.count_nonzero(comparable & (risk < risk[rows]))
        tied += np.count_nonzero(comparable & (risk == risk[rows]))
    return (concordant + 0.5 * tied) / pairs if pairs else float("nan")


def survival_metrics(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """The survival metrics the MIL bundle reports."""
    return {"c_index": c_index(time, event, risk)}
