"""The survival losses and bins, computed by hand (the aggregators: tests/test_mil_aggregators.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathme.losses import (
    assign_bins,
    cox_partial_likelihood,
    discrete_time_nll,
    risk_from_logits,
    survival_bins,
)

DIM = 12


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- survival bins ----------------------------------------------------------------------------------------------


def test_survival_bins_are_quantiles_of_event_times() -> None:
    time = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0.5, 100])
    event = np.array([1] * 10 + [0, 0])  # censored times do not move the edges
    edges = survival_bins(time, event, 2)
    np.testing.assert_array_equal(edges, [0.0, 5.5, np.inf])
    bins = assign_bins(np.array([0.0, 0.5, 5.4, 5.5, 100.0]), edges)
    np.testing.assert_array_equal(bins, [0, 0, 0, 1, 1])
    assert bins.dtype == np.int64


def test_survival_bins_refuse_too_few_distinct_edges() -> None:
    with pytest.raises(ValueError, match="distinct edges"):
        survival_bins(np.array([3.0, 3.0, 3.0, 3.0]), np.ones(4), 3)
    with pytest.raises(ValueError, match="no uncensored"):
        survival_bins(np.array([1.0, 2.0]), np.zeros(2), 2)
    with pytest.raises(ValueError, match="outside the bins"):
        assign_bins(np.array([-1.0]), np.array([0.0, 1.0, np.inf]))


# --- discrete-time NLL ------------------------------------------------------------------------------------------

LOGITS = [[0.0, 1.0, -1.0], [2.0, -0.5, 0.3], [-1.0, 0.0, 0.5]]
BINS, EVENT = [1, 0, 2], [1.0, 0.0, 1.0]
# by hand: uncensored -log S_{y-1} - log h_y, censored -log S_y, S_k = prod_{j<=k} (1 - h_j)
UNCENSORED_0 = -math.log(1 - sig(0.0)) - math.log(sig(1.0))
CENSORED_1 = -math.log(1 - sig(2.0))
UNCENSORED_2 = -math.log(1 - sig(-1.0)) - math.log(1 - sig(0.0)) - math.log(sig(0.5))


def nll(logits: list[list[float]], bins: list[int], event: list[float], alpha: float = 0.0) -> float:
    return discrete_time_nll(torch.tensor(logits), torch.tensor(bins), torch.tensor(event), alpha=alpha).item()


def test_discrete_time_nll_by_hand() -> None:
    expected = (UNCENSORED_0 + CENSORED_1 + UNCENSORED_2) / 3
    assert nll(LOGITS, BINS, EVENT) == pytest.approx(expected, rel=1e-6)


def test_discrete_time_nll_alpha_weights_the_uncensored_part() -> None:
    # (1 - alpha) * (all terms) + alpha * (uncensored terms), alpha = 0.4
    expected = (0.6 * (UNCENSORED_0 + CENSORED_1 + UNCENSORED_2) + 0.4 * (UNCENSORED_0 + UNCENSORED_2)) / 3
    assert nll(LOGITS, BINS, EVENT, alpha=0.4) == pytest.approx(expected, rel=1e-6)


def test_censored_sample_ignores_later_bins_and_event_rewards_its_bin() -> None:
    base = [[0.2, -0.3, 0.1, 0.4]]
    later = [[0.2, -0.3, 0.1, 5.0]]  # only the hazard after bin 1 changes
    assert nll(later, [1], [0.0]) == pytest.approx(nll(base, [1], [0.0]), rel=1e-6)
    earlier = [[0.2, 2.0, 0.1, 0.4]]  # higher hazard in bin 1: dying there is likelier, surviving it less so
    assert nll(earlier, [1], [0.0]) > nll(base, [1], [0.0])
    assert nll(earlier, [1], [1.0]) < nll(base, [1], [1.0])


def test_discrete_time_nll_is_finite_for_saturated_logits() -> None:
    logits = torch.tensor([[100.0, -100.0, 50.0], [-100.0, -100.0, -100.0]], requires_grad=True)
    loss = discrete_time_nll(logits, torch.tensor([2, 0]), torch.tensor([1.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_risk_from_logits_by_hand() -> None:
    # hazards 0.5 and sig(1): S = [0.5, 0.5 * (1 - sig(1))]
    expected = -(0.5 + 0.5 * (1 - sig(1.0)))
    risk = risk_from_logits(torch.tensor([[0.0, 1.0], [2.0, 2.0]]))
    assert risk[0].item() == pytest.approx(expected, rel=1e-6)
    assert risk[1] > risk[0]  # higher hazards, worse prognosis


# --- Cox --------------------------------------------------------------------------------------------------------


def test_cox_partial_likelihood_by_hand_with_ties() -> None:
    risk = torch.tensor([0.5, -0.2, 1.0, 0.1])
    time = torch.tensor([2.0, 5.0, 1.0, 5.0])
    event = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # risk sets (Breslow): t=2 -> {0, 1, 3}; t=1 -> everyone; t=5 -> {1, 3} (the tie shares its set)
    log_set_0 = math.log(math.exp(0.5) + math.exp(-0.2) + math.exp(0.1))
    log_set_2 = math.log(math.exp(0.5) + math.exp(-0.2) + math.exp(1.0) + math.exp(0.1))
    log_set_3 = math.log(math.exp(-0.2) + math.exp(0.1))
    expected = -((0.5 - log_set_0) + (1.0 - log_set_2) + (0.1 - log_set_3)) / 3
    assert cox_partial_likelihood(risk, time, event).item() == pytest.approx(expected, rel=1e-6)


def test_cox_lower_risk_for_the_longer_survivor_lowers_the_loss() -> None:
    time, event = torch.tensor([1.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 0.0])
    ordered = cox_partial_likelihood(torch.tensor([1.0, 0.0, -1.0]), time, event)
    reversed_ = cox_partial_likelihood(torch.tensor([-1.0, 0.0, 1.0]), time, event)
    assert ordered < reversed_


def test_cox_without_events_is_a_zero_that_keeps_the_graph() -> None:
    risk = torch.tensor([0.3, -0.1], requires_grad=True)
    loss = cox_partial_likelihood(risk, torch.tensor([1.0, 2.0]), torch.zeros(2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(risk.grad, torch.zeros(2))


def test_a_survival_fold_model_saves_and_loads_with_its_bin_edges(tmp_path) -> None:
    """Bin edges come from numpy quantiles; the saved model must still load with ``weights_only=True``."""
    from pathme.engines.mil import MILModelConfig, MILTask, load_fold_model, save_fold_model

    edges = tuple(survival_bins(np.array([5.0, 9.0, 20.0, 31.0, 40.0]), np.array([1, 1, 0, 1, 1]), 2))
    task = MILTask("survival", (), "nll", edges)
    config = MILModelConfig(in_dim=8, num_outputs=task.num_outputs)
    path = save_fold_model(tmp_path / "fold_0" / "model.pt", config.build(), config, task, "pathme")
    model, loaded, source = load_fold_model(path)
    assert loaded == task and source == "pathme" and model.classifier.out_features == 2
