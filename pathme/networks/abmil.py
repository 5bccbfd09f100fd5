"""Attention MIL (Ilse et al. 2018), plain or gated, for bags padded into batches.

Padding is hidden twice: padded features are zeroed before the encoder (so even inf or NaN padding cannot leak)
and their attention scores are -inf before the softmax (so their weight is exactly 0). A bag therefore gives the
same output alone or padded in a batch. Logits are raw: the loss applies softmax or sigmoid once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _PlainAttention(nn.Module):
    """a(h) = w^T tanh(V h)."""

    def __init__(self, hidden: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.w(self.v(h)).squeeze(-1)


class _GatedAttention(nn.Module):
    """a(h) = w^T (tanh(V h) ⊙ sigmoid(U h)): the gate lets the score depend non-linearly on h."""

    def __init__(self, hidden: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.w(self.v(h) * self.u(h)).squeeze(-1)


class ABMIL(nn.Module):
    """Tokens -> hidden embeddings -> attention-weighted mean -> logits."""

    def __init__(
        self,
        in_dim: int,
        num_outputs: int,
        hidden: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        attention = _GatedAttention if gated else _PlainAttention
        self.attention = attention(hidden, attention_dim, dropout)
        self.classifier = nn.Linear(hidden, num_outputs)

    def attend(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, in_dim] (or [N, in_dim] -> treated as B=1), mask [B, N] True = real token.

        Returns "logits" [B, num_outputs] (raw), "attention" [B, N] (softmax over real tokens, exactly 0 on
        padding, sums to 1), "embedding" [B, hidden].
        """
        if features.dim() == 2:
            features = features.unsqueeze(0)
            if mask is not None:
                mask = mask.unsqueeze(0)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        features = features.masked_fill(~mask.unsqueeze(-1), 0.0)
        h = self.encoder(features)
        scores = self.attention(h).masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        embedding = torch.bmm(attention.unsqueeze(1), h).squeeze(1)
        return {"logits": self.classifier(embedding), "attention": attention, "embedding": embedding}

    forward = attend  # a named method too, so a subclass with another forward (networks.channel_first) reuses it
