"""The expert as a channel-first, tensor-in/tensor-out network for MONAI's bundle and deploy tools
(``network_def`` of the feature-extraction bundle), beside the channel-first views of :mod:`pathme.networks`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathme.encoders.expert import build_expert


class TileEncoder(nn.Module):
    """RGB tiles [B, 3, H, W] with values 0-255 (any float or integer type) -> expert features [B, dim].

    The extractor feeds the expert uint8 channels-last tiles; this view rounds to uint8 and permutes, so the
    expert's own resize and normalisation run exactly as in extraction.
    """

    def __init__(self, expert: str, weights: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.expert = build_expert(expert, weights, seed=seed)

    def forward(self, images: Tensor) -> Tensor:
        """RGB tiles [B, 3, H, W], values 0-255 -> expert features [B, dim]."""
        tiles = (images.round() if images.is_floating_point() else images).clamp(0, 255).to(torch.uint8)
        return self.expert(tiles.permute(0, 2, 3, 1).contiguous())
