"""Key maps: checkpoints published in another library's layout, renamed onto the timm architecture of their expert.

pathme builds every expert with timm (transformers is not a dependency), so weights published for torchvision,
EfficientNet-PyTorch or Hugging Face transformers are renamed (and, where the two libraries store a layer
differently, reshaped) into timm's layout before the strict load. Each map is exact for the family named in its
docstring; the strict load and its shape check then catch any file of another family. timm has no reader for
these layouts, hence our own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from pathme.encoders.registry import WeightsError

State = dict[str, torch.Tensor]


def ordered(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> State:
    """The file's tensors, in file order, onto the architecture's keys in their order; every shape must agree.

    For ports of one architecture between libraries that register their modules in the same order, such as
    torchvision's MobileNetV2 and timm's ``mobilenetv2_100``, or EfficientNet-PyTorch's Lite0 and timm's
    ``tf_efficientnet_lite0`` (checked tensor by tensor on the published files).
    """
    if len(state) != len(expected):
        raise WeightsError(
            f"{source}: {len(state)} tensors in the file but {len(expected)} in the architecture; "
            "the file is not a port of this architecture"
        )
    mapped = {}
    for position, ((name, value), (key, target)) in enumerate(zip(state.items(), expected.items(), strict=True)):
        if value.shape != target.shape:
            raise WeightsError(
                f"{source}: tensor {position} {name!r} has shape {list(value.shape)} but the architecture's "
                f"tensor {position} {key!r} has {list(target.shape)}; the file is not a port of this architecture"
            )
        mapped[key] = value
    return mapped


#: transformers names -> timm names, in order (the ViT attention's ``output.dense`` before the block's)
_RENAMES = (
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.register_tokens", "reg_token"),
    ("embeddings.cls_token", "cls_token"),
    ("encoder.layer.", "blocks."),
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("mlp.weights_in.", "mlp.fc1."),
    ("mlp.weights_out.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
)
_QKV = ("query", "key", "value")


def _rename(key: str) -> str:
    key = key.removeprefix("vit.").removeprefix("dinov2.")  # saved from a *ForImageClassification model
    if key.startswith("layernorm."):
        return "norm." + key.removeprefix("layernorm.")
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def transformers_vit(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> State:
    """Hugging Face transformers ``ViTModel``, ``Dinov2Model`` and DINOv2-with-registers checkpoints -> timm's
    ``VisionTransformer``; exact (outputs equal to transformers' at the checkpoint's grid, tested on tiny models).

    Renames each layer; joins the separate query, key and value projections into timm's ``qkv`` ([q; k; v] rows);
    and where timm adds no position embedding to the class token (``no_embed_class``: registers, as DINOv2 with
    registers is built), folds the class token's position embedding into the class token, since transformers adds
    it before inserting the registers. Drop ``embeddings.mask_token`` and ``pooler.*`` with the spec's unused keys.
    """
    mapped: State = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = _rename(key)
        for index, part in enumerate(_QKV):
            marker = f".attention.attention.{part}."
            if marker in name:
                block, _, kind = name.partition(marker)
                parts.setdefault(f"{block}.attn.qkv.{kind}", {})[index] = value
                break
        else:
            mapped[name] = value
    for key, pieces in parts.items():
        if len(pieces) != 3:
            raise WeightsError(f"{source}: {key} lacks one of the query, key and value projections")
        mapped[key] = torch.cat([pieces[i] for i in range(3)], dim=0)
    position, target = mapped.get("pos_embed"), expected.get("pos_embed")
    if position is not None and target is not None and position.shape[1] == target.shape[1] + 1:
        mapped["cls_token"] = mapped["cls_token"] + position[:, :1]
        mapped["pos_embed"] = position[:, 1:]
    return mapped


KEY_MAPS: dict[str, Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], str], State]] = {
    "ordered": ordered,
    "transformers": transformers_vit,
}


def apply_key_map(
    name: str | None, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> State:
    """``state`` in timm's layout: unchanged for ``name=None``, else through the named map; WeightsError if it fails."""
    if name is None:
        return dict(state)
    return KEY_MAPS[name](state, expected, source)
