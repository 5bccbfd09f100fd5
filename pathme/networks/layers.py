"""Attention layers of the backbone and of HMSA, all on ``scaled_dot_product_attention`` with boolean key masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, trunc_normal_
from torch import Tensor, nn

LN_EPS = 1e-6


def init_linear(module: nn.Module) -> None:
    """ViT initialisation: truncated normal (std 0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, heads: int) -> Tensor:
    """Multi-head attention where only ``allowed`` keys get weight.

    q [B, Nq, D], k and v [B, Nk, D]; allowed [B, Nk] (the same keys for every query) or [B, Nq, Nk]. Every
    query must have at least one allowed key (a row with none would be NaN); callers guarantee it.
    """

    def split(t: Tensor) -> Tensor:
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    mask = allowed[:, None, None, :] if allowed.dim() == 2 else allowed[:, None]
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key-padding mask (missing tiles are keys nobody attends to)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """Tokens x [B, N, D] attending where ``allowed`` [B, N, N] (or broadcastable) is True -> [B, N, D]."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(attend(q, k, v, allowed, self.heads))


class Block(nn.Module):
    """Pre-norm ViT block (attention + MLP, LayerScale, drop-path) whose attention honours a key mask."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layerscale_init: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim, init_values=layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values=layerscale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [B, N, D], allowed [B, N] (keys that may be attended to)."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), allowed)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention, ``x <- LayerNorm(x + Attn(x, context))``; a query with no allowed key keeps x.

    Queries never attend to each other, so each output row depends only on its own query and its allowed keys.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: Tensor, context: Tensor, allowed: Tensor) -> Tensor:
        """x [B, Nq, D], context [B, Nk, D], allowed [B, Nq, Nk]."""
        has_key = allowed.any(dim=-1, keepdim=True)
        k, v = self.kv(context).chunk(2, dim=-1)
        # keyless rows attend to everything just to stay finite; torch.where then discards them
        out = self.proj(attend(self.q(x), k, v, allowed | ~has_key, self.heads))
        return torch.where(has_key, self.norm(x + out), x)
