"""MIL aggregators over bags of region tokens or tile features, by name (:mod:`pathme.networks.mil.aggregators`)."""

from pathme.networks.mil.abmil import ABMIL
from pathme.networks.mil.aggregators import (
    AGGREGATORS,
    CLASSIFICATION,
    SURVIVAL,
    AggregatorSpec,
    aggregator_spec,
    register_aggregator,
)
from pathme.networks.mil.base import Aggregator
from pathme.networks.mil.clam import CLAMSB
from pathme.networks.mil.dsmil import DSMIL
from pathme.networks.mil.pooling import MaxPoolMIL, MeanPoolMIL
from pathme.networks.mil.transmil import TransMIL

__all__ = [
    "ABMIL",
    "AGGREGATORS",
    "CLAMSB",
    "CLASSIFICATION",
    "DSMIL",
    "SURVIVAL",
    "Aggregator",
    "AggregatorSpec",
    "MaxPoolMIL",
    "MeanPoolMIL",
    "TransMIL",
    "aggregator_spec",
    "register_aggregator",
]
