"""One id, one meaning across the three bundles, checked mechanically on every config file.

The rules: the folder of stores a config reads is ``dataset_dir``; a batch size is a top-level id that says its unit
(``tiles_per_batch``, ``regions_per_batch``, ``bags_per_batch``); each config defines ``device`` once, at the top
level; the component a config runs takes every setting from a top-level id (so a hyper-parameter is set as
``--lr`` or ``--base_lr``, never as ``--train#workflow#base_lr``); and there is one MIL prediction config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

#: the configs ``monai bundle run`` starts from; the others (``*_tiny.json``, ``multi_gpu_*.json``) are added to one
BASE_CONFIGS = {
    "pathme_feature_extraction": ("inference.json",),
    "pathme_distillation": ("train.json", "inference.json"),
    "pathme_mil": ("train.json", "inference.json"),
}
#: the unit of each bundle's batches
BATCH_IDS = {"pathme_feature_extraction": "tiles_per_batch", "pathme_distillation": "regions_per_batch"}
BATCH_IDS["pathme_mil"] = "bags_per_batch"
#: the parameter of a component (its Python name) that takes the folder of stores it reads
STORE_PARAMETERS = {"dataset_dir", "features_dir"}
#: the folders a config may name, and what each one means in every bundle
FOLDER_IDS = {
    "dataset_dir": "the stores the config reads",
    "output_dir": "where the config writes",
    "models_dir": "a MIL training run's output (its fold models)",
    "stage_dir": "node-local folder slides are copied to before they are read",
}


def _config(bundle: str, name: str) -> dict[str, Any]:
    return json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())


def _all_configs() -> list[tuple[str, str]]:
    return sorted(
        (path.parents[1].name, path.name)
        for path in (REPO / "bundles").glob("*/configs/*.json")
        if not path.name.startswith("metadata")
    )


def _base_configs() -> list[tuple[str, str]]:
    return [(bundle, name) for bundle, names in BASE_CONFIGS.items() for name in names]


def _items(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (id, value) of a config, nested ids as ``a#b`` (list items as ``a#0``), the containers included."""
    pairs = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in pairs:
        config_id = f"{prefix}{key}"
        yield config_id, item
        yield from _items(item, config_id + "#")


def _run_components(config: dict[str, Any]) -> list[str]:
    """The ids of the components a config's ``run`` calls (``$@train#workflow.run()`` -> ``train#workflow``)."""
    return [found for step in config.get("run", []) for found in re.findall(r"@([\w#]+)\.run\(\)", step)]


def test_the_configs_checked_are_all_the_base_configs():
    """A new base config must join BASE_CONFIGS (and so every rule below); the others are overlays."""
    overlays = {(b, n) for b, n in _all_configs() if n.endswith("_tiny.json") or n.startswith("multi_gpu_")}
    assert sorted(set(_all_configs()) - overlays) == sorted(_base_configs())


@pytest.mark.parametrize("bundle, name", _base_configs())
def test_the_folder_of_stores_is_dataset_dir_and_every_folder_id_means_one_thing(bundle, name):
    config = _config(bundle, name)
    folders = {config_id for config_id in config if config_id.endswith("_dir")}
    assert folders <= set(FOLDER_IDS), f"{bundle}/{name}: folder ids {sorted(folders - set(FOLDER_IDS))}"
    store_arguments = {
        config_id: value for config_id, value in _items(config) if config_id.split("#")[-1] in STORE_PARAMETERS
    }
    store_arguments.pop("dataset_dir", None)
    assert all(value == "@dataset_dir" for value in store_arguments.values()), (bundle, name, store_arguments)
    assert ("dataset_dir" in config) == bool(store_arguments), f"{bundle}/{name}: dataset_dir iff it reads stores"


def test_every_bundle_after_extraction_reads_its_stores_from_dataset_dir():
    readers = [(b, n) for b, n in _base_configs() if "dataset_dir" in _config(b, n)]
    assert readers == [(b, n) for b, n in _base_configs() if b != "pathme_feature_extraction"]


@pytest.mark.parametrize("bundle, name", _all_configs())
def test_every_batch_size_is_a_top_level_id_named_with_its_unit(bundle, name):
    """Literal batch sizes only in ``<unit>_per_batch``, the bundle's unit; components take it by reference."""
    config = _config(bundle, name)
    for config_id, value in _items(config):
        key = config_id.split("#")[-1]
        if "batch" not in key:
            continue
        if "#" in config_id or key == "batch_size":
            assert value == f"@{BATCH_IDS[bundle]}", f"{bundle}/{name}: {config_id} = {value!r}"
        else:
            assert key == BATCH_IDS[bundle] and isinstance(value, int), f"{bundle}/{name}: {config_id} = {value!r}"


@pytest.mark.parametrize("bundle, name", _all_configs())
def test_each_config_defines_device_once_at_the_top_level(bundle, name):
    """Nested ``device`` arguments are ``@device``; no other id builds a torch device; overlays replace ``device``."""
    config = _config(bundle, name)
    for config_id, value in _items(config):
        if config_id.split("#")[-1] == "device" and "#" in config_id:
            assert value == "@device", f"{bundle}/{name}: {config_id} = {value!r}"
        elif config_id != "device" and isinstance(value, str) and "torch.device(" in value:
            assert config_id.split("#")[0] in ("initialize", "run", "finalize"), f"{bundle}/{name}: {config_id}"
    assert name not in BASE_CONFIGS[bundle] or "device" in config, f"{bundle}/{name} has no device"


@pytest.mark.parametrize("bundle, name", _base_configs())
def test_the_component_a_config_runs_takes_every_setting_from_a_top_level_id(bundle, name):
    """Like the MIL bundle's: every argument of the run's component is a reference (``@id``), so hyper-parameters
    (distillation's ``base_lr``, ``teacher_temp``, ...) are top-level ids a user overrides by name."""
    config = _config(bundle, name)
    components = _run_components(config)
    assert components, f"{bundle}/{name}: run calls no component"
    for component in components:
        arguments = dict(_items(config)).get(component)
        assert isinstance(arguments, dict) and "_target_" in arguments, (bundle, name, component)
        literal = {
            key: value
            for key, value in _items(arguments)
            if key != "_target_" and not isinstance(value, dict | list) and not str(value).startswith("@")
        }
        assert not literal, f"{bundle}/{name}: {component} has literal settings {literal}; make them top-level ids"


@pytest.mark.parametrize("bundle, name", [c for c in _all_configs() if c not in _base_configs()])
def test_overlays_set_top_level_ids_only(bundle, name):
    """``train_tiny.json`` and the multi-GPU files change top-level ids (and whole parameter records such as
    ``views``), never a component's argument by its nested path."""
    assert not [config_id for config_id in _config(bundle, name) if "#" in config_id]


def test_mil_has_one_prediction_config_for_evaluation_and_inference():
    """evaluate.json differed from inference.json by the labels alone: inference.json with labels evaluates."""
    configs = {name for bundle, name in _all_configs() if bundle == "pathme_mil"}
    assert configs == {"train.json", "inference.json"}
    assert _config("pathme_mil", "inference.json")["labels"] is None


def test_the_cli_flags_follow_the_ids():
    """``pathme extract --tiles-per-batch``, ``distill --regions-per-batch --base-lr``, ``mil --dataset-dir
    --bags-per-batch``: the old names are gone."""
    from pathme.cli import build_parser

    parser = build_parser()
    commands = {name: sub for action in parser._subparsers._group_actions for name, sub in action.choices.items()}
    options = {name: {o for a in sub._actions for o in a.option_strings} for name, sub in commands.items()}
    expected = {
        "extract": {"--tiles-per-batch"},
        "distill": {"--dataset-dir", "--regions-per-batch", "--base-lr", "--teacher-temp", "--checkpoint-every"},
        "embed": {"--dataset-dir", "--regions-per-batch"},
        "mil": {"--dataset-dir", "--bags-per-batch", "--models-dir"},
    }
    for command, flags in expected.items():
        assert flags <= options[command], (command, flags - options[command])
        assert not {"--batch-size", "--features-dir"} & options[command], command


def test_the_docs_name_no_retired_id():
    """The bundles' READMEs, the README and docs/ use the ids the configs have (the benchmark scripts, which are
    no bundles, keep their own ``--batch-size``)."""
    retired = re.compile(r"features_dir|features-dir|--batch[_-]size\b|`batch_size`|train#workflow#|evaluate\.json")
    texts = [*(REPO / "bundles").glob("*/docs/README.md"), *(REPO / "bundles").glob("*/models/README.md")]
    texts += [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    found = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in texts
        for line in path.read_text().splitlines()
        if retired.search(line) and "scripts/" not in line
    ]
    assert not found, "\n".join(found)


def test_folder_ids_mean_one_thing():
    """Documented meanings for the folder ids, so a new ``*_dir`` id is a decision, not an accident."""
    used = {config_id for bundle, name in _all_configs() for config_id in _config(bundle, name)}
    assert set(FOLDER_IDS) == {config_id for config_id in used if config_id.endswith("_dir")}


def test_the_configs_are_the_files_the_package_finds():
    from pathme.bundles import BUNDLES_DIR, bundle_names

    assert BUNDLES_DIR == REPO / "bundles" and bundle_names() == sorted(BASE_CONFIGS)
    assert Path(BUNDLES_DIR / "pathme_mil" / "configs" / "inference.json").is_file()
