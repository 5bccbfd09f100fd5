"""A bundle workflow's keyword arguments exactly as ``monai bundle run`` resolves them from its config files, so
tests run what the bundles run instead of repeating their values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def workflow_kwargs(bundle: str, configs: list[str], section: str, **ids: Any) -> dict[str, Any]:
    """``section``'s arguments resolved from ``configs`` of ``bundle`` merged in order, with the bundle ``ids``
    overridden first; the ``_target_`` is left out."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / name) for name in configs])
    parser.update(ids)
    raw = parser[section]
    return {key: parser.get_parsed_content(f"{section}#{key}") for key in raw if key != "_target_"}


def tiny_distillation(**ids: Any) -> dict[str, Any]:
    """``DistillationRun``'s arguments of the CPU-sized run (train.json with train_tiny.json), ids overridden."""
    return workflow_kwargs("pathme_distillation", ["train.json", "train_tiny.json"], "train#workflow", **ids)
