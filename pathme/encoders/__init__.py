"""Expert registry: frozen patch encoders by name, with their input transform, dimension and weight source;
built-in, any timm model as ``timm:<name>``, or registered by other packages (``pathme.encoders.plugins``)."""

from pathme.encoders.expert import Expert, build_expert
from pathme.encoders.plugins import ExpertClashError
from pathme.encoders.protocol import ExpertDefinition, LoadedModel
from pathme.encoders.registry import get_spec, list_experts
from pathme.encoders.spec import ExpertSpec
from pathme.encoders.tile_encoder import TileEncoder
from pathme.encoders.weights import WeightsError

__all__ = [
    "Expert",
    "ExpertClashError",
    "ExpertDefinition",
    "ExpertSpec",
    "LoadedModel",
    "TileEncoder",
    "WeightsError",
    "build_expert",
    "get_spec",
    "list_experts",
]
