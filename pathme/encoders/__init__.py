"""Expert registry: frozen patch encoders by name, with their input transform, dimension and weight source."""

from pathme.encoders.expert import Expert, build_expert
from pathme.encoders.registry import ExpertSpec, get_spec, list_experts
from pathme.encoders.tile_encoder import TileEncoder
from pathme.encoders.weights import WeightsError

__all__ = ["Expert", "ExpertSpec", "TileEncoder", "WeightsError", "build_expert", "get_spec", "list_experts"]
