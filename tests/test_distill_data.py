"""Distillation data: exact reads of region stores, patient filtering, contiguous local views, masks, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pathme.data.distill_dataset import RegionStoreDataset, read_patients, split_holdout
from pathme.data.masks import block_masks
from pathme.data.view_dataset import ViewDataset
from pathme.data.views import ViewConfig, collate_regions, make_views
from pathme.store import StoreError
from pathme.synthetic.stores import write_store

DIMS = {"a": 8, "b": 6}
# slide id -> (patient id, L0 validity rule per region); "empty" regions have no valid tile and are skipped
SLIDES = {
    "s1": ("p1", ["sparse", "empty", "full"]),
    "s2": ("p2", ["sparse", "sparse"]),
    "s3": ("p3", ["full", "sparse", "sparse", "sparse"]),
}


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, dict[str, list[dict]]]:
    folder = tmp_path / "stores"
    folder.mkdir()
    written = {slide: write_store(folder, slide, patient, rules, DIMS) for slide, (patient, rules) in SLIDES.items()}
    return folder, written


@pytest.fixture
def dataset(stores: tuple[Path, dict]) -> RegionStoreDataset:
    return RegionStoreDataset(stores[0], "a", "b")


def expected_ids(slides: list[str]) -> list[tuple[str, int]]:
    return [(s, r) for s in slides for r, rule in enumerate(SLIDES[s][1]) if rule != "empty"]


def test_dataset_reads_stored_features_and_validity(stores: tuple[Path, dict], dataset: RegionStoreDataset) -> None:
    _, written = stores
    assert dataset.region_ids == expected_ids(["s1", "s2", "s3"])  # the empty region of s1 is skipped
    assert len(dataset) == 8 and (dataset.expert_a_dim, dataset.expert_b_dim) == (8, 6)
    for index, (slide, region) in enumerate(dataset.region_ids):
        item, stored = dataset[index], written[slide][region]
        assert item["index"].dtype == torch.long and int(item["index"]) == index
        for key, level in (("l0_valid", "valid_l0"), ("l1_valid", "valid_l1")):
            assert item[key].dtype == torch.bool and np.array_equal(item[key].numpy(), stored[level])
        for key, expert, level, valid in (
            ("l0", "a", 0, stored["valid_l0"]),
            ("l1", "a", 1, stored["valid_l1"]),
            ("kd", "b", 0, stored["valid_l0"]),
        ):
            values = item[key].numpy()
            assert item[key].dtype == torch.float32 and values.shape == stored["features"][expert][level].shape
            assert np.array_equal(values[valid], stored["features"][expert][level][valid])
            assert not values[~valid].any()  # NaN in the store, zeros out


def test_feature_statistics_cover_the_valid_expert_a_tiles_of_the_given_items(
    stores: tuple[Path, dict], dataset: RegionStoreDataset
) -> None:
    _, written = stores
    items = [0, 2, 5]
    values = []
    for index in items:
        slide, region = dataset.region_ids[index]
        stored = written[slide][region]
        for level, valid in ((0, stored["valid_l0"]), (1, stored["valid_l1"])):
            values.append(stored["features"]["a"][level][valid])
    values = np.concatenate(values).astype(np.float64)  # NaN of invalid tiles excluded
    mean, std = dataset.feature_statistics(items)
    assert mean.shape == std.shape == (8,) and torch.isfinite(mean).all()
    np.testing.assert_allclose(mean.numpy(), values.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), values.std(axis=0), rtol=1e-5, atol=1e-6)


def test_patients_filter_keeps_exactly_those_stores(stores: tuple[Path, dict]) -> None:
    folder, _ = stores
    kept = RegionStoreDataset(folder, "a", "b", patients=["p3", "p1", "unknown"])
    assert kept.region_ids == expected_ids(["s1", "s3"])
    with pytest.raises(ValueError, match="no store belongs"):
        RegionStoreDataset(folder, "a", "b", patients=["nobody"])


def test_read_patients(tmp_path: Path) -> None:
    assert read_patients(None) is None
    assert read_patients(["p2", "p1", "p2"]) == ["p2", "p1"]
    table = tmp_path / "patients.csv"
    table.write_text("patient_id,fold\np1,0\n p3 ,1\n")
    assert read_patients(table) == ["p1", "p3"] == read_patients(str(table))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("slide_id\ns1\n")
    with pytest.raises(ValueError, match=r"wrong\.csv.*patient_id"):
        read_patients(wrong)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_patients(tmp_path / "missing.csv")


def test_store_without_expert_b_is_refused_by_name(stores: tuple[Path, dict]) -> None:
    folder, _ = stores
    write_store(folder, "s4", "p4", ["full"], {"a": 8})
    with pytest.raises(StoreError, match=r"s4\.h5: expert\(s\) b missing"):
        RegionStoreDataset(folder, "a", "b")


@pytest.mark.parametrize("expert, dims", [("b", DIMS), ("a", {"a": 12, "b": 6})], ids=["weights", "dimension"])
def test_stores_of_an_expert_from_other_weights_are_refused_naming_the_stores(
    stores: tuple[Path, dict], expert: str, dims: dict[str, int]
) -> None:
    """A slide re-extracted with other weights of expert B (or another model of expert A's name) is not distilled
    together with the others: the digests (or dimensions) and the stores of each are named."""
    folder, _ = stores
    write_store(folder, "s4", "p4", ["full"], dims, {"expert_digests": {"a": "random", "b": "sha256:other"}})
    what = "weights" if expert == "b" else "dimension"
    with pytest.raises(
        ValueError,
        match=rf"disagree on the {expert} {what} behind their features: .* in 3 store\(s\) "
        r"\(s1.h5, s2.h5, s3.h5\), .* in 1 store\(s\) \(s4.h5\)",
    ):
        RegionStoreDataset(folder, "a", "b")
    assert RegionStoreDataset(folder, "a", "b", ["p1", "p2"]).expert_provenance["b weights"] == "random"


def assert_window(tokens, positions, valid, global_tokens, global_valid, side: int, window: int) -> None:
    """The window is a contiguous block of the grid and its tokens are the global tokens at its positions."""
    rows, cols = positions[:, 0].reshape(window, window), positions[:, 1].reshape(window, window)
    top, left = int(rows[0, 0]), int(cols[0, 0])
    assert 0 <= top <= side - window and 0 <= left <= side - window
    assert torch.equal(rows, top + torch.arange(window)[:, None].expand(window, window))
    assert torch.equal(cols, left + torch.arange(window)[None, :].expand(window, window))
    raster = positions[:, 0] * side + positions[:, 1]
    assert torch.equal(tokens, global_tokens[raster]) and torch.equal(valid, global_valid[raster])


def test_local_views_are_contiguous_windows_at_their_true_positions(dataset: RegionStoreDataset) -> None:
    config = ViewConfig()
    for index in range(len(dataset)):
        views = make_views(dataset[index], config, torch.Generator().manual_seed(index))
        assert views["local_l0"].shape == (4, 36, 8) and views["local_l1"].shape == (4, 9, 8)
        assert torch.equal(views["global_l0_pos"][17], torch.tensor([1, 1]))
        for level, side, window in (("l0", 16, 6), ("l1", 4, 3)):
            glob, glob_valid = views[f"global_{level}"], views[f"global_{level}_valid"]
            for view in range(4):
                tokens, positions = views[f"local_{level}"][view], views[f"local_{level}_pos"][view]
                valid = views[f"local_{level}_valid"][view]
                assert_window(tokens, positions, valid, glob, glob_valid, side, window)
                assert valid.sum() >= config.min_valid_local


def test_local_windows_find_the_only_valid_tile() -> None:
    """Windows are drawn among those meeting min_valid_local, so a single valid tile is always inside."""
    valid_l0 = torch.zeros(256, dtype=torch.bool)
    valid_l0[15 * 16 + 15] = True  # bottom-right corner
    valid_l1 = torch.zeros(16, dtype=torch.bool)
    valid_l1[15] = True
    sample = {"l0": torch.randn(256, 4), "l1": torch.randn(16, 4), "l0_valid": valid_l0, "l1_valid": valid_l1}
    sample["kd"] = torch.randn(256, 3)
    for seed in range(20):
        views = make_views(sample, ViewConfig(), torch.Generator().manual_seed(seed))
        assert views["local_l0_valid"].sum(dim=1).eq(1).all() and views["local_l1_valid"].sum(dim=1).eq(1).all()
    with pytest.raises(ValueError, match="even"):
        ViewConfig(num_local=3)


def test_block_masks_cover_the_requested_share_of_valid_tokens_in_blocks() -> None:
    full = torch.ones(256, dtype=torch.bool)
    neighbours_masked = []
    for seed in range(50):
        ratio = 0.1 + 0.4 * seed / 49
        mask = block_masks(full, 16, ratio, torch.Generator().manual_seed(seed))
        # tolerance: 2% of the grid (the generator stops short only if 10 block draws in a row add nothing)
        assert abs(int(mask.sum()) - round(ratio * 256)) <= 5
        grid = torch.nn.functional.pad(mask.reshape(16, 16).float(), (1, 1, 1, 1))
        touching = grid[:-2, 1:-1] + grid[2:, 1:-1] + grid[1:-1, :-2] + grid[1:-1, 2:]
        neighbours_masked.append(float((touching.reshape(-1)[mask] > 0).float().mean()))
    assert np.mean(neighbours_masked) > 0.9  # rectangles, not scattered tokens
    sparse = torch.rand(256, generator=torch.Generator().manual_seed(0)) < 0.4
    for seed in range(50):
        mask = block_masks(sparse, 16, 0.3, torch.Generator().manual_seed(seed))
        assert not (mask & ~sparse).any()
        assert abs(int(mask.sum()) - round(0.3 * int(sparse.sum()))) <= 5
    assert not block_masks(torch.zeros(16, dtype=torch.bool), 4, 0.5, torch.Generator()).any()


def test_about_mask_probability_of_samples_get_masks(dataset: RegionStoreDataset) -> None:
    views = ViewDataset(dataset, ViewConfig(mask_probability=0.5), seed=3)
    masked = []
    for epoch in range(50):
        views.set_epoch(epoch)
        for index in range(len(views)):
            item = views[index]
            assert not (item["mask_l0"] & ~item["global_l0_valid"]).any()
            assert not (item["mask_l1"] & ~item["global_l1_valid"]).any()
            masked.append(bool(item["mask_l0"].any()))
    assert abs(np.mean(masked) - 0.5) < 0.1  # 400 draws: sd 0.025
    never = make_views(dataset[0], ViewConfig(mask_probability=0.0), torch.Generator())
    assert not never["mask_l0"].any() and not never["mask_l1"].any()


def test_views_depend_only_on_seed_epoch_and_index(dataset: RegionStoreDataset) -> None:
    def draw(seed: int, epoch: int, index: int) -> dict[str, torch.Tensor]:
        views = ViewDataset(dataset, seed=seed)
        views.set_epoch(epoch)
        return views[index]

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[key], b[key]) for key in a)

    assert same(draw(0, 1, 2), draw(0, 1, 2))
    assert not same(draw(0, 1, 2), draw(0, 2, 2))
    assert not same(draw(0, 1, 2), draw(1, 1, 2))

    views = ViewDataset(dataset, seed=5)
    views.set_epoch(2)
    in_workers = list(DataLoader(views, batch_size=3, num_workers=2, collate_fn=collate_regions))
    in_main = list(DataLoader(views, batch_size=3, num_workers=0, collate_fn=collate_regions))
    assert all(same(a, b) for a, b in zip(in_workers, in_main, strict=True))


def test_collate_shapes(dataset: RegionStoreDataset) -> None:
    batch = collate_regions([ViewDataset(dataset)[index] for index in range(3)])
    shapes = {key: tuple(value.shape) for key, value in batch.items()}
    assert shapes == {
        "global_l0": (3, 256, 8),
        "global_l0_pos": (3, 256, 2),
        "global_l0_valid": (3, 256),
        "global_l1": (3, 16, 8),
        "global_l1_pos": (3, 16, 2),
        "global_l1_valid": (3, 16),
        "mask_l0": (3, 256),
        "mask_l1": (3, 16),
        "local_l0": (3, 4, 36, 8),
        "local_l0_pos": (3, 4, 36, 2),
        "local_l0_valid": (3, 4, 36),
        "local_l1": (3, 4, 9, 8),
        "local_l1_pos": (3, 4, 9, 2),
        "local_l1_valid": (3, 4, 9),
        "kd": (3, 256, 6),
        "index": (3,),
    }
    assert batch["global_l0_pos"].dtype == torch.long and batch["mask_l0"].dtype == torch.bool
    assert torch.equal(batch["index"], torch.arange(3))


def test_split_holdout_keeps_slides_whole_and_is_deterministic(dataset: RegionStoreDataset) -> None:
    train, held = split_holdout(dataset, 0.3, seed=0)
    assert (train, held) == split_holdout(dataset, 0.3, seed=0)
    assert sorted(train + held) == list(range(len(dataset)))
    train_slides = {dataset.region_ids[i][0] for i in train}
    held_slides = {dataset.region_ids[i][0] for i in held}
    assert len(held_slides) == 1 and len(train_slides) == 2 and not train_slides & held_slides
    held_by_seed = {frozenset(split_holdout(dataset, 0.3, seed=seed)[1]) for seed in range(20)}
    assert len(held_by_seed) > 1
    assert split_holdout(dataset, 0.9, seed=0)[0]  # at least one training slide
    assert split_holdout(dataset, 0.0, seed=0) == (list(range(len(dataset))), [])
