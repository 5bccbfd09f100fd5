"""The PatHME network: one shared ViT over the L0 and L1 token grids of a region, scale prompts, HMSA, DINO head."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from pathme.networks.config import PatHMEConfig
from pathme.networks.heads import DINOHead
from pathme.networks.hmsa import HMSA
from pathme.networks.layers import LN_EPS, Block, init_linear
from pathme.networks.position import SCALE_SIDES, GridPositionEmbedding
from pathme.wsi.grid import L0_SIDE, L1_SIDE, raster_positions

#: learned tokens, none of them weight-decayed
_TOKEN_PREFIXES = ("pos_embed.", "cls_token", "mask_token", "prompts.")
#: parameters below the first block (lowest layer-wise learning rate)
_EMBED_PREFIXES = ("projector.", "pos_embed.", "cls_token", "mask_token")


class PatHME(nn.Module):
    """Features of a region's tiles in, region tokens out (see docs/method.md section 3).

    Sequences are [CLS, patches] for L0 and [CLS, prompts, patches] for L1. Missing tiles are zeroed on entry,
    masked as keys in every attention and zeroed on exit, so they affect no output.
    """

    def __init__(self, config: PatHMEConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.projector = nn.Sequential(nn.Linear(config.in_dim, dim), nn.GELU())
        self.pos_embed = GridPositionEmbedding(dim)
        # tiny (as in DINOv2): with LayerScale near zero a larger CLS token would dominate the residual stream and
        # give every region the same CLS output at initialisation, so DINO's centring would leave nothing to learn
        self.cls_token = nn.Parameter(nn.init.normal_(torch.empty(1, 1, dim), std=1e-6))
        # expert features share a large common direction (mean tile cosine ~0.9); standardising them with the
        # training cohort's statistics lets the differences between regions reach the CLS. Buffers, so the teacher
        # and every checkpoint carry the statistics it was trained with.
        self.register_buffer("input_mean", torch.zeros(config.in_dim))
        self.register_buffer("input_std", torch.ones(config.in_dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.prompts = nn.ParameterList(
            nn.Parameter(trunc_normal_(torch.empty(config.num_prompts, dim), std=0.02)) for _ in range(config.depth)
        )
        drop_rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, config.layerscale_init, rate) for rate in drop_rates
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fusion = HMSA(dim, config.hmsa_heads, config.hmsa_local_layers, config.hmsa_global_layers)
        for module in (self.projector, self.blocks, self.fusion):
            module.apply(init_linear)
        self.head = DINOHead(dim, config.num_prototypes, config.head_hidden, config.head_bottleneck)

    @torch.no_grad()
    def set_input_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Per-dimension mean and std [in_dim] of the expert features, for standardising the input tokens."""
        if mean.shape != self.input_mean.shape or std.shape != self.input_std.shape:
            raise ValueError(f"statistics must have shape {tuple(self.input_mean.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("every feature std must be positive")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def encode(
        self, tokens: Tensor, positions: Tensor, valid: Tensor, scale: str, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """One sequence through the shared ViT.

        tokens [B, N, in_dim], positions [B, N, 2] (row, col) on ``scale``'s grid, valid [B, N], mask [B, N]
        (iBOT: True = replaced by the mask token). Returns "cls" [B, D], "patches" [B, N, D] (zero where
        invalid) and, for L1, "prompts" [B, P, D]; all after the final LayerNorm.
        """
        if scale not in SCALE_SIDES:
            raise ValueError(f"scale must be one of {sorted(SCALE_SIDES)}, got {scale!r}")
        batch = tokens.shape[0]
        keep = valid[..., None]
        standardized = (tokens - self.input_mean.to(tokens.dtype)) / self.input_std.to(tokens.dtype)
        x = self.projector(torch.where(keep, standardized, 0))
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.pos_embed(positions, valid, scale)
        cls = self.cls_token.expand(batch, -1, -1)
        num_prompts = self.config.num_prompts if scale == "L1" else 0
        allowed = torch.cat([valid.new_ones(batch, 1 + num_prompts), valid], dim=1)
        for block, prompt in zip(self.blocks, self.prompts, strict=True):
            # VPT-deep: fresh prompts at every layer, CLS and patch tokens carry their state
            fresh = [prompt.expand(batch, -1, -1)] if num_prompts else []
            out = block(torch.cat([cls, *fresh, x], dim=1), allowed)
            cls, prompts, x = out[:, :1], out[:, 1 : 1 + num_prompts], out[:, 1 + num_prompts :]
        result = {"cls": self.norm(cls[:, 0]), "patches": torch.where(keep, self.norm(x), 0)}
        if num_prompts:
            result["prompts"] = self.norm(prompts)
        return result

    def hmsa(self, l0: Tensor, l0_valid: Tensor, l1: Tensor, l1_valid: Tensor, prompts: Tensor) -> Tensor:
        """Hierarchical multi-scale attention on backbone outputs -> [B, P + 16, D] in order [prompts, L1]."""
        return self.fusion(l0, l0_valid, l1, l1_valid, prompts)

    def hmsa_local(self, l0: Tensor, l0_valid: Tensor, l1: Tensor, l1_valid: Tensor) -> Tensor:
        """The local HMSA stage alone (each L1 token sees only its 16 L0 children) -> [B, 16, D]."""
        return self.fusion.local(l0, l0_valid, l1, l1_valid)

    def region_tokens(self, l0_feats: Tensor, l0_valid: Tensor, l1_feats: Tensor, l1_valid: Tensor) -> Tensor:
        """Whole regions in canonical raster order ([B, 256, in_dim], [B, 256], [B, 16, in_dim], [B, 16]) ->
        region representation [B, P + 16, D]."""
        l0 = self.encode(l0_feats, _grid(L0_SIDE, l0_feats), l0_valid, "L0")
        l1 = self.encode(l1_feats, _grid(L1_SIDE, l1_feats), l1_valid, "L1")
        return self.hmsa(l0["patches"], l0_valid, l1["patches"], l1_valid, l1["prompts"])

    def param_groups(self, weight_decay: float, layer_decay: float, base_lr: float) -> list[dict]:
        """AdamW groups: weight decay only on matrices (not biases, norms, LayerScale gammas or learned tokens);
        lr_scale = layer_decay ** (depth + 1 - layer_id) with layer_id 0 for projector and embeddings, i + 1 for
        block i and its prompts, depth + 1 (lr_scale 1) for the final norm, HMSA and head. Frozen parameters
        (the head's fixed weight_g) are left out."""
        top = self.config.depth + 1
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            layer = self._layer_id(name)
            decay = param.ndim > 1 and not name.startswith(_TOKEN_PREFIXES)
            if (layer, decay) not in groups:
                scale = layer_decay ** (top - layer)
                groups[layer, decay] = {
                    "name": f"layer{layer:02d}.{'decay' if decay else 'no_decay'}",
                    "params": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr_scale": scale,
                    "lr": base_lr * scale,
                }
            groups[layer, decay]["params"].append(param)
        return [groups[key] for key in sorted(groups)]

    def _layer_id(self, name: str) -> int:
        if name.startswith(_EMBED_PREFIXES):
            return 0
        if name.startswith(("blocks.", "prompts.")):
            return int(name.split(".")[1]) + 1
        return self.config.depth + 1


def _grid(side: int, like: Tensor) -> Tensor:
    """Canonical (row, col) of a whole ``side`` x ``side`` grid for each sample of ``like``, [B, side**2, 2]."""
    positions = torch.as_tensor(raster_positions(side, side), device=like.device)
    return positions.expand(like.shape[0], -1, -1)
