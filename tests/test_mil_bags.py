"""Slide and patient bags from real (synthetic-feature) stores: only valid tokens, with the boxes they cover."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pathme.data.bags import (
    BagDataset,
    BagIndex,
    _bag_bytes,
    available_sources,
    collate_bags,
    read_slide_bag,
)
from pathme.data.feature_source import FeatureSource
from pathme.engines.embed import token_coords
from pathme.store import StoreError
from pathme.store.tokens import TokenProvenance, write_token_store
from pathme.synthetic.stores import write_store
from pathme.wsi.grid import REGION_PX, RegionGrid

DIMS = {"expert-a": 8, "expert-b": 4}
TOKEN_DIM = 6
EXTENT = REGION_PX  # 0.5 µm/px synthetic slides: a region is 4096 level-0 px
RULES = ["full", "sparse", "empty", "sparse"]


def origins(n_regions: int) -> np.ndarray:
    return RegionGrid(REGION_PX * n_regions, REGION_PX, 0.5).origins()


def tokens_for(regions: list[dict], seed: int = 0) -> np.ndarray:
    """Random PatHME tokens [R, 26, D]: prompts always finite, NaN in invalid L1 tokens (as the store allows)."""
    tokens = np.random.default_rng(seed).standard_normal((len(regions), 26, TOKEN_DIM)).astype(np.float16)
    tokens = tokens.astype(np.float32)  # float16 numbers: the store holds them exactly
    for row, region in enumerate(regions):
        tokens[row, 10:][~region["valid_l1"]] = np.nan
    return tokens


def token_store(folder: Path, slide_id: str, patient_id: str, rules: list[str]) -> tuple[list[dict], np.ndarray]:
    """An expert store under folder/regions and its token store under folder/tokens."""
    (folder / "regions").mkdir(parents=True, exist_ok=True)
    regions = write_store(folder / "regions", slide_id, patient_id, rules, DIMS)
    tokens = tokens_for(regions, seed=len(slide_id))
    coords = token_coords(origins(len(rules)), EXTENT, 10)
    write_token_store(
        folder / "regions" / f"{slide_id}.h5",
        folder / "tokens" / f"{slide_id}.h5",
        tokens,
        coords,
        TokenProvenance("t.pt", "sha256:t", "expert-a"),
    )
    return regions, tokens


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, tuple[list[dict], np.ndarray]]:
    """Patient p1 with two slides (s1, s2), patient p2 with one (s3), as expert and token stores."""
    return {
        "s1": token_store(tmp_path, "s1", "p1", RULES),
        "s2": token_store(tmp_path, "s2", "p1", ["sparse", "full"]),
        "s3": token_store(tmp_path, "s3", "p2", ["empty", "sparse"]),
    }


def test_expert_bag_holds_exactly_the_valid_l0_tiles_at_their_places(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    regions, _ = stores["s1"]
    bag = read_slide_bag(tmp_path / "regions" / "s1.h5", "expert-a")
    valid = np.stack([region["valid_l0"] for region in regions])
    assert bag.features.shape == (valid.sum(), DIMS["expert-a"]) and bag.features.dtype == np.float16  # as stored
    assert np.isfinite(bag.features).all()
    expected = np.concatenate([region["features"]["expert-a"][0][region["valid_l0"]] for region in regions])
    np.testing.assert_array_equal(bag.features, expected)
    # tile (row, col) of region r covers origin + (col, row) * extent / 16
    rows, cols = np.divmod(np.arange(256), 16)
    tile_xy = np.stack([cols, rows], axis=1) * (EXTENT // 16)
    expected_coords = (origins(len(RULES))[:, None, :] + tile_xy[None])[valid]
    np.testing.assert_array_equal(bag.coords, expected_coords)
    assert bag.coords.dtype == np.int64
    np.testing.assert_array_equal(bag.sizes, np.full(len(bag.coords), EXTENT / 16))
    assert (bag.kinds == 1).all() and bag.kinds.dtype == np.int8
    assert (bag.slide_id, bag.patient_id, bag.slide_path) == ("s1", "p1", "/data/s1.svs")


def test_pathme_bag_holds_prompts_and_valid_l1_tokens_of_regions_with_tissue(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    regions, tokens = stores["s1"]
    bag = read_slide_bag(tmp_path / "tokens" / "s1.h5", "pathme")
    valid_l1 = np.stack([region["valid_l1"] for region in regions])
    tissue = valid_l1.any(axis=1)  # the empty region gives nothing, not even prompts
    keep = np.concatenate([np.repeat(tissue[:, None], 10, axis=1), valid_l1], axis=1)
    assert len(bag.features) == 10 * tissue.sum() + valid_l1.sum() == keep.sum()
    assert np.isfinite(bag.features).all()
    np.testing.assert_array_equal(bag.features, tokens[keep])
    np.testing.assert_array_equal(bag.coords, token_coords(origins(len(RULES)), EXTENT, 10)[keep])
    kinds = np.broadcast_to(np.repeat([0, 1], [10, 16]), keep.shape)[keep]
    np.testing.assert_array_equal(bag.kinds, kinds)
    np.testing.assert_array_equal(bag.sizes, np.where(kinds == 0, EXTENT, EXTENT / 4))


def test_pathme_mean_is_one_token_per_region_with_tissue(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    regions, tokens = stores["s1"]
    bag = read_slide_bag(tmp_path / "tokens" / "s1.h5", "pathme-mean")
    tissue = [row for row, region in enumerate(regions) if region["valid_l1"].any()]
    assert len(bag.features) == len(tissue) == len(RULES) - 1
    for token, row in zip(bag.features, tissue, strict=True):
        kept = np.concatenate([tokens[row, :10], tokens[row, 10:][regions[row]["valid_l1"]]])
        np.testing.assert_allclose(token, kept.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(bag.coords, origins(len(RULES))[tissue])
    np.testing.assert_array_equal(bag.sizes, np.full(len(tissue), EXTENT))
    assert (bag.kinds == 0).all()


def test_expert_bag_at_5x_and_1_25x_holds_the_valid_l1_tiles_and_the_regions_with_tissue(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    regions, _ = stores["s1"]
    valid = np.stack([region["valid_l1"] for region in regions])
    bag = read_slide_bag(tmp_path / "tokens" / "s1.h5", "expert-b@5x")  # through the token store's link
    expected = np.concatenate([region["features"]["expert-b"][1][region["valid_l1"]] for region in regions])
    np.testing.assert_array_equal(bag.features, expected)
    rows, cols = np.divmod(np.arange(16), 4)
    tile_xy = np.stack([cols, rows], axis=1) * (EXTENT // 4)
    np.testing.assert_array_equal(bag.coords, (origins(len(RULES))[:, None, :] + tile_xy[None])[valid])
    np.testing.assert_array_equal(bag.sizes, np.full(valid.sum(), EXTENT / 4))
    assert (bag.kinds == 1).all()
    region = read_slide_bag(tmp_path / "regions" / "s1.h5", "expert-a@1.25x")
    tissue = valid.any(axis=1)
    expected = np.stack([r["features"]["expert-a"][2] for r, t in zip(regions, tissue, strict=True) if t])
    np.testing.assert_array_equal(region.features, expected)
    np.testing.assert_array_equal(region.coords, origins(len(RULES))[tissue])
    np.testing.assert_array_equal(region.sizes, np.full(tissue.sum(), EXTENT))
    assert (region.kinds == 0).all()
    index = BagIndex(tmp_path / "tokens", "expert-a@5x")
    assert index.feature_dim() == DIMS["expert-a"]
    assert index.token_counts()["p2"] == stores["s3"][0][1]["valid_l1"].sum()
    with pytest.raises(ValueError, match=r"unknown scale '@10x'; use @5x, @1\.25x"):
        read_slide_bag(tmp_path / "regions" / "s1.h5", "expert-a@10x")
    with pytest.raises(ValueError, match=r"expert 'uni' missing.*<expert>@5x"):
        read_slide_bag(tmp_path / "regions" / "s1.h5", "uni@5x")


def test_sources_and_a_missing_source_is_a_clear_error(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    assert available_sources(tmp_path / "regions" / "s1.h5") == ["expert-a", "expert-b"]
    assert available_sources(tmp_path / "tokens" / "s1.h5") == ["pathme", "pathme-mean", "expert-a", "expert-b"]
    with pytest.raises(ValueError, match=r"s1\.h5.*'pathme'.*dataset 'tokens' missing.*has: expert-a, expert-b"):
        read_slide_bag(tmp_path / "regions" / "s1.h5", "pathme")
    with pytest.raises(ValueError, match=r"expert 'uni' missing.*has: pathme, pathme-mean, expert-a, expert-b"):
        read_slide_bag(tmp_path / "tokens" / "s1.h5", "uni")
    with pytest.raises(ValueError, match="dataset 'tokens' missing"):
        BagIndex(tmp_path / "regions", "pathme-mean")


def test_expert_features_of_a_token_store_come_through_its_link(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    through_link = read_slide_bag(tmp_path / "tokens" / "s1.h5", "expert-a")
    direct = read_slide_bag(tmp_path / "regions" / "s1.h5", "expert-a")
    for field in ("features", "coords", "sizes", "kinds"):
        np.testing.assert_array_equal(getattr(through_link, field), getattr(direct, field))
    moved = tmp_path / "archive" / "tokens"
    moved.parent.mkdir()
    (tmp_path / "tokens").rename(moved)  # the region stores are no longer where the (relative) link points
    np.testing.assert_array_equal(read_slide_bag(moved / "s1.h5", "pathme").features[:10], stores["s1"][1][0, :10])
    with pytest.raises(StoreError, match=r"archive/tokens/s1.h5: expert features are read from .*regions/s1.h5.*gone"):
        read_slide_bag(moved / "s1.h5", "expert-a")


def test_broken_store_and_empty_folder(tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(StoreError, match="broken.h5"):
        read_slide_bag(broken, "expert-a")
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="no stores"):
        BagIndex(tmp_path / "none", "pathme")


@pytest.mark.parametrize("source", ["pathme", "pathme-mean", "expert-b"])
def test_a_patient_bag_is_the_union_of_its_slides(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]], source: str
) -> None:
    index = BagIndex(tmp_path / "tokens", source)
    assert index.slide_patients == {"s1": "p1", "s2": "p1", "s3": "p2"}
    assert index.feature_dim() == DIMS.get(source, TOKEN_DIM)
    assert index.patient_slides("p1") == ["s1", "s2"]
    bags = {slide: read_slide_bag(tmp_path / "tokens" / f"{slide}.h5", source) for slide in stores}
    assert index.token_counts() == {
        "p1": len(bags["s1"].features) + len(bags["s2"].features),
        "p2": len(bags["s3"].features),
    }
    item = BagDataset(index, ["p1", "p2"])[0]
    assert item["patient_id"] == "p1" and item["slide_ids"] == ["s1", "s2"]
    first, second = bags["s1"], bags["s2"]
    union = np.concatenate([first.features, second.features], dtype=np.float32)
    torch.testing.assert_close(item["features"], torch.from_numpy(union))
    np.testing.assert_array_equal(item["coords"].numpy(), np.concatenate([first.coords, second.coords]))
    np.testing.assert_array_equal(item["sizes"].numpy(), np.concatenate([first.sizes, second.sizes]))
    np.testing.assert_array_equal(item["kinds"].numpy(), np.concatenate([first.kinds, second.kinds]))
    expected_index = np.repeat([0, 1], [len(first.features), len(second.features)])
    np.testing.assert_array_equal(item["slide_index"].numpy(), expected_index)


def test_dataset_targets_unknown_patients_and_collate(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    index = BagIndex(tmp_path / "tokens", "pathme")
    targets = {
        "p1": {"target": 1, "time": 12.5, "event": 1.0, "bin": 2},
        "p2": {"target": 0, "time": 3.0, "event": 0.0, "bin": 0},
    }
    with pytest.raises(ValueError, match="without a store.*p9"):
        BagDataset(index, ["p1", "p9"])
    with pytest.raises(ValueError, match="without targets.*p2"):
        BagDataset(index, ["p1", "p2"], {"p1": targets["p1"]})
    dataset = BagDataset(index, ["p2", "p1"], targets)
    items = [dataset[0], dataset[1]]
    assert [items[1][key].dtype for key in targets["p1"]] == [torch.long, torch.float32, torch.float32, torch.long]
    batch = collate_bags(items)
    lengths = [len(item["features"]) for item in items]
    assert batch["features"].shape == (2, max(lengths), TOKEN_DIM)
    assert batch["mask"].dtype == torch.bool and batch["mask"].sum(dim=1).tolist() == lengths
    assert (batch["features"][~batch["mask"]] == 0).all()
    torch.testing.assert_close(batch["features"][0, : lengths[0]], items[0]["features"])
    assert batch["target"].tolist() == [0, 1] and batch["time"].tolist() == [3.0, 12.5]
    assert batch["event"].tolist() == [0.0, 1.0] and batch["bin"].tolist() == [0, 2]
    assert batch["patient_id"] == ["p2", "p1"] and batch["slide_ids"] == [["s3"], ["s1", "s2"]]
    assert [len(coords) for coords in batch["coords"]] == lengths


def test_dataset_pickles_into_loader_workers(tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]) -> None:
    """No open HDF5 file is held, so workers read their own."""
    dataset = BagDataset(BagIndex(tmp_path / "regions", "expert-a", cache_bytes=0), ["p1", "p2"])
    copy = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(copy[1]["features"], dataset[1]["features"])
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_bags)
    (batch,) = list(loader)
    lengths = [len(dataset[i]["features"]) for i in range(2)]
    assert batch["patient_id"] == ["p1", "p2"] and batch["mask"].sum(dim=1).tolist() == lengths


def test_the_bag_cache_stays_within_its_byte_budget_and_changes_no_item(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    uncached = BagDataset(BagIndex(tmp_path / "tokens", "pathme", cache_bytes=0), ["p1", "p2"])
    reference = [uncached[i] for i in (0, 1, 0)]
    one_patient = _bag_bytes(uncached.index.patient_bag("p1"))  # p1 is the larger patient
    assert uncached.index._cached_bytes == 0 and not uncached.index._cache
    for budget, kept in ((one_patient, ["p1"]), (10 * one_patient, ["p2", "p1"])):
        index = BagIndex(tmp_path / "tokens", "pathme", cache_bytes=budget)
        dataset = BagDataset(index, ["p1", "p2"])
        for position, expected in zip((0, 1, 0), reference, strict=True):
            item = dataset[position]
            assert item["features"].dtype == torch.float32
            torch.testing.assert_close(item["features"], expected["features"], rtol=0, atol=0)
            np.testing.assert_array_equal(item["coords"], expected["coords"])
        assert 0 < index._cached_bytes <= budget
        assert list(index._cache) == kept  # least recently used first; p2 evicted when only p1 fits
        assert index.patient_bag("p1") is index.patient_bag("p1")  # a hit reads nothing
    assert read_slide_bag(tmp_path / "tokens" / "s1.h5", "pathme").features.dtype == np.float16  # kept as stored
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        BagIndex(tmp_path / "tokens", "pathme", cache_bytes=-1)


def test_evaluation_keeps_copies_not_views_of_each_step(
    tmp_path: Path, stores: dict[str, tuple[list[dict], np.ndarray]]
) -> None:
    """A prediction that viewed its step's tensors held 2-4 MB of heap per patient evaluated (measured on UNI-size
    bags: 744 -> 1,172 MB RSS over 100 patients, 794 MB with copies), so validation grew with the cohort."""
    from pathme.engines.mil import MILModelConfig, MILTask, create_mil_evaluator, make_loader

    dataset = BagDataset(
        BagIndex(tmp_path / "regions", "expert-a", cache_bytes=0),
        ["p1", "p2"],
        {"p1": {"target": 1}, "p2": {"target": 0}},
    )
    model = MILModelConfig(in_dim=DIMS["expert-a"], num_outputs=2).build()
    evaluator = create_mil_evaluator(model, MILTask("label", ("a", "b")), torch.device("cpu"))
    evaluator.run(make_loader(dataset, 2, shuffle=False, seed=0))
    arrays = [
        value for record in evaluator.state.predictions for value in record.values() if isinstance(value, np.ndarray)
    ]
    assert len(arrays) == 2 * 7 and all(array.flags.owndata for array in arrays)  # the embedding too
    assert [len(record["attention"]) for record in evaluator.state.predictions] == [
        len(dataset[i]["features"]) for i in (0, 1)
    ]


def test_a_feature_source_is_parsed_once_into_expert_and_store_level():
    parsed = {text: FeatureSource.parse(text) for text in ("pathme", "pathme-mean", "uni", "uni@5x", "uni@1.25x")}
    assert [(s.expert, s.level, s.tokens, s.mean) for s in parsed.values()] == [
        (None, None, True, False),
        (None, None, True, True),
        ("uni", "L0", False, False),
        ("uni", "L1", False, False),
        ("uni", "L2", False, False),
    ]
    assert [str(s) for s in parsed.values()] == list(parsed)  # what configs and fold models record
    assert FeatureSource.parse(parsed["uni@5x"]) is parsed["uni@5x"]
    for bad in ("", "@5x", "uni@2x", "uni@", "pathme@5x"):
        with pytest.raises(ValueError, match="feature source"):
            FeatureSource.parse(bad)
    with pytest.raises(ValueError, match=r"unknown scale '@2x'"):  # refused before any store is opened
        BagIndex("/nonexistent", "uni@2x")
