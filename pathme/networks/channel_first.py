"""Channel-first, tensor-in/tensor-out views of the pathme networks, for MONAI's bundle and deploy tools.

MONAI's ``verify_net_in_out``, ``ckpt_export`` and MONAI Deploy inference feed one channel-first tensor
[B, C, *spatial] and read one tensor whose dim 1 holds the output channels. Our networks take token sequences
[B, N, D] with masks and return dicts, so each view here keeps the network's parameters unchanged (a training
checkpoint loads into it as it is) and only changes the calling convention.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from pathme.networks.mil import Aggregator, aggregator_spec
from pathme.networks.pathme_net import PatHME
from pathme.wsi.grid import L1_SIDE


def _logits_channel_first(self: Aggregator, features: Tensor) -> Tensor:
    """Features [B, D, N] (every instance real) -> logits [B, num_outputs]."""
    return self.attend(features.transpose(1, 2), None)["logits"]


def mil_logits(
    model: str,
    in_dim: int,
    num_outputs: int,
    hidden: int | None = None,
    dropout: float | None = None,
    options: Mapping[str, object] | None = None,
) -> Aggregator:
    """The MIL aggregator registered as ``model`` taking one bag per call: features [B, D, N] -> logits
    [B, num_outputs].

    The instance is of a subclass of the member's class that only replaces ``forward``, so a fold model's
    ``state_dict`` loads unchanged. Every member but TransMIL scripts (``ckpt_export`` writes TorchScript with a
    free bag length N); TransMIL's Nyström attention (einops) does not, and a trace fixes its square grid to the
    example bag's length, so export it only for that length.
    """
    spec = aggregator_spec(model)
    channel_first = type(
        f"{spec.cls.__name__}Logits",
        (spec.cls,),
        {"forward": _logits_channel_first, "__module__": __name__},
    )
    sizes = {} if dropout is None else {"dropout": dropout}
    built = spec.build(in_dim, num_outputs, hidden, **sizes, **(options or {}))
    built.__class__ = channel_first
    return built


class RegionEncoder(PatHME):
    """Whole regions [B, D, 16 + 256] -> region tokens [B, E, P + 16], as the token stores hold them.

    Input columns: the 16 5x tile features of the region, then its 256 20x tile features, both in raster order
    (expert A, D = its dimension); a non-finite feature marks a tile without tissue. Output columns: the P scale
    prompts, then the 16 5x tokens. Loads a distillation checkpoint's ``teacher`` unchanged. TorchScript:
    trace only (``ckpt_export --use_trace True``): the ViT blocks keep Python control flow over scales and
    optional masks that ``torch.jit.script`` cannot compile.
    """

    def forward(self, regions: Tensor) -> Tensor:
        """Regions [B, D, 16 + 256] (non-finite = no tissue) -> region tokens [B, E, P + 16]."""
        tiles = regions.transpose(1, 2)
        valid = torch.isfinite(tiles).all(dim=-1)
        tiles = torch.where(valid[..., None], tiles, 0.0)
        l1, l0 = tiles[:, : L1_SIDE**2], tiles[:, L1_SIDE**2 :]
        return self.region_tokens(l0, valid[:, L1_SIDE**2 :], l1, valid[:, : L1_SIDE**2]).transpose(1, 2)
