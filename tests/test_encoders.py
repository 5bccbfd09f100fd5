"""Expert registry: architectures and dimensions, the input transform, and every weight source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pathme.encoders import Expert, WeightsError, build_expert, get_spec, list_experts

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = ["tiny-vit", "tiny-cnn"]


def make_tiles(count: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    """Random uint8 tiles [count, size, size, 3] with some smooth structure, as the experts receive them."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, size // 16, size // 16, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, size=(count, size, size, 3))
    tiles = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2) + noise
    return torch.from_numpy(np.clip(tiles, 0, 255).astype(np.uint8))


def encode(expert: Expert, tiles: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return expert(tiles)


def save_weights(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    return make_tiles(4)


@pytest.fixture(scope="module")
def tiny_vit_state() -> dict[str, torch.Tensor]:
    """State dict of a random tiny ViT (seed 1), as a weight file would hold it."""
    return {key: value.clone() for key, value in build_expert("tiny-vit", seed=1).model.state_dict().items()}


def test_registry_lists_built_ins_and_rejects_unknown_names() -> None:
    assert {"uni", "gigapath", "virchow2", "virchow2-cls", "tiny-vit", "tiny-cnn"} <= set(list_experts())
    dims = {name: get_spec(name).dim for name in list_experts()}
    assert dims["uni"] == 1024 and dims["gigapath"] == 1536
    assert dims["virchow2"] == 2560 and dims["virchow2-cls"] == 1280
    with pytest.raises(ValueError, match="unknown expert 'conch'"):
        get_spec("conch")
    with pytest.raises(ValueError, match="no_such_model"):
        get_spec("timm:no_such_model")
    with pytest.raises(ValueError, match="weights='hub'"):
        get_spec("timm:hf-hub:timm/resnet18.a1_in1k")


@pytest.mark.parametrize("name", TINY)
def test_tiny_experts_encode_uint8_tiles_into_float32_features(name: str, tiles: torch.Tensor) -> None:
    expert = build_expert(name)
    features = encode(expert, tiles)
    assert features.dtype == torch.float32 and features.shape == (4, expert.dim)
    assert torch.isfinite(features).all()
    assert expert.weights_source == "random" and expert.weights_digest == "random:0"
    assert not any(parameter.requires_grad for parameter in expert.parameters())
    expert.train()
    assert not expert.training and not expert.model.training
    assert set(expert.state_dict()) == {f"model.{key}" for key in expert.model.state_dict()}


def test_transform_resizes_to_input_size_and_normalises(tiles: torch.Tensor) -> None:
    expert = build_expert("tiny-vit")
    assert expert.input_size == (64, 64)
    assert expert.mean == (0.485, 0.456, 0.406) and expert.std == (0.229, 0.224, 0.225)
    pixels = tiles.permute(0, 3, 1, 2).float()
    resized = F.interpolate(pixels, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).round()
    expected = (resized / 255 - IMAGENET_MEAN) / IMAGENET_STD
    got = expert.transform(tiles)
    assert got.shape == (4, 3, 64, 64) and got.dtype == torch.float32
    grey_level = 1 / 255 / IMAGENET_STD.min().item()
    assert (got - expected).abs().max() <= grey_level + 1e-5  # resized to whole grey levels, as PIL does
    assert (got - expected).abs().mean() < grey_level / 4
    # tiles already at the input size are only normalised
    small = make_tiles(2, size=64)
    exact = (small.permute(0, 3, 1, 2).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(expert.transform(small), exact, rtol=0, atol=1e-5)
    # the features are the model's class token of exactly this transform
    torch.testing.assert_close(encode(expert, tiles), expert.model.forward_features(got)[:, 0])


def test_forward_refuses_tiles_that_are_not_uint8_rgb(tiles: torch.Tensor) -> None:
    expert = build_expert("tiny-cnn")
    with pytest.raises(ValueError, match="expected uint8 tiles"):
        expert(tiles.float())
    with pytest.raises(ValueError, match="expected uint8 tiles"):
        expert(tiles.permute(0, 3, 1, 2))


def test_real_expert_without_weights_says_what_to_give() -> None:
    with pytest.raises(WeightsError, match=r"needs weights .*a weight file .*or a folder .*'hub'.*'random'"):
        build_expert("uni")


def test_random_weights_are_deterministic_and_recorded(tiles: torch.Tensor) -> None:
    rng_state = torch.get_rng_state()
    first, again, other = (build_expert("tiny-vit", "random", seed=seed) for seed in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's random stream is left alone
    assert torch.equal(encode(first, tiles), encode(again, tiles))
    assert not torch.equal(encode(first, tiles), encode(other, tiles))
    assert first.weights_source == "random" and first.weights_digest == "random:3"


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pth", ".pt"])
@pytest.mark.parametrize("name", TINY)
def test_weight_file_round_trips(name: str, suffix: str, tmp_path: Path, tiles: torch.Tensor) -> None:
    source = build_expert(name, seed=1)
    path = save_weights(source.model.state_dict(), tmp_path / f"weights{suffix}")
    loaded = build_expert(name, path)
    assert torch.equal(encode(loaded, tiles), encode(source, tiles))
    assert loaded.weights_source == "file"
    assert loaded.weights_digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(value.device.type == "cpu" for value in loaded.state_dict().values())


def test_weight_file_loads_into_a_model_with_computed_buffers(tmp_path: Path, tiles: torch.Tensor) -> None:
    source = build_expert("timm:test_coatnet", "random", seed=1)  # relative-position indices are not saved
    assert set(dict(source.model.named_buffers())) - set(source.model.state_dict())
    loaded = build_expert("timm:test_coatnet", save_weights(source.model.state_dict(), tmp_path / "w.safetensors"))
    assert torch.equal(encode(loaded, tiles), encode(source, tiles))


@pytest.mark.parametrize("nesting", ["state_dict", "model"])
def test_nested_checkpoints_with_module_prefix_load(
    nesting: str, tiny_vit_state: dict, tmp_path: Path, tiles: torch.Tensor
) -> None:
    wrapped = {nesting: {f"module.{key}": value for key, value in tiny_vit_state.items()}, "epoch": 3}
    loaded = build_expert("tiny-vit", save_weights(wrapped, tmp_path / "checkpoint.pth"))
    assert torch.equal(encode(loaded, tiles), encode(build_expert("tiny-vit", seed=1), tiles))


def test_half_precision_file_loads_as_float32(tiny_vit_state: dict, tmp_path: Path) -> None:
    half = {key: value.half() for key, value in tiny_vit_state.items()}
    loaded = build_expert("tiny-vit", save_weights(half, tmp_path / "half.safetensors"))
    assert all(parameter.dtype == torch.float32 for parameter in loaded.parameters())


def test_wrong_shape_names_the_key_and_both_shapes(tiny_vit_state: dict, tmp_path: Path) -> None:
    state = dict(tiny_vit_state, pos_embed=torch.zeros(1, 50, 64))
    path = save_weights(state, tmp_path / "wrong.safetensors")
    with pytest.raises(WeightsError) as raised:
        build_expert("tiny-vit", path)
    message = str(raised.value)
    assert str(path) in message
    assert "'pos_embed' has shape [1, 50, 64] in the file but [1, 17, 64] in the model" in message


def test_missing_and_unexpected_keys_are_named(tiny_vit_state: dict, tmp_path: Path) -> None:
    state = {key: value for key, value in tiny_vit_state.items() if key != "blocks.1.norm1.weight"}
    state["head.weight"] = torch.zeros(10, 64)
    with pytest.raises(
        WeightsError, match=r"missing key\(s\) 'blocks.1.norm1.weight'.*unexpected key\(s\) 'head.weight'"
    ):
        build_expert("tiny-vit", save_weights(state, tmp_path / "partial.bin"))


def test_files_that_are_not_weights_fail_clearly(tmp_path: Path) -> None:
    for name, text in [
        ("notes.pth", "not weights\n"),
        ("hello.pth", "hello"),
        ("notes.safetensors", "hello"),
        ("notes.bin", ""),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(WeightsError, match=f"{name}: not a readable"):
            build_expert("tiny-cnn", tmp_path / name)
    with pytest.raises(WeightsError, match="unknown format '.txt'"):
        build_expert("tiny-cnn", save_weights({}, tmp_path / "weights.txt"))
    with pytest.raises(WeightsError, match="weight file not found"):
        build_expert("tiny-cnn", tmp_path / "absent.safetensors")
    with pytest.raises(WeightsError, match=r"'epoch' is not a tensor \(int\)"):
        build_expert("tiny-cnn", save_weights({"epoch": 3}, tmp_path / "counter.pt"))


@pytest.mark.parametrize(("name", "pooling", "dim"), [("timm:test_resnet", "pool", 96), ("timm:test_vit", "cls", 64)])
def test_any_timm_model_is_an_expert(name: str, pooling: str, dim: int, tiles: torch.Tensor) -> None:
    spec = get_spec(name)
    assert (spec.pooling, spec.dim) == (pooling, dim)
    expert = build_expert(name, "random")
    assert expert.input_size == (160, 160) and expert.mean == (0.5, 0.5, 0.5)  # the model's own config
    features = encode(expert, tiles)
    assert features.shape == (4, dim)
    torch.testing.assert_close(features, expert.model(expert.transform(tiles)))  # timm's own readout


@pytest.mark.slow
# Prov-GigaPath's count and dims are checked on the meta device (test_expert_zoo.py); its real-size forward (50 s
# of CI) reads the class token the same way as UNI's, so UNI alone runs here
@pytest.mark.parametrize(("name", "million_params"), [("uni", 303)])
def test_real_class_token_experts_build_with_documented_dims(name: str, million_params: int) -> None:
    expert = build_expert(name, "random")
    assert round(sum(p.numel() for p in expert.model.parameters()) / 1e6) == million_params
    assert (expert.input_size, expert.mean, expert.std) == ((224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    tiles = make_tiles(2)
    features = encode(expert, tiles)
    assert features.shape == (2, get_spec(name).dim) and features.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(features, expert.model(expert.transform(tiles)))  # the model card's readout


@pytest.mark.slow
def test_virchow2_concatenates_class_token_and_mean_of_patch_tokens() -> None:
    expert = build_expert("virchow2", "random")
    assert round(sum(p.numel() for p in expert.model.parameters()) / 1e6) == 631
    assert expert.model.num_prefix_tokens == 5  # class token and 4 register tokens
    cls_only = Expert(get_spec("virchow2-cls"), expert.model, "random", expert.weights_digest)
    tiles = make_tiles(2)
    features, class_tokens = encode(expert, tiles), encode(cls_only, tiles)
    assert features.shape == (2, 2560) and class_tokens.shape == (2, 1280)
    with torch.inference_mode():
        tokens = expert.model(expert.transform(tiles))  # global_pool="": every token, as in the model card
    assert tokens.shape == (2, 5 + 256, 1280)
    torch.testing.assert_close(features, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1))
    torch.testing.assert_close(class_tokens, tokens[:, 0])
