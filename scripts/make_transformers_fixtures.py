"""Write the tiny Hugging Face transformers checkpoints that test pathme's ``transformers`` key map.

For each family pathme maps onto timm (``ViTModel`` as Phikon, ``Dinov2Model`` as Phikon-v2, DINOv2 with
registers and SwiGLU as Hibou), a tiny random model is saved with ``save_pretrained`` (``config.json`` and
``model.safetensors``, the files users download) beside ``reference.safetensors``: a fixed input batch and
transformers' own ``last_hidden_state`` for it. The test loads the checkpoint through the key map into timm and
compares. transformers is not a pathme dependency: run this once where it is installed, and commit the output.

Usage: ``python scripts/make_transformers_fixtures.py [--out tests/data/transformers]``
(written with transformers 4.57.1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
COMMON |= {"layer_norm_eps": 1e-6, "qkv_bias": True}
FAMILIES = {
    "vit": (transformers.ViTConfig, transformers.ViTModel, {"intermediate_size": 64}),
    "dinov2": (transformers.Dinov2Config, transformers.Dinov2Model, {"mlp_ratio": 4, "layerscale_value": 0.5}),
    "dinov2_registers": (
        transformers.Dinov2WithRegistersConfig,
        transformers.Dinov2WithRegistersModel,
        {"mlp_ratio": 4, "layerscale_value": 0.5, "use_swiglu_ffn": True, "num_register_tokens": 4},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/transformers")
    args = parser.parse_args()
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 28, 28)
    for name, (config_class, model_class, extra) in FAMILIES.items():
        model = model_class(config_class(**COMMON, **extra)).eval()
        with torch.no_grad():  # random LayerScale and biases, so every mapped tensor changes the output
            for parameter in model.parameters():
                parameter.normal_(0, 0.2)
            tokens = model(pixel_values=pixels).last_hidden_state
        folder = args.out / name
        model.save_pretrained(folder, safe_serialization=True)
        save_file({"pixels": pixels, "tokens": tokens.contiguous()}, folder / "reference.safetensors")
        print(f"{folder}: {sum(p.numel() for p in model.parameters())} parameters, tokens {tuple(tokens.shape)}")


if __name__ == "__main__":
    main()
