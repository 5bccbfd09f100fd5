"""The MIL aggregators by name, as timm names its models: ``pathme mil --model NAME`` and fold models say a name.

Each entry holds the class, the options that make the member (``abmil-plain`` is ABMIL without the gate), its paper,
the tasks it can learn and its training defaults with where they come from (docs/mil_models.md tabulates them).
Learning rate, weight decay and dropout follow the authors' public code; epochs and early stopping are pathme's for
every member (30 epochs at most, 10 at least, patience 8), sized for cohorts of tens to hundreds of patients where
the papers' 50-200 epochs on hundreds of slides overfit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pathme.networks.mil.abmil import ABMIL
from pathme.networks.mil.base import Aggregator
from pathme.networks.mil.clam import CLAMSB
from pathme.networks.mil.dsmil import DSMIL
from pathme.networks.mil.pooling import MaxPoolMIL, MeanPoolMIL
from pathme.networks.mil.transmil import TransMIL

CLASSIFICATION, SURVIVAL = "classification", "survival"


@dataclass(frozen=True)
class AggregatorSpec:
    """One registered aggregator: how to build it and what to train it with.

    lr, weight_decay: AdamW's; dropout: the member's ``dropout`` argument; defaults_source: where these come from.
    """

    name: str
    cls: type[Aggregator]
    paper: str
    lr: float
    weight_decay: float
    dropout: float
    defaults_source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = (CLASSIFICATION, SURVIVAL)
    note: str = ""  # what differs on some task (CLAM-SB's survival), shown by `pathme aggregators`

    def build(self, in_dim: int, num_outputs: int, hidden: int | None = None, **options: Any) -> Aggregator:
        """A fresh member (random initial weights from torch's current seed); ``hidden`` None: the member's width."""
        sizes = {} if hidden is None else {"hidden": hidden}
        merged = {"dropout": self.dropout, **self.options, **options}
        return self.cls(in_dim, num_outputs, **sizes, **merged)

    @property
    def instance_scores(self) -> str:
        """What the member's per-instance scores mean, or why it has none."""
        return self.cls.instance_scores or self.cls.no_instance_scores


_ABMIL_DEFAULTS = (
    "lr: CLAM's README (attention MIL on WSIs); weight decay: Ilse et al.'s code (--reg 10e-5); dropout: CLAM"
)
_POOL_DEFAULTS = "pathme: ABMIL's, so the baselines differ from it only in the pooling"
_REGISTRY: dict[str, AggregatorSpec] = {}


def register_aggregator(spec: AggregatorSpec) -> AggregatorSpec:
    """Add ``spec`` under its name; ValueError if the name is taken."""
    if spec.name in _REGISTRY:
        raise ValueError(f"an aggregator named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


for _spec in (
    AggregatorSpec("abmil", ABMIL, "Ilse et al., ICML 2018 (gated)", 2e-4, 1e-4, 0.25, _ABMIL_DEFAULTS),
    AggregatorSpec("abmil-plain", ABMIL, "Ilse et al., ICML 2018", 2e-4, 1e-4, 0.25, _ABMIL_DEFAULTS, {"gated": False}),
    AggregatorSpec(
        "clam-sb",
        CLAMSB,
        "Lu et al., Nat. Biomed. Eng. 2021",
        2e-4,
        1e-5,
        0.25,
        "CLAM (mahmoodlab/CLAM): README commands' --lr 2e-4, main.py --reg 1e-5, --drop_out 0.25, --B 8, "
        "--bag_weight 0.7",
        note="survival: without the instance loss, which needs a class",
    ),
    AggregatorSpec(
        "transmil",
        TransMIL,
        "Shao et al., NeurIPS 2021",
        2e-4,
        1e-5,
        0.1,
        "TransMIL (szc19990412/TransMIL) Camelyon/TransMIL.yaml: lr 2e-4, weight_decay 1e-5; attention dropout 0.1 "
        "(models/TransMIL.py)",
    ),
    AggregatorSpec(
        "dsmil",
        DSMIL,
        "Li et al., CVPR 2021",
        1e-4,
        1e-3,
        0.0,
        "DSMIL (binli123/dsmil-wsi) train_tcga.py: --lr 1e-4, --weight_decay 1e-3, --dropout_node 0",
    ),
    AggregatorSpec("mean-pool", MeanPoolMIL, "instance MLP + mean pooling", 2e-4, 1e-4, 0.25, _POOL_DEFAULTS),
    AggregatorSpec("max-pool", MaxPoolMIL, "instance MLP + max pooling", 2e-4, 1e-4, 0.25, _POOL_DEFAULTS),
):
    register_aggregator(_spec)

#: the registered aggregators by name (read-only; add members with :func:`register_aggregator`)
AGGREGATORS: Mapping[str, AggregatorSpec] = MappingProxyType(_REGISTRY)


def aggregator_spec(name: str, task: str | None = None) -> AggregatorSpec:
    """The spec registered as ``name``; ValueError naming every member when there is none, or when ``task``
    (``"classification"`` or ``"survival"``) is one the member cannot learn."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown MIL model {name!r}: choose one of {', '.join(_REGISTRY)}")
    spec = _REGISTRY[name]
    if task is not None and task not in spec.tasks:
        can = [other for other, s in _REGISTRY.items() if task in s.tasks]
        raise ValueError(f"MIL model {name!r} cannot learn {task}; those that can: {', '.join(can)}")
    return spec


def describe_aggregators() -> list[dict[str, str]]:
    """One row per registered aggregator for ``pathme aggregators``: name, paper, tasks, instance scores,
    lr / weight decay / dropout and their source."""
    return [
        {
            "name": spec.name,
            "paper": spec.paper,
            "tasks": " + ".join(spec.tasks) + (f" ({spec.note})" if spec.note else ""),
            "instance scores": "yes" if spec.cls.instance_scores else "none",
            "lr": f"{spec.lr:g}",
            "weight decay": f"{spec.weight_decay:g}",
            "dropout": f"{spec.dropout:g}",
        }
        for spec in _REGISTRY.values()
    ]
