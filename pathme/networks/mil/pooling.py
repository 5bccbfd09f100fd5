"""Mean-pool and max-pool MIL: the instance-MLP baselines every aggregator should beat.

Each instance goes through the same MLP (Linear, ReLU, dropout); the bag embedding is the mean (or the
per-dimension max) of the real instances' embeddings, and a linear layer gives the logits. They have no attention:
mean pooling weighs every instance alike, so it has no instance score; for max pooling the score of an instance is
the share of embedding dimensions it supplied the maximum of (instances tied at a maximum share that dimension),
which says where the bag embedding came from.
"""

from __future__ import annotations

from torch import Tensor, nn

from pathme.networks.mil.base import Aggregator, as_batch


class _PoolMIL(Aggregator):
    def __init__(self, in_dim: int, num_outputs: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_outputs)


class MeanPoolMIL(_PoolMIL):
    """Bag embedding = mean of the real instances' MLP embeddings."""

    no_instance_scores = "mean pooling weighs every instance alike: no instance scores"

    def attend(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, in_dim] (or [N, in_dim]), mask [B, N] -> "logits" [B, K], "embedding" [B, hidden] (no
        "attention")."""
        features, mask = as_batch(features, mask)
        weights = mask.unsqueeze(-1).to(features.dtype)
        embedding = (self.encoder(features) * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return {"logits": self.classifier(embedding), "embedding": embedding}


class MaxPoolMIL(_PoolMIL):
    """Bag embedding = per-dimension max of the real instances' MLP embeddings."""

    instance_scores = "share of the bag embedding's dimensions whose maximum the instance supplied"

    def attend(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, in_dim] (or [N, in_dim]), mask [B, N] -> "logits" [B, K], "embedding" [B, hidden],
        "attention" [B, N] (the share above: >= 0, sums to 1, 0 on padding)."""
        features, mask = as_batch(features, mask)
        h = self.encoder(features).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        embedding = h.max(dim=1).values  # [B, hidden]
        supplied = (h == embedding.unsqueeze(1)).to(h.dtype)  # [B, N, hidden]: instances at a dimension's maximum
        attention = (supplied / supplied.sum(dim=1, keepdim=True)).mean(dim=-1)  # [B, N]
        return {"logits": self.classifier(embedding), "attention": attention, "embedding": embedding}
