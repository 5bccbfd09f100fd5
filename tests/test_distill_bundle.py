"""The distillation bundle from the command line: tiny training, strict teacher loading, region tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO

from pathme.cli import main
from pathme.data.synthetic_stores import write_store
from pathme.engines.embed import EmbedRun
from pathme.store import validate_store

CONFIGS = REPO / "bundles" / "pathme_distillation" / "configs"
DIMS = {"tiny-vit": 64, "tiny-cnn": 64}


def _bundle(configs: list[str], **overrides: object) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{CONFIGS / name}'" for name in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    command += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    for name, value in overrides.items():
        command += [f"--{name}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Region stores (random tiny-expert features) and a 4-step tiny training run of the bundle on them."""
    stores = tmp_path_factory.mktemp("stores")
    for index in range(4):
        write_store(stores, f"s{index}", f"p{index}", ["full", "sparse", "full", "sparse", "full"], DIMS)
    output = tmp_path_factory.mktemp("distill")
    _bundle(["train.json", "train_tiny.json"], dataset_dir=stores, output_dir=output, max_iterations=4, batch_size=4)
    return stores, output


def test_the_tiny_bundle_trains_and_checkpoints(trained):
    _, output = trained
    checkpoints = sorted((output / "checkpoints").glob("distill_checkpoint_*.pt"))
    assert checkpoints and checkpoints[-1].name == "distill_checkpoint_4.pt"
    assert any((output / "tensorboard").iterdir())


def test_inference_writes_tokens_whose_coordinates_match_the_regions(trained, tmp_path):
    stores, output = trained
    checkpoints = output / "checkpoints"
    _bundle(["inference.json", "inference_tiny.json"], dataset_dir=stores, output_dir=tmp_path, checkpoint=checkpoints)
    for source in sorted(stores.glob("*.h5")):
        target = tmp_path / source.name
        validate_store(target, experts=["tiny-vit"])
        with h5py.File(target, "r") as file, h5py.File(source, "r") as original:
            tokens, coords = file["tokens"][:], file["token_coords"][:]
            origins, extent = original["coords"][:], float(original.attrs["region_extent"])
            valid_l1 = original["valid/L1"][:]
        assert tokens.shape == (len(origins), 26, 64) and np.isfinite(tokens).all()
        np.testing.assert_array_equal(coords[:, :10], np.repeat(origins[:, None], 10, axis=1))
        rows, cols = np.divmod(np.arange(16), 4)
        expected = np.rint(origins[:, None, :] + np.stack([cols, rows], axis=1)[None] * extent / 4)
        np.testing.assert_array_equal(coords[:, 10:], expected)
        assert not tokens[:, 10:][~valid_l1].any()  # missing 5x tiles give zero tokens, flagged by valid/L1


def test_the_pathme_command_wraps_the_inference_bundle(trained, tmp_path):
    stores, output = trained
    command = ["embed", "--tiny", "--dataset-dir", str(stores), "--output-dir", str(tmp_path)]
    assert main([*command, "--checkpoint", str(output / "checkpoints")]) == 0
    assert len(list(tmp_path.glob("s*.h5"))) == 4


def test_a_mismatched_checkpoint_fails_loudly(trained, tmp_path):
    stores, output = trained
    wrong = EmbedRun(stores, tmp_path, output / "checkpoints", network={"embed_dim": 32, "hmsa_heads": 2})
    with pytest.raises(ValueError, match="does not fit the configured network"):
        wrong.run()
    not_a_checkpoint = tmp_path / "weights.pt"
    torch.save({"model": {}}, not_a_checkpoint)
    with pytest.raises(ValueError, match="holds no 'teacher'"):
        EmbedRun(stores, tmp_path, not_a_checkpoint).run()
    assert not list(tmp_path.glob("s*.h5"))  # nothing written from a network that could not be loaded


def test_two_torchrun_processes_train_to_the_loss_of_one_with_the_same_global_batch(trained, tmp_path):
    """Tolerance 1 %: DDP averages the two ranks' gradients of per-rank means, and KoLeo and the pooled KD/HMSA
    means are taken per device, so two ranks of 2 regions differ slightly from one process of 4."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stores, _ = trained
    settings = {"dataset_dir": stores, "max_iterations": 3, "train#workflow#checkpoint_every": 3}
    _bundle(["train.json", "train_tiny.json"], output_dir=tmp_path / "one", batch_size=4, **settings)
    files = "[" + ",".join(f"'{CONFIGS / n}'" for n in ("train.json", "train_tiny.json", "multi_gpu_train.json")) + "]"
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--output_dir", str(tmp_path / "two"), "--batch_size", "2"]
    command += [item for name, value in settings.items() for item in (f"--{name}", str(value))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def validation(run: str) -> float:
        events = EventAccumulator(str(tmp_path / run / "tensorboard"))
        events.Reload()
        return {e.step: e.value for e in events.Scalars("validation/total")}[3]

    assert validation("two") == pytest.approx(validation("one"), rel=0.01)
