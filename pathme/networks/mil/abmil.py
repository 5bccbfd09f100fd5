"""Attention MIL (Ilse, Tomczak & Welling, ICML 2018), plain or gated.

Padding is hidden twice: padded features are zeroed before the encoder (so even inf or NaN padding cannot leak)
and their attention scores are -inf before the softmax (so their weight is exactly 0). A bag therefore gives the
same output alone or padded in a batch, and permuting its instances permutes the attention and keeps the logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from pathme.networks.mil.base import Aggregator, as_batch, masked_softmax


class PlainAttention(nn.Module):
    """a(h) = w^T tanh(V h) (Ilse et al. eq. 8)."""

    def __init__(self, hidden: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        """h [B, N, hidden] -> unnormalised scores [B, N]."""
        return self.w(self.v(h)).squeeze(-1)


class GatedAttention(nn.Module):
    """a(h) = w^T (tanh(V h) ⊙ sigmoid(U h)) (Ilse et al. eq. 9): the gate lets the score depend non-linearly on h."""

    def __init__(self, hidden: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        """h [B, N, hidden] -> unnormalised scores [B, N]."""
        return self.w(self.v(h) * self.u(h)).squeeze(-1)


class ABMIL(Aggregator):
    """Instances -> hidden embeddings h -> attention-weighted mean -> logits.

    ``attention``: the softmax attention weight of each instance in the bag embedding (Ilse et al. eq. 7).
    """

    instance_scores = "attention weight of the instance in the bag embedding (softmax over the bag)"

    def __init__(
        self,
        in_dim: int,
        num_outputs: int,
        hidden: int = 256,
        dropout: float = 0.25,
        attention_dim: int = 128,
        gated: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = (GatedAttention if gated else PlainAttention)(hidden, attention_dim, dropout)
        self.classifier = nn.Linear(hidden, num_outputs)

    def attend(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, in_dim] (or [N, in_dim]: B = 1), mask [B, N] True = real instance.

        Returns "logits" [B, num_outputs] (raw), "attention" [B, N] (softmax over real instances, exactly 0 on
        padding), "embedding" [B, hidden], "instances" [B, N, hidden] (the h of every instance) and "mask" [B, N].
        """
        features, mask = as_batch(features, mask)
        h = self.encoder(features)
        attention = masked_softmax(self.attention(h), mask)
        embedding = (attention.unsqueeze(-1) * h).sum(dim=1)
        return {
            "logits": self.classifier(embedding),
            "attention": attention,
            "embedding": embedding,
            "instances": h,
            "mask": mask,
        }
