"""DSMIL: dual-stream MIL (Li, Li & Eliceiri, CVPR 2021).

Stream 1 (max pooling): an instance classifier scores every instance for every output; per output, the instance
with the highest score is that output's *critical instance*, and its score is the stream's bag score. Stream 2
(the bag stream): every instance's query is compared with the critical instance's query (inner product scaled by
1/sqrt(d)); a softmax over the bag turns these into weights of the instances' values, and a 1-D convolution over
the weighted values gives the bag score. The output is the mean of the two streams' scores, and the training loss
the mean of their losses (paper sec. 3.2). The values are the instances' features themselves, as in the authors'
code's default (``passing_v`` off); ``passing_v`` puts dropout, a linear layer and a ReLU before them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pathme.networks.mil.base import Aggregator, TaskLoss, as_batch, masked_softmax


class DSMIL(Aggregator):
    """Max-instance stream + distance-weighted bag stream; ``hidden`` is the query size (128 in the paper)."""

    instance_scores = (
        "bag-stream attention: softmax over the bag of the instance's query similarity to the critical instance "
        "(highest instance score), averaged over the outputs"
    )

    def __init__(
        self, in_dim: int, num_outputs: int, hidden: int = 128, dropout: float = 0.0, passing_v: bool = False
    ) -> None:
        super().__init__()
        self.instance_classifier = nn.Linear(in_dim, num_outputs)
        self.query = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.Tanh())
        passing = (nn.Dropout(dropout), nn.Linear(in_dim, in_dim), nn.ReLU())
        self.value = nn.Sequential(*passing) if passing_v else nn.Identity()
        self.bag_classifier = nn.Conv1d(num_outputs, num_outputs, kernel_size=in_dim)

    def attend(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, in_dim] (or [N, in_dim]), mask [B, N].

        Returns "logits" [B, K] (the mean of the two streams), "max_logits" and "bag_logits" [B, K], "critical"
        [B, K] (index of each output's critical instance), "attention" [B, N] and "embedding" [B, K * in_dim] (the
        bag stream's weighted values, flattened).
        """
        features, mask = as_batch(features, mask)
        scores = self.instance_classifier(features).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # [B, N, K]
        max_logits, critical = scores.max(dim=1)  # [B, K]
        queries = self.query(features)  # [B, N, hidden]
        critical_queries = torch.gather(queries, 1, critical.unsqueeze(-1).expand(-1, -1, queries.shape[-1]))
        similarity = queries @ critical_queries.transpose(1, 2) / math.sqrt(queries.shape[-1])  # [B, N, K]
        weights = masked_softmax(similarity, mask.unsqueeze(-1).expand_as(similarity), dim=1)
        pooled = weights.transpose(1, 2) @ self.value(features)  # [B, K, in_dim]
        bag_logits = self.bag_classifier(pooled).squeeze(-1)  # [B, K]
        return {
            "logits": (max_logits + bag_logits) / 2,
            "max_logits": max_logits,
            "bag_logits": bag_logits,
            "critical": critical,
            "attention": weights.mean(dim=-1),
            "embedding": pooled.flatten(1),
        }

    def objective(self, out: dict[str, Tensor], task_loss: TaskLoss, target: Tensor | None) -> Tensor:
        """The mean of the max-instance stream's and the bag stream's task losses."""
        return (task_loss(out["max_logits"]) + task_loss(out["bag_logits"])) / 2
