"""The bundles' offline checks: metadata against its schema, each ``network_def`` against the metadata's input and
output shapes, and TorchScript export of the MIL and PatHME networks from the checkpoints training writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import REPO

from pathme.engines.distill_workflow import TrainedOn, save_teacher
from pathme.engines.embed import load_teacher
from pathme.engines.mil import MILModelConfig, MILTask, load_fold_model, save_fold_model
from pathme.networks import RegionEncoder, preset_config
from pathme.wsi.grid import L0_SIDE, L1_SIDE

pytestmark = pytest.mark.slow  # minutes of CPU: ckpt_export and verify_net_in_out in subprocesses

BUNDLES = sorted(path for path in (REPO / "bundles").iterdir() if (path / "configs" / "metadata.json").is_file())
MIL = REPO / "bundles" / "pathme_mil"
DISTILL = REPO / "bundles" / "pathme_distillation"
EXTRACT = REPO / "bundles" / "pathme_feature_extraction"
#: the metadata overrides for the tiny distillation configs (expert A tiny-vit: 64-d in; tiny preset: 64-d out)
TINY_META = {
    "_meta_#network_data_format#inputs#image#num_channels": 64,
    "_meta_#network_data_format#outputs#pred#num_channels": 64,
}


def _configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / name) for name in names]


def _cli_overrides(overrides: dict[str, object]) -> list[str]:
    return [item for key, value in overrides.items() for item in (f"--{key}", str(value))]


def test_every_bundle_is_listed():
    assert [bundle.name for bundle in BUNDLES] == ["pathme_distillation", "pathme_feature_extraction", "pathme_mil"]


# verify_net_in_out ------------------------------------------------------------------------------------------------

#: every bundle's network_def with the configs and metadata a user runs it with (the paper sizes where they are the
#: default, the tiny configs with their metadata overrides); "any" is the bag length for MIL's "*" spatial shape
NET_CASES = {
    "pathme_mil/train.json": {"config_file": _configs(MIL, "train.json"), "any": 37},
    "pathme_distillation/train.json (paper)": {"config_file": _configs(DISTILL, "train.json")},
    "pathme_distillation/train.json+train_tiny.json": {
        "config_file": _configs(DISTILL, "train.json", "train_tiny.json"),
        **TINY_META,
    },
    "pathme_feature_extraction/inference.json": {"config_file": _configs(EXTRACT, "inference.json")},
}

#: one interpreter (importing monai takes most of a check's time) runs every check; each check's outcome is recorded
#: on its own, so one failing check cannot hide or stop another
_CHECK_ALL = """
import json, sys
from monai.bundle import verify_metadata, verify_net_in_out
results = {}
for name, (function, kwargs) in json.loads(sys.argv[1]).items():
    try:
        {"verify_metadata": verify_metadata, "verify_net_in_out": verify_net_in_out}[function](**kwargs)
        results[name] = "ok"
    except Exception as error:
        results[name] = f"{type(error).__name__}: {error}"
print("CHECK_RESULTS " + json.dumps(results))
"""


def _meta_file(case: dict) -> str:
    return str(Path(case["config_file"][0]).parent / "metadata.json")


@pytest.fixture(scope="module")
def verified(tmp_path_factory) -> dict:
    """Per check "ok" or its error: ``verify_metadata`` of every bundle's metadata and of a broken copy, and
    ``verify_net_in_out`` of every case; plus the CLI run of the MIL check against metadata that declares 3 output
    channels."""
    checks = {}
    for bundle in BUNDLES:
        schema, metadata = bundle / "configs" / "metadata_schema.json", bundle / "configs" / "metadata.json"
        bad = tmp_path_factory.mktemp(bundle.name) / "metadata.json"
        bad.write_text(re.sub(r'"version": "[^"]*"', '"version": "one"', metadata.read_text(), count=1))
        for name, meta in (("metadata", metadata), ("broken metadata", bad)):
            checks[f"{bundle.name} {name}"] = ("verify_metadata", {"meta_file": str(meta), "filepath": str(schema)})
    for name, case in NET_CASES.items():
        checks[name] = ("verify_net_in_out", {"net_id": "network_def", **case, "meta_file": _meta_file(case)})
    script = subprocess.run([sys.executable, "-c", _CHECK_ALL, json.dumps(checks)], capture_output=True, text=True)
    lines = [line for line in script.stdout.splitlines() if line.startswith("CHECK_RESULTS ")]
    assert script.returncode == 0 and lines, script.stdout[-3000:] + script.stderr[-3000:]
    wrong = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--any", "37"]
    wrong += ["--config_file", _configs(MIL, "train.json")[0], "--meta_file", str(MIL / "configs" / "metadata.json")]
    wrong += _cli_overrides({"_meta_#network_data_format#outputs#pred#num_channels": 3})
    cli = subprocess.run(wrong, capture_output=True, text=True)
    checked = json.loads(lines[-1].removeprefix("CHECK_RESULTS "))
    return {"checks": checked, "wrong": (cli.returncode, cli.stdout + cli.stderr)}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_metadata_verifies_offline_against_the_shipped_schema_and_a_broken_copy_fails(verified, bundle):
    assert (bundle / "LICENSE").is_file() and (bundle / "docs" / "README.md").is_file()
    assert verified["checks"][f"{bundle.name} metadata"] == "ok"
    broken = verified["checks"][f"{bundle.name} broken metadata"]
    assert broken.startswith("ValueError: 'one' does not match"), broken


@pytest.mark.parametrize("case", NET_CASES)
def test_network_def_matches_the_metadata_shapes(verified, case):
    """``verify_net_in_out network_def`` passes: the network takes the metadata's input [1, C, *spatial] and gives
    its output channels, so MONAI tools (and ``ckpt_export``'s trace input) see the right layout."""
    assert verified["checks"][case] == "ok"


def test_network_def_check_fails_when_the_metadata_declares_other_output_channels(verified):
    """A metadata that does not describe the network (pred num_channels 3 for a 2-class MIL) fails the CLI check."""
    returncode, output = verified["wrong"]
    assert returncode != 0 and "output channel number `2` doesn't match: `3`" in output, output[-3000:]


# ckpt_export ------------------------------------------------------------------------------------------------------


def _ckpt_export(bundle: Path, configs: list[str], filepath: Path, ckpt: Path, key: str, *extra: str) -> None:
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(filepath)]
    command += ["--ckpt_file", str(ckpt), "--key_in_ckpt", key, "--bundle_root", str(bundle)]
    config_file = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{name}'" for name in configs) + "]"
    command += ["--config_file", config_file, "--meta_file", str(bundle / "configs" / "metadata.json"), *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and filepath.is_file(), result.stdout[-3000:] + result.stderr[-3000:]


def _load_ts(path: Path, *names: str) -> tuple[torch.jit.ScriptModule, dict]:
    """The TorchScript module and the JSON files MONAI stored in it (``metadata.json`` and each config file)."""
    extra = dict.fromkeys(names, "")
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    assert all(extra.values()), f"missing extra files in {path}: {[name for name, v in extra.items() if not v]}"
    return module.eval(), {name: json.loads(value) for name, value in extra.items()}


@pytest.mark.parametrize("model", ["abmil", "dsmil"])
def test_a_fold_model_exports_to_torchscript_with_the_fold_model_logits(tmp_path, model):
    """``ckpt_export`` (scripted) of a ``fold_<k>/model.pt`` gives TorchScript whose logits on a bag [1, D, N] of
    any length equal the fold model's, with the bundle metadata and train.json stored inside; for the default
    aggregator and for another one named by ``--model``."""
    train = json.loads((MIL / "configs" / "train.json").read_text())
    config = MILModelConfig(64, 2, model, train["hidden"], train["dropout"], train["model_options"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        built = config.build()
    fold = save_fold_model(tmp_path / "fold_0" / "model.pt", built, config, MILTask("label", ("a", "b")), "pathme")
    exported = tmp_path / "model.ts"
    _ckpt_export(MIL, _configs(MIL, "train.json"), exported, fold, "state_dict", "--model", model)

    scripted, extra = _load_ts(exported, "metadata.json", "train.json")
    metadata = json.loads((MIL / "configs" / "metadata.json").read_text())
    assert extra["metadata.json"]["version"] == metadata["version"]
    assert extra["metadata.json"]["network_data_format"] == metadata["network_data_format"]
    assert extra["train.json"] == train
    eager, _, _ = load_fold_model(fold)
    generator = torch.Generator().manual_seed(1)
    for length in (5, 300):
        bag = torch.randn(1, length, 64, generator=generator)
        with torch.no_grad():
            expected = eager(bag)["logits"]
            got = scripted(bag.transpose(1, 2))
        assert got.shape == (1, 2)
        torch.testing.assert_close(got, expected)


def _regions_with_missing_tiles(batch: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Regions [B, dim, 16 + 256] (5x tiles, then 20x tiles), NaN where a tile has no tissue: region 0 complete,
    region 1 with scattered missing 20x tiles and one missing 5x tile, region 2 with a whole 5x tile and its 16
    20x children missing, and more."""
    regions = 3.0 * torch.randn(batch, dim, L1_SIDE**2 + L0_SIDE**2, generator=generator) + 1.0
    l1_columns = L1_SIDE**2
    regions[1, :, l1_columns + torch.tensor([0, 7, 100, 101, 255])] = float("nan")
    regions[1, :, 9] = float("nan")
    children = [l1_columns + r * L0_SIDE + c for r in range(4, 8) for c in range(8, 12)]  # of 5x tile (1, 2)
    regions[2, :, [1 * L1_SIDE + 2, *children]] = float("nan")
    regions[2, :, l1_columns + torch.arange(200, 256)] = float("nan")
    return regions


def test_the_pathme_encoder_exports_by_trace_and_gives_the_tokens_embed_writes(tmp_path):
    """``ckpt_export --use_trace True`` of the ``teacher.pt`` a distillation run writes (tiny configs) gives
    TorchScript whose tokens [B, E, P + 16] equal those of the teacher ``pathme embed`` loads from that file, for a
    batch size other than the trace's and tiles without tissue (NaN) anywhere."""
    config = preset_config("tiny", 64)
    generator = torch.Generator().manual_seed(2)
    teacher = RegionEncoder(config)
    teacher.set_input_statistics(torch.randn(64, generator=generator), torch.rand(64, generator=generator) + 0.5)
    with torch.no_grad():  # away from initialisation: the prompts, CLS and mask tokens start (near) zero
        for parameter in teacher.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    teacher_file = save_teacher(
        teacher, tmp_path / "teacher.pt", 10, TrainedOn("tiny-vit", "tiny-cnn", "tiny", asdict(config))
    )
    exported = tmp_path / "pathme_encoder.ts"
    configs = _configs(DISTILL, "train.json", "train_tiny.json")
    _ckpt_export(DISTILL, configs, exported, teacher_file, "teacher", "--use_trace", "True", *_cli_overrides(TINY_META))

    traced, extra = _load_ts(exported, "metadata.json", "train.json", "train_tiny.json")
    data_format = extra["metadata.json"]["network_data_format"]
    assert data_format["inputs"]["image"]["num_channels"] == 64 and data_format["outputs"]["pred"]["num_channels"] == 64
    assert extra["train_tiny.json"] == json.loads((DISTILL / "configs" / "train_tiny.json").read_text())

    regions = _regions_with_missing_tiles(3, 64, generator)
    tiles = regions.transpose(1, 2)
    valid = torch.isfinite(tiles).all(dim=-1)
    tiles = torch.where(valid[..., None], tiles, 0.0)  # as the stores hold them: zero rows, flagged invalid
    l1, l0 = tiles[:, : L1_SIDE**2], tiles[:, L1_SIDE**2 :]
    embed_teacher = load_teacher(teacher_file)
    with torch.no_grad():
        expected = embed_teacher.region_tokens(l0, valid[:, L1_SIDE**2 :], l1, valid[:, : L1_SIDE**2])
        got = traced(regions)
    assert got.shape == (3, config.embed_dim, config.num_prompts + L1_SIDE**2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=0, atol=1e-4)
