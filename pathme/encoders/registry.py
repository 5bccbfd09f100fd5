"""Expert specs: registry name -> timm architecture, feature dimension, pooling and hub id.

The built-in architectures follow the public model cards of UNI, Prov-GigaPath and Virchow2; the input
transform of each expert (input size, mean, std) is set in the model's pretrained config through
``pretrained_cfg_overlay`` so that ``timm.data.resolve_model_data_config`` returns the expert's own values.
Any timm model is available as ``timm:<model name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SwiGLUPacked

#: how an embedding is taken: the class token; the class token concatenated with the mean of the patch tokens
#: (register tokens excluded); or the model's own pooled output (CNNs, ViTs trained with average pooling)
POOLINGS = ("cls", "cls+mean", "pool")
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ExpertSpec:
    """How to build one expert; ``tiny`` marks test and demo experts, which are random unless given a file."""

    name: str
    timm_name: str
    timm_kwargs: dict[str, Any]
    dim: int
    pooling: str
    hub_id: str | None
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"expert {self.name!r}: pooling must be one of {POOLINGS}, got {self.pooling!r}")


def _transform(size: int) -> dict[str, Any]:
    """Pretrained-config overlay: square input of ``size`` px with ImageNet normalisation."""
    return {"input_size": (3, size, size), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}


_UNI = {
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1e-5,
    "num_classes": 0,
    "dynamic_img_size": True,
    "pretrained_cfg_overlay": _transform(224),
}
_GIGAPATH = {
    "img_size": 224,
    "patch_size": 16,
    "embed_dim": 1536,
    "depth": 40,
    "num_heads": 24,
    "mlp_ratio": 5.33334,
    "init_values": 1e-5,
    "num_classes": 0,
    "pretrained_cfg_overlay": _transform(224),
}
_VIRCHOW2 = {
    "img_size": 224,
    "init_values": 1e-5,
    "num_classes": 0,
    "mlp_ratio": 5.3375,
    "global_pool": "",
    "dynamic_img_size": True,
    "mlp_layer": SwiGLUPacked,
    "act_layer": torch.nn.SiLU,
    "reg_tokens": 4,
    "pretrained_cfg_overlay": _transform(224),
}
_TINY_VIT = {
    "img_size": 64,
    "patch_size": 16,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "num_classes": 0,
    "pretrained_cfg_overlay": _transform(64),
}
_TINY_CNN = {"stem_width": 8, "channels": (8, 16, 32, 64), "num_classes": 0, "pretrained_cfg_overlay": _transform(64)}

BUILTIN: dict[str, ExpertSpec] = {
    spec.name: spec
    for spec in (
        ExpertSpec("uni", "vit_large_patch16_224", _UNI, 1024, "cls", "hf-hub:MahmoodLab/uni"),
        ExpertSpec(
            "gigapath", "vit_giant_patch14_dinov2", _GIGAPATH, 1536, "cls", "hf-hub:prov-gigapath/prov-gigapath"
        ),
        ExpertSpec("virchow2", "vit_huge_patch14_224", _VIRCHOW2, 2560, "cls+mean", "hf-hub:paige-ai/Virchow2"),
        ExpertSpec("virchow2-cls", "vit_huge_patch14_224", _VIRCHOW2, 1280, "cls", "hf-hub:paige-ai/Virchow2"),
        ExpertSpec("tiny-vit", "vit_tiny_patch16_224", _TINY_VIT, 64, "cls", None, tiny=True),
        ExpertSpec("tiny-cnn", "resnet10t", _TINY_CNN, 64, "pool", None, tiny=True),
    )
}


def list_experts() -> list[str]:
    """Names of the built-in experts; any timm model is also available as ``timm:<model name>``."""
    return list(BUILTIN)


def create_model(spec: ExpertSpec) -> torch.nn.Module:
    """The expert's timm architecture with freshly initialised weights, on the current default device."""
    return timm.create_model(spec.timm_name, **spec.timm_kwargs)


def _timm_spec(name: str) -> ExpertSpec:
    """Spec of a timm model, read from the architecture built on the meta device (no memory, no weights)."""
    timm_name = name.removeprefix(TIMM_PREFIX)
    if not timm_name or ":" in timm_name or "/" in timm_name:
        raise ValueError(
            f"expert {name!r}: give a timm registry name after 'timm:' (e.g. 'timm:resnet18'); "
            "hub weights are asked for with weights='hub'"
        )
    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, num_classes=0)
    except RuntimeError as error:
        raise ValueError(f"expert {name!r}: {error}; see timm.list_models()") from error
    # a ViT that reads out its class token; anything else (CNNs, average-pooled ViTs) uses timm's pooled output
    cls = getattr(model, "cls_token", None) is not None and getattr(model, "global_pool", None) == "token"
    dim = model.num_features if cls else model.head_hidden_size  # head_hidden_size: after any pre-logits layer
    cfg = model.pretrained_cfg
    # only hub repositories that hold a timm config.json can be loaded through "hf-hub:"
    hub_id = f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") and not cfg.get("hf_hub_filename") else None
    return ExpertSpec(name, timm_name, {"num_classes": 0}, dim, "cls" if cls else "pool", hub_id)


def get_spec(name: str) -> ExpertSpec:
    """Spec of a built-in expert, or of ``timm:<model name>`` for any timm model."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    raise ValueError(f"unknown expert {name!r}: choose one of {', '.join(BUILTIN)}, or 'timm:<model name>'")
