"""Hierarchical multi-scale attention: L1 tokens (and scale prompts) gather their L0 detail by cross-attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathme.networks.layers import CrossAttentionLayer
from pathme.wsi.grid import L0_PARENT, L0_SIDE, L1_SIDE

N_L0, N_L1 = L0_SIDE * L0_SIDE, L1_SIDE * L1_SIDE


class HMSA(nn.Module):
    """Local layers (each L1 token attends to its own 16 L0 children only), then global layers (prompts and every
    L1 token attend to all valid L0 tokens). Each layer is post-norm cross-attention without an MLP. The token
    order is [prompts, L1 tokens in raster order] from start to end."""

    def __init__(self, dim: int, heads: int, local_layers: int, global_layers: int) -> None:
        super().__init__()
        self.local_layers = nn.ModuleList(CrossAttentionLayer(dim, heads) for _ in range(local_layers))
        self.global_layers = nn.ModuleList(CrossAttentionLayer(dim, heads) for _ in range(global_layers))
        parent = torch.as_tensor(L0_PARENT)
        self.register_buffer("child_mask", parent[None, :] == torch.arange(N_L1)[:, None], persistent=False)

    def local(self, l0: Tensor, l0_valid: Tensor, l1: Tensor, l1_valid: Tensor) -> Tensor:
        """The local stage alone: [B, 256, D], [B, 256], [B, 16, D], [B, 16] -> [B, 16, D]; an L1 token with
        no valid child comes out as it went in."""
        l0, l1 = _checked(l0, l0_valid, l1, l1_valid)
        return self._local(l0, l0_valid, l1)

    def forward(self, l0: Tensor, l0_valid: Tensor, l1: Tensor, l1_valid: Tensor, prompts: Tensor) -> Tensor:
        """Backbone outputs in, region representation [B, P + 16, D] out (rows of missing L1 tiles are zero)."""
        l0, l1 = _checked(l0, l0_valid, l1, l1_valid)
        x = torch.cat([prompts, self._local(l0, l0_valid, l1)], dim=1)
        allowed = l0_valid[:, None, :].expand(-1, x.shape[1], -1)
        for layer in self.global_layers:
            x = layer(x, l0, allowed)
        rows = torch.cat([l1_valid.new_ones(l1_valid.shape[0], prompts.shape[1]), l1_valid], dim=1)
        return torch.where(rows[..., None], x, 0)

    def _local(self, l0: Tensor, l0_valid: Tensor, l1: Tensor) -> Tensor:
        allowed = self.child_mask & l0_valid[:, None, :]
        for layer in self.local_layers:
            l1 = layer(l1, l0, allowed)
        return l1


def _checked(l0: Tensor, l0_valid: Tensor, l1: Tensor, l1_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Refuse anything but whole regions in canonical order, and zero missing tokens so nothing of them enters."""
    if l0.shape[1] != N_L0 or l1.shape[1] != N_L1:
        raise ValueError(f"HMSA needs whole regions ({N_L0} L0, {N_L1} L1 tokens), got {l0.shape[1]}, {l1.shape[1]}")
    return torch.where(l0_valid[..., None], l0, 0), torch.where(l1_valid[..., None], l1, 0)
