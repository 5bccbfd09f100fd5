"""TransMIL: transformer-based correlated MIL (Shao et al., NeurIPS 2021).

Instances are projected (Linear, ReLU), the sequence is made square by appending copies of its first instances
until its length is a square, a class token is prepended, and two transformer layers with Nyström self-attention
(Xiong et al. 2021) surround the PPEG: the pyramid position encoding generator, depthwise 7x7, 5x5 and 3x3
convolutions over the instances laid out on the square grid, added to it. The class token's output gives the
logits. The attention is the ``nystrom-attention`` package's (the one the authors' code uses).

Each bag goes through alone: Nyström landmarks are means over segments of the sequence, and the iterative
pseudo-inverse normalises by maxima over the whole batch, so padding rows or a bag's batch-mates would change
another bag's output. A bag's output therefore depends only on its own instances (in their order: the PPEG makes
TransMIL order-sensitive, unlike attention pooling).
"""

from __future__ import annotations

import math

import torch
from nystrom_attention import NystromAttention
from torch import Tensor, nn

from pathme.networks.mil.base import Aggregator, as_batch

HEADS = 8


class _TransLayer(nn.Module):
    """x + NystromAttention(LayerNorm(x))."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(
            dim=dim,
            dim_head=dim // HEADS,
            heads=HEADS,
            num_landmarks=dim // 2,
            pinv_iterations=6,
            residual=True,
            dropout=dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [1, L, dim] -> [1, L, dim]."""
        return x + self.attention(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: grid + conv7(grid) + conv5(grid) + conv3(grid), depthwise."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: Tensor, side: int) -> Tensor:
        """tokens [1, side², dim] in raster order -> [1, side², dim]."""
        grid = tokens.transpose(1, 2).unflatten(-1, (side, side))
        grid = grid + sum(conv(grid) for conv in self.convs)
        return grid.flatten(2).transpose(1, 2)


def square_padded(h: Tensor) -> tuple[Tensor, int]:
    """One bag's instances [N, dim] followed by copies of its first ones up to ``side²`` rows, side = ceil(sqrt N)."""
    side = math.ceil(math.sqrt(len(h)))
    extra = side * side - len(h)
    return torch.cat([h, h.repeat(math.ceil(extra / len(h)) if extra else 0, 1)[:extra]]), side


class TransMIL(Aggregator):
    """Projection, class token, TransLayer, PPEG, TransLayer, LayerNorm, class token -> logits."""

    no_instance_scores = (
        "TransMIL pools through its class token's Nyström self-attention, which mixes instances with their grid "
        "neighbours (PPEG): no per-instance score"
    )

    def __init__(self, in_dim: int, num_outputs: int, hidden: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden % HEADS:
            raise ValueError(f"TransMIL: hidden must be a multiple of its {HEADS} heads, got {hidden}")
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.layer1 = _TransLayer(hidden, dropout)
        self.ppeg = PPEG(hidden)
        self.layer2 = _TransLayer(hidden, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_outputs)

    def embed_bag(self, features: Tensor) -> Tensor:
        """One bag's real instances [N, in_dim] -> its class-token embedding [hidden]."""
        h, side = square_padded(self.project(features))
        x = self.layer1(torch.cat([self.cls_token[0], h]).unsqueeze(0))
        x = torch.cat([x[:, :1], self.ppeg(x[:, 1:], side)], dim=1)
        return self.norm(self.layer2(x))[0, 0]

    def attend(self, features: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """features [B, N, in_dim] (or [N, in_dim]), mask [B, N] -> "logits" [B, K], "embedding" [B, hidden] (no
        "attention")."""
        features, mask = as_batch(features, mask)
        embedding = torch.stack([self.embed_bag(bag[row_mask]) for bag, row_mask in zip(features, mask, strict=True)])
        return {"logits": self.classifier(embedding), "embedding": embedding}
