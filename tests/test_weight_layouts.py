"""Weights as people download them: Hugging Face files, folders, cache snapshots, shards, the hub offline, and
the summary a file that does not fit gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pathme.encoders import WeightsError, build_expert
from pathme.encoders.weights import file_sha256

REVISION = "0123456789abcdef0123456789abcdef01234567"


def encode(expert, tiles: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return expert(tiles)


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    return torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def source():
    """The tiny ViT with seed-1 weights, whose features every layout must reproduce."""
    return build_expert("tiny-vit", seed=1)


@pytest.fixture(scope="module")
def state(source) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in source.model.state_dict().items()}


def hf_cache_repo(root: Path, repo_id: str, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """A Hugging Face cache repository folder as huggingface_hub lays it out: blobs, a snapshot of links, refs/main."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for filename, content in files.items():
        blob = repo / "blobs" / filename.replace("/", "_")
        save_file(content, blob) if filename.endswith(".safetensors") else torch.save(content, blob)
        (snapshot / filename).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return repo


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_files_and_their_folder_load(filename: str, state, source, tiles, tmp_path: Path) -> None:
    folder = tmp_path / "local-dir"  # `hf download <repo> --local-dir local-dir`
    folder.mkdir()
    path = folder / filename
    save_file(state, path) if filename.endswith(".safetensors") else torch.save(state, path)
    for given in (path, folder):
        loaded = build_expert("tiny-vit", given)
        assert torch.equal(encode(loaded, tiles), encode(source, tiles))
        assert loaded.weights_digest == file_sha256(path)


def test_cache_snapshot_and_cache_repository_folder_load(state, source, tiles, tmp_path: Path) -> None:
    repo = hf_cache_repo(tmp_path, "lab/tiny-vit", {"model.safetensors": state})
    for given in (repo / "snapshots" / REVISION, repo):
        loaded = build_expert("tiny-vit", given)
        assert torch.equal(encode(loaded, tiles), encode(source, tiles))


def test_sharded_checkpoint_loads_through_its_index(state, source, tiles, tmp_path: Path) -> None:
    keys = list(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, part in shards.items():
        save_file({key: state[key] for key in part}, tmp_path / name)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {key: name for name, part in shards.items() for key in part}}))
    loaded = build_expert("tiny-vit", index)
    assert torch.equal(encode(loaded, tiles), encode(source, tiles))
    assert build_expert("tiny-vit", tmp_path).weights_digest == loaded.weights_digest  # the folder finds the index
    other = dict(state, **{keys[0]: state[keys[0]] + 1})
    save_file(
        {key: other[key] for key in shards["model-00001-of-00002.safetensors"]},
        tmp_path / "model-00001-of-00002.safetensors",
    )
    assert build_expert("tiny-vit", index).weights_digest != loaded.weights_digest  # a changed shard is a new digest


def test_torch_compile_and_ddp_prefixes_are_removed(state, source, tiles, tmp_path: Path) -> None:
    path = tmp_path / "compiled.pth"
    torch.save({"model": {f"_orig_mod.module.{key}": value for key, value in state.items()}, "epoch": 9}, path)
    assert torch.equal(encode(build_expert("tiny-vit", path), tiles), encode(source, tiles))


def test_hub_weights_load_offline_from_the_cache(monkeypatch: pytest.MonkeyPatch, tiles, tmp_path: Path) -> None:
    import huggingface_hub.constants

    reference = build_expert("timm:test_vit", "random", seed=2)
    repo = hf_cache_repo(tmp_path, "timm/test_vit.r160_in1k", {"model.safetensors": reference.model.state_dict()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = build_expert("timm:test_vit", "hub")
    assert torch.equal(encode(loaded, tiles), encode(reference, tiles))
    blob = next((repo / "blobs").iterdir())
    assert loaded.weights_source == "hub"
    assert (
        loaded.weights_digest
        == f"hf-hub:timm/test_vit.r160_in1k@{REVISION}/model.safetensors:sha256:{file_sha256(blob)}"
    )


def test_hub_offline_without_a_cached_file_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        WeightsError, match=r"'timm:test_vit': none of model\.safetensors, .*pytorch_model\.bin.*\(HF_HUB_OFFLINE=1"
    ):
        build_expert("timm:test_vit", "hub")
    with pytest.raises(WeightsError, match="'tiny-vit' has no published weights"):
        build_expert("tiny-vit", "hub")


def test_folder_without_weights_is_refused_naming_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"weight folder .* holds none of model\.safetensors, .*pytorch_model\.bin"):
        build_expert("tiny-vit", tmp_path)
    with pytest.raises(WeightsError, match=r"cache folder .*models--lab--empty: no snapshot of refs/main"):
        build_expert("tiny-vit", hf_cache_repo(tmp_path, "lab/empty", {}))


def _failure(state: dict, tmp_path: Path, name: str = "tiny-vit") -> str:
    path = tmp_path / "wrong.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError) as raised:
        build_expert(name, path)
    message = str(raised.value)
    assert str(path) in message and f"expert {name!r}" in message
    return message


def test_transformers_layout_is_recognised(state, tmp_path: Path) -> None:
    hf = {f"encoder.layer.{i}.attention.attention.query.weight": torch.zeros(64, 64) for i in range(2)}
    hf |= {"embeddings.cls_token": torch.zeros(1, 1, 64), "embeddings.position_embeddings": torch.zeros(1, 17, 64)}
    message = _failure(hf, tmp_path)
    assert f"{len(state)} missing key(s)" in message and "4 unexpected key(s)" in message
    assert "Likely: the file is in the Hugging Face transformers layout" in message


def test_another_model_another_variant_and_a_classifier_head_are_recognised(state, tmp_path: Path) -> None:
    resnet = build_expert("tiny-cnn").model.state_dict()
    assert "Likely: the file holds another model" in _failure(dict(resnet), tmp_path)
    for variant in (
        build_expert("timm:vit_tiny_patch16_224", "random").model.state_dict(),  # 12 blocks of 192, not 2 of 64
        {key: torch.zeros(*[2 * n for n in value.shape]) for key, value in state.items()},
    ):
        message = _failure(dict(variant), tmp_path)
        assert f"{len(state)} shape mismatch(es)" in message and "Likely: same layout, other sizes" in message
    headed = dict(state, **{"head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)})
    assert "Likely: the file carries a classification head" in _failure(headed, tmp_path)


TRANSFORMERS = Path(__file__).parent / "data" / "transformers"  # scripts/make_transformers_fixtures.py wrote them
TINY_SIZE = {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2}  # the fixtures' configuration


@pytest.mark.parametrize(
    ("family", "expert", "mlp_ratio", "prefix"),
    [("vit", "phikon", 2.0, 1), ("dinov2", "phikon-v2", 4.0, 1), ("dinov2_registers", "hibou-b", 176 / 32, 5)],
)
def test_transformers_checkpoints_map_exactly_onto_their_experts_architecture(
    family: str, expert: str, mlp_ratio: float, prefix: int
) -> None:
    """A tiny transformers model of each family, saved with save_pretrained, loads through the registry entry's
    own architecture and key map (shrunk to the fixture's size) and gives transformers' tokens exactly."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from pathme.encoders.registry import get_spec
    from pathme.encoders.weights import load_weights

    spec = get_spec(expert)
    tiny = replace(spec, timm_kwargs=dict(spec.timm_kwargs, **TINY_SIZE, patch_size=14, mlp_ratio=mlp_ratio))
    folder = TRANSFORMERS / family
    model = load_weights(tiny, folder / "model.safetensors").eval()
    assert model.num_prefix_tokens == prefix
    reference = load_file(folder / "reference.safetensors")
    with torch.no_grad():
        tokens = model.forward_features(reference["pixels"])
    torch.testing.assert_close(tokens, reference["tokens"], rtol=0, atol=1e-5)


def test_a_transformers_checkpoint_missing_a_projection_names_it(tmp_path: Path) -> None:
    from dataclasses import replace

    from safetensors.torch import load_file

    from pathme.encoders.registry import get_spec
    from pathme.encoders.weights import load_weights

    state = load_file(TRANSFORMERS / "vit" / "model.safetensors")
    del state["encoder.layer.1.attention.attention.key.weight"]
    save_file(state, tmp_path / "model.safetensors")
    spec = get_spec("phikon")
    tiny = replace(spec, timm_kwargs=dict(spec.timm_kwargs, **TINY_SIZE, patch_size=14, mlp_ratio=2.0))
    with pytest.raises(WeightsError, match=r"blocks\.1\.attn\.qkv\.weight lacks one of the query, key and value"):
        load_weights(tiny, tmp_path / "model.safetensors")


def test_an_unreachable_hub_fails_at_once_or_uses_another_cached_file(
    monkeypatch: pytest.MonkeyPatch, tiles, tmp_path: Path
) -> None:
    """Online but without a connection: one clear message (not a retry round per file name), or the cached file."""
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from pathme.encoders import weights

    calls = []

    def unreachable(repo_id, filename, revision=None):
        calls.append(filename)
        raise LocalEntryNotFoundError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "hf_hub_download", unreachable)
    with pytest.raises(WeightsError, match=r"'timm:test_vit': could not reach the Hugging Face hub .*Name or service"):
        build_expert("timm:test_vit", "hub")
    assert calls == ["model.safetensors"]
    reference = build_expert("timm:test_vit", "random", seed=2)
    hf_cache_repo(tmp_path, "timm/test_vit.r160_in1k", {"pytorch_model.bin": reference.model.state_dict()})
    loaded = build_expert("timm:test_vit", "hub")  # model.safetensors unreachable, pytorch_model.bin cached
    assert torch.equal(encode(loaded, tiles), encode(reference, tiles))


def test_path_errors_name_the_expert_and_stray_weights_are_refused(tmp_path: Path) -> None:
    from pathme.engines.extraction import CohortExtractor

    with pytest.raises(WeightsError, match=r"expert 'tiny-vit': weight file not found: .*absent\.pt"):
        build_expert("tiny-vit", tmp_path / "absent.pt")
    with pytest.raises(WeightsError, match=r"expert 'uni' needs weights \(`--weights uni=\.\.\.`"):
        build_expert("uni")
    with pytest.raises(ValueError, match=r"weights: \['unii'\] name\(s\) no expert of this run \['uni'\]"):
        CohortExtractor(tmp_path / "manifest.csv", tmp_path / "out", ["uni"], {"unii": "hub"})


def test_a_shallower_or_deeper_variant_is_named(tmp_path: Path) -> None:
    shallow = build_expert("timm:resnet18", "random").model.state_dict()
    message = _failure(dict(shallow), tmp_path, "timm:resnet34")
    assert "Likely: the file has fewer layers: a shallower variant" in message
    deep = build_expert("timm:resnet34", "random").model.state_dict()
    assert "Likely: the file has more layers: a deeper variant" in _failure(dict(deep), tmp_path, "timm:resnet18")
