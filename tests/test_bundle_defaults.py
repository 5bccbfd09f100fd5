"""Defaults defined once: every component a bundle config builds takes each of its defaults from the config with
the value the class itself has, so running the class (tests, scripts, the Deploy app) and running the bundle
(``monai bundle run``) are the same run. Machine-dependent choices (device, reader processes, cache size) are
``null`` in the configs: the class makes them."""

from __future__ import annotations

import dataclasses
import inspect
from pydoc import locate
from typing import Any

import pytest
from bundle_config import workflow_kwargs
from monai.bundle import ConfigParser

from pathme.bundles import bundle_dir

#: (bundle, config, section): the components the bundles' base configs build
COMPONENTS = [
    ("pathme_feature_extraction", "inference.json", "extractor"),
    ("pathme_feature_extraction", "inference.json", "tissue"),
    ("pathme_distillation", "train.json", "train#workflow"),
    ("pathme_distillation", "train.json", "views"),
    ("pathme_distillation", "train.json", "loss_weights"),
    ("pathme_distillation", "inference.json", "embedder"),
    ("pathme_mil", "train.json", "workflow"),
    ("pathme_mil", "train.json", "settings"),
    ("pathme_mil", "inference.json", "predictor"),
]


def _plain(value: Any) -> Any:
    """Compare values as JSON would hold them: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def class_defaults(cls: type) -> dict[str, Any]:
    """Each constructor parameter's default (a dataclass field's factory called), for those that have one."""
    factories = {f.name: f.default_factory for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    defaults = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        if factories.get(name, dataclasses.MISSING) is not dataclasses.MISSING:
            defaults[name] = factories[name]()
        elif parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
    return defaults


def disagreements(bundle: str, config: str, section: str, cls: type | None = None) -> dict[str, Any]:
    """``{parameter: (config value, class default)}`` for every default of ``section``'s class (or ``cls``) that
    the config leaves out (config value ``"<not set>"``) or sets to another value."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / config))
    cls = cls or locate(parser[section]["_target_"])
    configured = workflow_kwargs(bundle, [config], section)
    return {
        name: (configured.get(name, "<not set>"), value)
        for name, value in class_defaults(cls).items()
        if name not in configured or _plain(configured[name]) != _plain(value)
    }


@pytest.mark.parametrize(("bundle", "config", "section"), COMPONENTS)
def test_a_config_sets_every_default_of_its_component_to_the_class_value(bundle, config, section):
    assert disagreements(bundle, config, section) == {}


def test_the_check_finds_a_default_that_differs():
    from pathme.engines.distill_workflow import DistillationRun

    @dataclasses.dataclass
    class Changed(DistillationRun):
        log_every: int = 10
        probe_every: int = 7

    found = disagreements("pathme_distillation", "train.json", "train#workflow", Changed)
    assert found == {"log_every": (50, 10), "probe_every": ("<not set>", 7)}


def test_the_bundles_default_folders_are_one_layout():
    """manifest.csv -> stores/ -> models/distillation/ -> tokens/ -> models/mil/ -> predictions/, under one
    bundle_root: each stage reads by default where the one before it writes."""

    def folder(bundle: str, config: str, config_id: str) -> str:
        parser = ConfigParser()
        parser.read_config(str(bundle_dir(bundle) / "configs" / config))
        return str(parser.get_parsed_content(config_id))

    stores = folder("pathme_feature_extraction", "inference.json", "output_dir")
    assert stores == "./stores"
    assert folder("pathme_distillation", "train.json", "dataset_dir") == stores
    assert folder("pathme_distillation", "inference.json", "dataset_dir") == stores
    teacher = folder("pathme_distillation", "train.json", "output_dir")
    assert folder("pathme_distillation", "inference.json", "checkpoint") == f"{teacher}/checkpoints"
    tokens = folder("pathme_distillation", "inference.json", "output_dir")
    assert folder("pathme_mil", "train.json", "dataset_dir") == folder("pathme_mil", "inference.json", "dataset_dir")
    assert folder("pathme_mil", "train.json", "dataset_dir") == tokens
    assert folder("pathme_mil", "inference.json", "models_dir") == folder("pathme_mil", "train.json", "output_dir")
