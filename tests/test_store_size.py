"""Stores sized for a cohort: float16 features within their rounding of float32, background tiles almost free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pathme.data.bags import read_slide_bag
from pathme.data.distill_dataset import RegionStoreDataset
from pathme.engines.extraction import CohortExtractor
from pathme.store import read_store_attrs
from pathme.synthetic.stores import write_store

# float16 keeps 11 significant bits: rounding to nearest moves a normal number by at most 2**-11 of itself and a
# subnormal one (below 2**-14) by at most 2**-25; the margin covers float32 results that differ in the last bit
FLOAT16_RTOL, FLOAT16_ATOL = 2**-11 * 1.001, 2**-25


def assert_within_float16_rounding(stored: np.ndarray, exact: np.ndarray) -> None:
    assert np.isfinite(stored).all() and np.isfinite(exact).all()
    np.testing.assert_allclose(stored, exact, rtol=FLOAT16_RTOL, atol=FLOAT16_ATOL)


def test_float16_stores_change_mil_and_distillation_inputs_by_their_rounding_only(demo_cohort, demo_features, tmp_path):
    manifest = pd.read_csv(demo_cohort / "manifest.csv").head(3)
    manifest["path"] = [str(demo_cohort / path) for path in manifest["path"]]  # relative to the cohort's folder
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    exact_dir = tmp_path / "float32"
    summary = CohortExtractor(
        tmp_path / "manifest.csv", exact_dir, ["tiny-vit", "tiny-cnn"], batch_size=64, feature_dtype="float32"
    ).run()
    assert (summary["status"] == "done").all(), summary
    for slide in manifest["slide_id"]:
        assert read_store_attrs(demo_features / f"{slide}.h5")["feature_dtype"] == "float16"
        assert read_store_attrs(exact_dir / f"{slide}.h5")["feature_dtype"] == "float32"
        for source in ("tiny-vit", "tiny-cnn"):  # ABMIL's input: the bag of valid 20x tiles
            stored, exact = (
                read_slide_bag(demo_features / f"{slide}.h5", source),
                read_slide_bag(exact_dir / f"{slide}.h5", source),
            )
            np.testing.assert_array_equal(stored.coords, exact.coords)
            assert (stored.features.dtype, exact.features.dtype) == (np.float16, np.float32)
            assert_within_float16_rounding(stored.features.astype(np.float32), exact.features)
    patients = manifest["patient_id"].tolist()
    stored_items = RegionStoreDataset(demo_features, "tiny-vit", "tiny-cnn", patients=patients)
    exact_items = RegionStoreDataset(exact_dir, "tiny-vit", "tiny-cnn", patients=patients)
    assert stored_items.region_ids == exact_items.region_ids and len(exact_items) > 0
    for index in range(len(exact_items)):  # distillation's input: expert A at 20x and 5x, expert B's KD target
        stored, exact = stored_items[index], exact_items[index]
        for key in ("l0_valid", "l1_valid"):
            assert (stored[key] == exact[key]).all()
        for key in ("l0", "l1", "kd"):
            assert stored[key].dtype == exact[key].dtype
            assert_within_float16_rounding(stored[key].numpy(), exact[key].numpy())


def float16_bytes_of_valid_features(regions: list[dict], dims: dict[str, int]) -> int:
    """What the valid tiles' features of every expert and scale take as float16: L0, L1 and the L2 tile."""
    tiles = sum(int(r["valid_l0"].sum() + r["valid_l1"].sum()) + 1 for r in regions)
    return tiles * sum(dims.values()) * 2


def test_a_store_costs_about_the_float16_size_of_its_valid_tiles(tmp_path: Path):
    dims = {"uni": 1024, "gigapath": 1536}  # the paper's experts' dimensions
    rules = ["full", "sparse", "empty", "sparse", "empty", "empty"]  # a known valid fraction: 1/3 of the 20x tiles
    regions = write_store(tmp_path, "s1", "p1", rules, dims)
    valid_l0 = sum(int(r["valid_l0"].sum()) for r in regions)
    assert abs(valid_l0 / (256 * len(rules)) - 1 / 3) < 0.03
    size = (tmp_path / "s1.h5").stat().st_size
    uncompressed = len(rules) * (256 + 16 + 1) * sum(dims.values()) * 2
    assert size <= 1.2 * float16_bytes_of_valid_features(regions, dims)
    assert size < 0.45 * uncompressed  # background rows cost next to nothing
