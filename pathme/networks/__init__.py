"""PatHME network (token projector, shared ViT with scale prompts, HMSA, DINO head) and the MIL aggregators."""

from pathme.networks.channel_first import RegionEncoder, mil_logits
from pathme.networks.config import PatHMEConfig, preset_config
from pathme.networks.heads import DINOHead
from pathme.networks.mil import ABMIL, AGGREGATORS, aggregator_spec
from pathme.networks.pathme_net import PatHME

__all__ = [
    "ABMIL",
    "AGGREGATORS",
    "DINOHead",
    "PatHME",
    "PatHMEConfig",
    "RegionEncoder",
    "aggregator_spec",
    "mil_logits",
    "preset_config",
]
