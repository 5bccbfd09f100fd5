"""PatHME network: token projector, shared ViT with scale prompts, HMSA and the DINO head."""

from pathme.networks.abmil import ABMIL
from pathme.networks.channel_first import MILLogits, RegionEncoder, TileEncoder
from pathme.networks.config import PatHMEConfig, preset_config
from pathme.networks.heads import DINOHead
from pathme.networks.pathme_net import PatHME

__all__ = [
    "ABMIL",
    "DINOHead",
    "MILLogits",
    "PatHME",
    "PatHMEConfig",
    "RegionEncoder",
    "TileEncoder",
    "preset_config",
]
