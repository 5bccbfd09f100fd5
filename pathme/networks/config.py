"""Sizes of the PatHME network, in one frozen record so a checkpoint's network can be rebuilt exactly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PatHMEConfig:
    """Every size of the network; defaults are the paper's (D 1024, depth 12, 8 heads, 10 prompts, HMSA 4 + 4)."""

    in_dim: int
    embed_dim: int = 1024
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_prompts: int = 10
    hmsa_local_layers: int = 4
    hmsa_global_layers: int = 4
    hmsa_heads: int = 4
    drop_path: float = 0.1
    layerscale_init: float = 1e-5
    head_hidden: int = 2048
    head_bottleneck: int = 256
    num_prototypes: int = 65536

    def __post_init__(self) -> None:
        for heads in (self.num_heads, self.hmsa_heads):
            if self.embed_dim % heads:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {heads} heads")
        if min(self.in_dim, self.embed_dim, self.depth, self.num_prompts) < 1:
            raise ValueError("in_dim, embed_dim, depth and num_prompts must be positive")

    @classmethod
    def tiny(cls, in_dim: int) -> PatHMEConfig:
        """CPU preset for tests and smoke runs: every mechanism present, sizes small."""
        return cls(
            in_dim=in_dim,
            embed_dim=64,
            depth=2,
            num_heads=4,
            num_prompts=10,
            hmsa_local_layers=2,
            hmsa_global_layers=2,
            hmsa_heads=2,
            drop_path=0.0,
            layerscale_init=0.1,  # two blocks: DINOv2's 1e-5 would leave the residual stream (and CLS) inert
            head_hidden=128,
            head_bottleneck=32,
            num_prototypes=512,
        )


def preset_config(preset: str, in_dim: int, overrides: Mapping[str, object] | None = None) -> PatHMEConfig:
    """The ``tiny`` or ``paper`` network for inputs of ``in_dim``, with fields replaced by ``overrides``; training and
    inference build it the same way, so a teacher loads strictly into the network it was trained as."""
    if preset not in ("tiny", "paper"):
        raise ValueError(f"preset must be 'tiny' or 'paper', got {preset!r}")
    base = PatHMEConfig.tiny(in_dim) if preset == "tiny" else PatHMEConfig(in_dim=in_dim)
    return replace(base, **dict(overrides or {}))
