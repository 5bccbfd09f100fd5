"""Survival objectives for slide-level MIL (docs/method.md section 5): discrete-time NLL over K bins, and Cox.

The discrete-time model follows Zadeh & Schmid 2020 as used by Chen et al. (Patch-GCN, MCAT): a hazard per bin,
h_k = sigmoid(logit_k), survival S_k = prod_{j<=k} (1 - h_j). Everything is computed in log space with
logsigmoid, so saturated logits give finite losses.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def survival_bins(time: np.ndarray, event: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin edges [num_bins + 1]: quantiles of the uncensored times, first edge 0, last +inf.

    Quantiles of events (not of all times) give each bin a similar number of events, which the NLL needs.
    """
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event).astype(bool)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if not (np.isfinite(time).all() and (time >= 0).all()):
        raise ValueError("survival times must be finite and >= 0")
    if not event.any():
        raise ValueError("no uncensored time: survival bins are quantiles of the event times")
    edges = np.quantile(time[event], np.linspace(0.0, 1.0, num_bins + 1))
    edges[0], edges[-1] = 0.0, np.inf
    if np.unique(edges).size < num_bins + 1:
        raise ValueError(
            f"{num_bins} bins need {num_bins + 1} distinct edges, but the {int(event.sum())} event times give "
            f"only {np.unique(edges).size} ({edges.tolist()}): use fewer bins (num_bins; pathme mil --num-bins)"
        )
    return edges


def assign_bins(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each time in [0, num_bins): bin k holds edges[k] <= t < edges[k + 1]."""
    time, edges = np.asarray(time, dtype=np.float64), np.asarray(edges, dtype=np.float64)
    outside = (time < edges[0]) | ~(time < edges[-1])
    if outside.any():
        raise ValueError(f"time(s) {time[outside][:5].tolist()} outside the bins [{edges[0]}, {edges[-1]})")
    return (np.searchsorted(edges, time, side="right") - 1).astype(np.int64)


def discrete_time_nll(logits: Tensor, bins: Tensor, event: Tensor, alpha: float = 0.0, eps: float = 1e-7) -> Tensor:
    """Mean over the batch of the censored discrete-time NLL; ``event`` 1 = death observed, 0 = censored.

    Uncensored: -log S_{y-1} - log h_y; censored: -log S_y; the loss is (1 - alpha) * both + alpha * the
    uncensored part. Every log term is floored at log(eps), as the reference clamps S and h at eps.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    floor = math.log(eps)
    bins, event = bins.long().unsqueeze(1), event.to(logits.dtype)
    log_hazard = F.logsigmoid(logits).clamp(min=floor)
    log_survival = torch.cumsum(F.logsigmoid(-logits), dim=1).clamp(min=floor)
    log_survival = torch.cat([torch.zeros_like(log_survival[:, :1]), log_survival], dim=1)  # S_{-1} = 1
    before = log_survival.gather(1, bins).squeeze(1)  # log S_{y-1}
    at = log_survival.gather(1, bins + 1).squeeze(1)  # log S_y
    uncensored = -event * (before + log_hazard.gather(1, bins).squeeze(1))
    censored = -(1 - event) * at
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def risk_from_logits(logits: Tensor) -> Tensor:
    """-sum_k S_k: minus the expected number of bins survived, so higher = worse prognosis (for the c-index)."""
    return -torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1)).sum(dim=1)


def cox_partial_likelihood(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative log Cox partial likelihood, Breslow ties (the risk set of t holds every time >= t), mean over
    events; a batch without events gives a zero that keeps the graph."""
    observed = event > 0
    if not observed.any():
        return risk.sum() * 0
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j still at risk at time i
    log_denominator = torch.logsumexp(risk.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)
    return -(risk - log_denominator)[observed].mean()
