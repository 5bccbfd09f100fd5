"""The demo cohort: deterministic, readable by both backends, with the planted signal where planted.csv says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hed

from pathme.data.cohort import (
    REGION,
    TILE,
    assign_patients,
    draw_labels,
    draw_survival,
    harvest_tiles,
    make_demo_cohort,
    plan_slides,
    tumour_stains,
    tumour_tiles,
)
from pathme.wsi.slide import Slide

L1 = 4  # level 1 of the demo pyramids is a downsample by 4


@pytest.fixture(scope="module")
def cohort(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two slides (one positive, one negative patient; one SVS, one TIFF), seed 0; returns the manifest."""
    return make_demo_cohort(tmp_path_factory.mktemp("cohort") / "demo", cmu_slide, n_slides=2, seed=0)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _slides(manifest: Path) -> dict[str, Path]:
    return {row["slide_id"]: manifest.parent / row["path"] for row in _rows(manifest)}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(
    cohort: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    first = _files(cohort.parent)
    assert sorted(first) == [
        "labels.csv",
        "manifest.csv",
        "planted.csv",
        "slides/demo_000.svs",
        "slides/demo_001.tiff",
    ]
    assert _files(make_demo_cohort(tmp_path / "again", cmu_slide, n_slides=2, seed=0).parent) == first
    other = _files(make_demo_cohort(tmp_path / "other", cmu_slide, n_slides=2, seed=1).parent)
    assert other.keys() == first.keys()
    for name in ("labels.csv", "slides/demo_000.svs", "slides/demo_001.tiff"):
        assert other[name] != first[name], name


def test_manifest_paths_resolve_relative_to_the_manifest(cohort: Path) -> None:
    rows = _rows(cohort)
    assert list(rows[0]) == ["slide_id", "path", "patient_id"]
    for row in rows:
        assert not Path(row["path"]).is_absolute()
        assert (cohort.parent / row["path"]).is_file()


def test_slides_open_with_both_backends_and_agree(cohort: Path) -> None:
    for slide_id, path in _slides(cohort).items():
        opened = [Slide.open(path, backend=backend) for backend in ("cucim", "openslide")]
        for slide in opened:
            assert slide.mpp == pytest.approx(0.5), slide_id
            assert len(slide.level_sizes) == 3
            width, height = slide.size
            assert min(width, height) >= 2 * REGION
            assert width % REGION and height % REGION  # edge regions are partial
            assert slide.level_sizes[2] == (round(width / 16), round(height / 16))
        patches = [slide.read_level(0, REGION, REGION, 512, 512).astype(int) for slide in opened]
        assert np.abs(patches[0] - patches[1]).mean() < 1.0


def test_tissue_covers_about_a_third_to_two_thirds(cohort: Path) -> None:
    for slide_id, path in _slides(cohort).items():
        slide = Slide.open(path)
        thumbnail = slide.read_level(2, 0, 0, *slide.level_sizes[2])
        glass = (thumbnail.min(axis=-1) > 225).mean()
        assert 0.3 <= glass <= 0.7, (slide_id, glass)


def test_planted_blocks_are_inside_and_aligned_to_the_l1_grid(cohort: Path) -> None:
    slides = _slides(cohort)
    planted = _rows(cohort.parent / "planted.csv")
    assert planted
    for row in planted:
        v = {key: int(value) for key, value in row.items() if key not in ("slide_id", "grade")}
        assert 0.0 <= float(row["grade"]) <= 1.0
        assert v["region_x"] % REGION == 0 and v["region_y"] % REGION == 0
        assert v["l0_row0"] % 4 == 0 and v["l0_col0"] % 4 == 0  # L1 tiles are 4 x 4 L0 tiles
        assert v["l0_row0"] + v["l0_rows"] <= 16 and v["l0_col0"] + v["l0_cols"] <= 16
        assert (v["x"], v["y"]) == (v["region_x"] + v["l0_col0"] * TILE, v["region_y"] + v["l0_row0"] * TILE)
        assert (v["width"], v["height"]) == (v["l0_cols"] * TILE, v["l0_rows"] * TILE)
        width, height = Slide.open(slides[row["slide_id"]]).size
        assert v["x"] + v["width"] <= width and v["y"] + v["height"] <= height


def test_planted_block_is_far_more_hematoxylin_heavy_than_normal_tissue(cohort: Path) -> None:
    """Statistic: mean hematoxylin optical density (skimage rgb2hed, read at level 1) per 256-px L0 tile. The
    block's mean is >= 1.8x that of the slide's other tissue tiles (about 2.5-2.9x over seeds 0-6), and at least
    90% of its tiles exceed the 95th percentile of the normal tiles (all of them over seeds 0-6)."""
    slides = _slides(cohort)
    for row in _rows(cohort.parent / "planted.csv"):
        slide = Slide.open(slides[row["slide_id"]])
        width, height = slide.level_sizes[1]
        image = slide.read_level(1, 0, 0, width // 64 * 64, height // 64 * 64)
        tile_h = _tile_means(rgb2hed(image)[..., 0])
        tissue = _tile_means((image.min(axis=-1) < 200).astype(float)) > 0.8
        in_block = np.zeros_like(tissue)
        row0, col0 = int(row["y"]) // TILE, int(row["x"]) // TILE
        in_block[row0 : row0 + int(row["l0_rows"]), col0 : col0 + int(row["l0_cols"])] = True
        normal = tile_h[tissue & ~in_block]
        block = tile_h[in_block]
        assert block.mean() >= 1.8 * normal.mean(), (block.mean(), normal.mean())
        assert (block > np.percentile(normal, 95)).mean() >= 0.9


def _tile_means(values: np.ndarray, side: int = TILE // L1) -> np.ndarray:
    """Mean of each side x side tile of a 2-D map (one L0 tile at level 1)."""
    rows, cols = values.shape[0] // side, values.shape[1] // side
    return values[: rows * side, : cols * side].reshape(rows, side, cols, side).mean(axis=(1, 3))


def test_positive_patients_have_planted_slides_and_negatives_none(cohort: Path) -> None:
    labels = {row["patient_id"]: int(row["label"]) for row in _rows(cohort.parent / "labels.csv")}
    patient_of = {row["slide_id"]: row["patient_id"] for row in _rows(cohort)}
    planted_patients = {patient_of[row["slide_id"]] for row in _rows(cohort.parent / "planted.csv")}
    assert sorted(labels.values()) == [0, 1]
    assert planted_patients == {patient for patient, label in labels.items() if label == 1}


def test_labels_balance_and_survival_depends_on_label_and_grade() -> None:
    rng = np.random.default_rng(0)
    labels = draw_labels(2000, rng)
    grades = np.where(labels == 1, rng.uniform(0, 1, size=2000), 0.0)
    times, events = draw_survival(labels, grades, rng)
    assert labels.sum() == 1000
    assert times[labels == 1].mean() < 0.5 * times[labels == 0].mean()
    positive = (labels == 1) & (events == 1)
    assert np.corrcoef(grades[positive], np.log(times[positive]))[0, 1] < -0.8  # higher grade, shorter survival
    assert 0.6 <= events.mean() <= 0.9
    assert (times > 0).all()


def test_a_higher_grade_plants_a_darker_texture(cmu_slide: Path) -> None:
    stains = tumour_stains(harvest_tiles(cmu_slide))
    hematoxylin = [rgb2hed(tumour_tiles(stains, grade))[..., 0].mean() for grade in (0.0, 0.5, 1.0)]
    assert hematoxylin[0] < hematoxylin[1] < hematoxylin[2]


def test_every_fourth_patient_has_two_slides_with_the_pattern_in_at_least_one() -> None:
    patients = assign_patients(9)
    assert patients == [0, 1, 2, 3, 3, 4, 5, 6, 7]
    plan = plan_slides(patients, np.ones(8, dtype=np.int64), np.full(8, 0.5), np.random.default_rng(0))
    assert plan[3].planted and plan[3].patient_id == plan[4].patient_id == "P003"
    assert [s.flavour for s in plan[:2]] == ["svs", "tiff"]
    negatives = plan_slides(patients, np.zeros(8, dtype=np.int64), np.zeros(8), np.random.default_rng(0))
    assert not any(s.planted for s in negatives) and plan[3].grade == 0.5


def test_inputs_are_validated(cmu_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_slides"):
        make_demo_cohort(tmp_path, cmu_slide, n_slides=1)
    with pytest.raises(FileNotFoundError, match=r"missing\.svs"):
        make_demo_cohort(tmp_path, tmp_path / "missing.svs")
