"""What any expert provides, whether pathme builds it with timm or another package registers it.

An expert definition names the expert, its feature dimension and input transform, loads its model with weights
(and says where they came from), and reads features from the model. :class:`~pathme.encoders.expert.Expert` does
the rest for every definition alike: uint8 tiles are resized to ``input_size`` and normalised with ``mean`` and
``std`` on their device, the model stays frozen in eval mode, and the region store records ``LoadedModel.source``
and ``LoadedModel.digest``. pathme's built-in and ``timm:<name>`` experts are
:class:`~pathme.encoders.spec.ExpertSpec` objects; other packages register theirs through the
``pathme.experts`` entry points (:mod:`pathme.encoders.plugins`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import torch


class LoadedModel(NamedTuple):
    """A definition's model with its weights, where they came from, and what identifies them."""

    model: torch.nn.Module
    #: how the weights were chosen, recorded as the store's ``expert_weights``: "file", "hub", "random", or a word
    #: of the plugin's own (e.g. "package" for weights shipped inside it)
    source: str
    #: what identifies the weights, recorded as the store's ``expert_digests``: a file's sha256, "random:<seed>", ...;
    #: equal digests must mean equal features, so a rerun can reuse a store
    digest: str


@runtime_checkable
class ExpertDefinition(Protocol):
    """One expert: its name, feature dimension, input transform, weights and feature readout.

    ``name`` is the registry name (``--experts NAME``; the store's feature group): no ``:``, which marks prefixes
    such as ``timm:``. ``dim`` is the length of one tile's feature vector. ``input_size`` is (height, width) in px of
    the model's input; ``mean`` and ``std`` normalise RGB values scaled to [0, 1], per channel.
    """

    name: str
    dim: int
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def load(self, weights: str | Path | None, seed: int) -> LoadedModel:
        """The model (on the CPU) with weights chosen by ``weights``: the user's ``--weights NAME=VALUE`` (a file
        or folder path, ``"hub"``, ``"random"``, or any value the definition documents), or None when none was
        given; ``seed`` is for random weights. Raises :class:`~pathme.encoders.WeightsError` for weights it
        cannot use, naming the expert and what to give instead."""
        ...

    def features(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Features [B, dim] of a normalised float batch [B, 3, *input_size]; ``model(batch)`` for a model that
        returns features. Called under ``torch.inference_mode`` (and autocast on CUDA)."""
        ...
