"""The distillation bundle from the command line: tiny training, strict teacher loading, region tokens."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO

from pathme.cli import main
from pathme.engines.distill_workflow import TrainedOn, load_checkpoint, newest_readable_checkpoint
from pathme.engines.embed import EmbedRun
from pathme.networks import preset_config
from pathme.store import validate_store
from pathme.synthetic.stores import write_store

pytestmark = pytest.mark.slow  # minutes of CPU: the distillation bundle run as monai bundle run


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
    _bundle(
        ["train.json", "train_tiny.json"], dataset_dir=stores, output_dir=output, max_iterations=4, regions_per_batch=4
    )
    return stores, output


def test_the_tiny_bundle_trains_and_checkpoints(trained):
    _, output = trained
    checkpoints = sorted((output / "checkpoints").glob("distill_checkpoint_*.pt"))
    assert checkpoints and checkpoints[-1].name == "distill_checkpoint_4.pt"
    assert any((output / "tensorboard").iterdir())


def test_the_run_writes_its_teacher_alone_in_a_file_plain_torch_load_reads(trained, tmp_path):
    """``teacher.pt`` loads with ``weights_only=True`` (as MONAI's ``ckpt_export`` loads), holds the last
    checkpoint's teacher, and embeds exactly as the checkpoints folder does."""
    stores, output = trained
    teacher = torch.load(output / "teacher.pt", map_location="cpu", weights_only=True)
    last = newest_readable_checkpoint(output / "checkpoints")[1]
    assert teacher["iteration"] == 4 and teacher["teacher"].keys() == last["teacher"].keys()
    assert all(torch.equal(teacher["teacher"][key], last["teacher"][key]) for key in last["teacher"])
    from_file = EmbedRun(stores, tmp_path / "file", output / "teacher.pt").run()
    from_folder = EmbedRun(stores, tmp_path / "folder", output / "checkpoints").run()
    assert (from_file["status"] == "done").all() and (from_folder["status"] == "done").all()
    for store in sorted(stores.glob("*.h5")):
        with h5py.File(tmp_path / "file" / store.name, "r") as a, h5py.File(tmp_path / "folder" / store.name, "r") as b:
            np.testing.assert_array_equal(a["tokens"][:], b["tokens"][:])


def test_inference_writes_tokens_whose_coordinates_match_the_regions(trained, tmp_path):
    stores, output = trained
    checkpoints = output / "checkpoints"
    _bundle(["inference.json"], dataset_dir=stores, output_dir=tmp_path, checkpoint=checkpoints)
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


def test_the_pathme_commands_give_what_the_bundle_commands_give(trained, tmp_path):
    """``pathme distill --tiny`` trains the teacher ``monai bundle run`` trains with the same ids, and ``pathme
    embed`` writes the same tokens as the inference bundle (both take the network from the checkpoint)."""
    stores, output = trained
    pathme = [str(Path(sys.executable).parent / "pathme")]
    train = ["distill", "--tiny", "--dataset-dir", str(stores), "--output-dir", str(tmp_path / "distill")]
    done = subprocess.run([*pathme, *train, "--max-iterations", "4", "--regions-per-batch", "4"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    ours = torch.load(tmp_path / "distill" / "teacher.pt", weights_only=True)["teacher"]
    bundle = torch.load(output / "teacher.pt", weights_only=True)["teacher"]
    assert ours.keys() == bundle.keys()
    for key in bundle:  # the same steps; float sums may round differently between two processes (~1e-9 seen)
        torch.testing.assert_close(ours[key], bundle[key], rtol=0, atol=1e-6)
    embed = ["embed", "--dataset-dir", str(stores), "--output-dir", str(tmp_path / "cli")]
    assert main([*embed, "--checkpoint", str(output / "teacher.pt")]) == 0
    _bundle(["inference.json"], dataset_dir=stores, output_dir=tmp_path / "bundle", checkpoint=output / "teacher.pt")
    for store in sorted(stores.glob("*.h5")):
        with h5py.File(tmp_path / "cli" / store.name, "r") as a, h5py.File(tmp_path / "bundle" / store.name, "r") as b:
            np.testing.assert_array_equal(a["tokens"][:], b["tokens"][:])
            np.testing.assert_array_equal(a["token_coords"][:], b["token_coords"][:])


def test_the_teacher_file_records_what_it_was_trained_on_and_embedding_uses_it(trained):
    _, output = trained
    for path in (output / "teacher.pt", newest_readable_checkpoint(output / "checkpoints")[0]):
        recorded = TrainedOn.of(load_checkpoint(path), path)
        assert (recorded.expert_a, recorded.expert_b, recorded.preset) == ("tiny-vit", "tiny-cnn", "tiny")
        assert recorded.input_dim == 64 and recorded.config() == preset_config("tiny", 64)


def test_embedding_refuses_region_stores_of_other_expert_weights_than_the_teacher_was_trained_on(trained, tmp_path):
    """The teacher records the weights digests of the features it was distilled on; a region store whose expert-A
    features come from other weights is a failed row naming both, the others are embedded and record expert A."""
    stores, output = trained
    assert TrainedOn.of(load_checkpoint(output / "teacher.pt"), "t").expert_digests == {
        "tiny-vit": "random",
        "tiny-cnn": "random",
    }
    folder = tmp_path / "stores"
    folder.mkdir()
    for store in sorted(stores.glob("*.h5"))[:2]:
        (folder / store.name).write_bytes(store.read_bytes())
    write_store(
        folder, "other", "p9", ["full"], DIMS, {"expert_digests": {"tiny-vit": "random:1", "tiny-cnn": "random"}}
    )
    summary = EmbedRun(folder, tmp_path / "tokens", output / "teacher.pt").run().set_index("slide")
    assert summary["status"].to_dict() == {"other": "failed", "s0": "done", "s1": "done"}
    assert "(tiny-vit weights 'random' in training, 'random:1' in " in summary.loc["other", "error"]
    assert "teacher.pt was trained on features of other weights" in summary.loc["other", "error"]
    assert validate_store(tmp_path / "tokens" / "s0.h5")["teacher_expert"] == "tiny-vit"


def test_resuming_needs_the_same_expert_weights_where_the_checkpoint_records_them():
    config = asdict(preset_config("tiny", 64))
    run = TrainedOn("tiny-vit", "tiny-cnn", "tiny", config, {"tiny-vit": "random:0", "tiny-cnn": "random:0"})
    older = {"expert_a": "tiny-vit", "expert_b": "tiny-cnn", "preset": "tiny", "network": config}
    run.load_state_dict(older)  # a checkpoint of an older pathme records no digests: it resumes
    run.load_state_dict(run.state_dict())
    with pytest.raises(ValueError, match="resume with the same experts \\(and weights\\)"):
        run.load_state_dict(older | {"expert_digests": {"tiny-vit": "random:1", "tiny-cnn": "random:0"}})


def test_a_mismatched_checkpoint_fails_loudly(trained, tmp_path):
    stores, output = trained
    state = torch.load(output / "teacher.pt", weights_only=True)
    state["trained_on"]["network"] |= {"embed_dim": 32, "hmsa_heads": 2}  # weights of another network
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="edited.pt: its teacher does not fit the network it records"):
        EmbedRun(stores, tmp_path, tmp_path / "edited.pt").run()
    del state["trained_on"]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old.pt does not record what its teacher was trained on"):
        EmbedRun(stores, tmp_path, tmp_path / "old.pt").run()
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
    settings = {"dataset_dir": stores, "max_iterations": 3, "checkpoint_every": 3}
    _bundle(["train.json", "train_tiny.json"], output_dir=tmp_path / "one", regions_per_batch=4, **settings)
    files = "[" + ",".join(f"'{CONFIGS / n}'" for n in ("train.json", "train_tiny.json", "multi_gpu_train.json")) + "]"
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--output_dir", str(tmp_path / "two"), "--regions_per_batch", "2"]
    command += [item for name, value in settings.items() for item in (f"--{name}", str(value))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def validation(run: str) -> float:
        events = EventAccumulator(str(tmp_path / run / "tensorboard"))
        events.Reload()
        return {e.step: e.value for e in events.Scalars("validation/total")}[3]

    assert validation("two") == pytest.approx(validation("one"), rel=0.01)
