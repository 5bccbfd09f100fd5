"""Projection head shared by the DINO (CLS) and iBOT (patch) losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from pathme.networks.layers import init_linear


class DINOHead(nn.Module):
    """3-layer MLP to a bottleneck, L2 normalisation, then a weight-normalised prototype layer.

    The prototype layer's norm ``g`` is fixed to 1, so logits are cosines to the prototypes (bounded, as the
    sharpening temperatures assume). ``last_layer`` is exposed so a trainer can freeze it early in training.
    """

    def __init__(self, in_dim: int, num_prototypes: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.mlp.apply(init_linear)
        last = nn.Linear(bottleneck, num_prototypes, bias=False)
        init_linear(last)
        self.last_layer = weight_norm(last)
        with torch.no_grad():
            self.weight_g.fill_(1.0)
        self.weight_g.requires_grad_(False)

    @property
    def weight_g(self) -> nn.Parameter:
        """The fixed norm of each prototype, [K, 1]."""
        return self.last_layer.parametrizations.weight.original0

    def forward(self, x: Tensor) -> Tensor:
        """[..., D] -> [..., K] prototype logits."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=1e-6))
