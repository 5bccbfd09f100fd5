"""The protocol every MIL aggregator follows, and the padding rule they share.

A batch holds bags of different lengths padded to ``[B, N, D]`` with a mask ``[B, N]`` (True = real instance,
:func:`pathme.data.bags.collate_bags`). An aggregator returns, per bag:

* ``"logits"`` ``[B, K]``: raw outputs the task's loss reads (class logits, discrete-time hazard logits or one Cox
  risk);
* ``"attention"`` ``[B, N]``: one score per instance for heatmaps, >= 0, summing to 1 over the real instances and
  exactly 0 on padding; what a score means is the member's ``instance_scores`` text. A member without per-instance
  scores leaves the key out (TorchScript dicts hold one value type) and says why in ``no_instance_scores``;
* ``"embedding"`` ``[B, H]``: the bag's pooled embedding (slide and patient embeddings, linear probes).

Padding never changes an output: members zero padded features before anything else (inf or NaN padding cannot
leak) and keep padded instances out of every pool, softmax, max and top-k. ``objective`` turns the task's loss
into the member's training loss (a member with auxiliary terms, CLAM-SB's instance loss or DSMIL's two streams,
adds them there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

TaskLoss = Callable[[Tensor], Tensor]


def as_batch(features: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``features`` [B, N, D] (or one bag [N, D]) and ``mask`` [B, N] (None: every instance real) as a batch with
    padded features set to 0."""
    if features.dim() == 2:
        features = features.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return features.masked_fill(~mask.unsqueeze(-1), 0.0), mask


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax over the real instances only: exactly 0 on padding. scores and mask [B, N] (or [B, N, C])."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim)


class Aggregator(nn.Module):
    """Base of every MIL aggregator (the module docstring is the protocol).

    Subclasses set ``instance_scores`` (what their ``"attention"`` means; "" when they have none, with the reason
    in ``no_instance_scores``) and implement ``attend(features, mask) -> dict``, which ``forward`` calls (a view
    with another calling convention, :func:`pathme.networks.mil_logits`, replaces only ``forward``).
    """

    instance_scores: str = ""
    no_instance_scores: str = ""

    def forward(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, D] (or one bag [N, D]), mask [B, N] True = real instance -> the outputs above."""
        return self.attend(features, mask)

    def objective(self, out: dict[str, Tensor], task_loss: TaskLoss, target: Tensor | None) -> Tensor:
        """The training loss of a batch: ``task_loss`` of the logits (members with auxiliary losses override it).

        out: what ``forward`` returned; task_loss: logits [B, K] -> the task's mean loss; target: class codes [B]
        for classification, None for survival.
        """
        return task_loss(out["logits"])
