"""The demo cohort: deterministic, readable by both backends, with the planted signal where planted.csv says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hed

from pathme.demo.cohort_generator import (
    REGION,
    TILE,
    PlannedSlide,
    _full_cells,
    draw_slide,
    harvest_tiles,
    make_demo_cohort,
    plan_slides,
    split_pools,
    tissue_types,
    tumour_stains,
    tumour_tiles,
)
from pathme.demo.patient_truth import PatientTruth, assign_patients, draw_labels, draw_survival
from pathme.metrics.classification import auroc
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
        "labels_context.csv",
        "manifest.csv",
        "planted.csv",
        "slides/demo_000.svs",
        "slides/demo_001.tiff",
    ]
    assert _files(make_demo_cohort(tmp_path / "again", cmu_slide, n_slides=2, seed=0).parent) == first
    other = _files(make_demo_cohort(tmp_path / "other", cmu_slide, n_slides=2, seed=1).parent)
    assert other.keys() == first.keys()
    for name in ("labels.csv", "labels_context.csv", "slides/demo_000.svs", "slides/demo_001.tiff"):
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
    stains = tumour_stains(split_pools(harvest_tiles(cmu_slide))[1])
    hematoxylin = [rgb2hed(tumour_tiles(stains, grade))[..., 0].mean() for grade in (0.0, 0.5, 1.0)]
    assert hematoxylin[0] < hematoxylin[1] < hematoxylin[2]


def test_every_fourth_patient_has_two_slides_with_the_pattern_in_at_least_one() -> None:
    patients = assign_patients(9)
    assert patients == [0, 1, 2, 3, 3, 4, 5, 6, 7]
    positive = PatientTruth(np.ones(8, dtype=np.int64), np.full(8, 0.5), np.ones(8), np.ones(8, dtype=np.int64))
    negative = PatientTruth(np.zeros(8, dtype=np.int64), np.zeros(8), np.ones(8), np.ones(8, dtype=np.int64))
    plan = plan_slides(patients, positive, negative, np.random.default_rng(0))
    assert plan[3].planted and plan[3].patient_id == plan[4].patient_id == "P003"
    assert [s.flavour for s in plan[:2]] == ["svs", "tiff"]
    assert plan[3].grade == 0.5 and not any(s.organised for s in plan)
    negatives = plan_slides(patients, negative, positive, np.random.default_rng(0))
    assert not any(s.planted for s in negatives)
    assert all(s.organised and s.context_grade == 0.5 for s in negatives)  # every slide of a context positive


def test_inputs_are_validated(cmu_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_slides"):
        make_demo_cohort(tmp_path, cmu_slide, n_slides=1)
    with pytest.raises(FileNotFoundError, match=r"missing\.svs"):
        make_demo_cohort(tmp_path, tmp_path / "missing.svs")


def test_context_classes_have_the_same_tile_counts_and_organised_patches_grow_with_grade() -> None:
    """By construction: exactly half the full tissue cells are dense in either class (clipped edge cells by a fair
    coin); organised slides put them in patches, the larger the grade (same-type 4-neighbours), scattered ones
    do not."""
    rng = np.random.default_rng(0)
    tissue = np.ones((40, 36), dtype=bool)
    tissue[5:9, 3:30] = False
    full = _full_cells(36 * TILE - 100, 40 * TILE - 100)
    same = {}
    for organised, grade in ((False, 0.0), (True, 0.0), (True, 1.0)):
        dense = tissue_types(tissue, full, organised, grade, rng)
        assert not (dense & ~tissue).any()
        assert dense[tissue & full].sum() == (tissue & full).sum() // 2
        inner = dense[:39, :35] & tissue[:39, :35] & tissue[1:40, :35] & tissue[:39, 1:36]
        pairs = tissue[:39, :35] & tissue[1:40, :35] & tissue[:39, 1:36]
        agree = (dense[:39, :35] == dense[1:40, :35]) & (dense[:39, :35] == dense[:39, 1:36])
        same[organised, grade] = agree[pairs].mean()
        assert inner.any()
    assert same[False, 0.0] < 0.35 < same[True, 0.0] < same[True, 1.0]


def _tile_features(image: np.ndarray) -> dict[int, np.ndarray]:
    """Features of every all-tissue 20x tile (key 1) and L1 (5x) tile (key 4, 4 x 4 cells) of a drawn slide,
    [N, 4] each: mean R, G, B and the sd of the brightness of the tile's 4 x 4 sub-blocks (for a 20x tile its
    64-px blocks, for an L1 tile its 16 cells). A cell is tissue when its mean is below 225 (glass is ~240)."""
    rows, cols = image.shape[0] // TILE, image.shape[1] // TILE
    quarter = TILE // 4
    strips = image[: rows * TILE, : cols * TILE].reshape(rows * 4, quarter, -1).sum(axis=1, dtype=np.uint32)
    blocks = strips.reshape(rows * 4, cols * 4, quarter, 3).sum(axis=2) / quarter**2  # [rows*4, cols*4, 3] means
    cells = blocks.reshape(rows, 4, cols, 4, 3).mean(axis=(1, 3))
    tissue = cells.mean(axis=-1) < 225
    return {side: _group_features(units, tissue, side) for side, units in ((1, blocks), (4, cells))}


def _group_features(units: np.ndarray, tissue: np.ndarray, side: int) -> np.ndarray:
    """[N, 4] features of each 4 x 4 group of ``units`` [H, W, 3] whose side x side cells are all tissue."""
    height, width = units.shape[0] // 4, units.shape[1] // 4
    groups = units[: height * 4, : width * 4].reshape(height, 4, width, 4, 3).swapaxes(1, 2)
    keep = tissue[: height * side, : width * side].reshape(height, side, width, side).all(axis=(1, 3))
    kept = groups[keep].reshape(-1, 16, 3)
    return np.column_stack([kept.mean(axis=1), kept.mean(axis=-1).std(axis=1)])


def test_context_label_is_at_chance_from_single_20x_tiles_and_read_from_5x_tiles(cmu_slide: Path) -> None:
    """A tile-level classifier (a linear discriminant on stain-normalised tile features: each slide's features
    centred, plus each tile's distance from the slide's median brightness; trained on 4 slides, scored on 4
    others, and the other way round) is at chance on single 20x tiles of the context task and reads the label
    from L1 (5x) tiles: the label is in the arrangement, not in any tile. Over 20 slides (seeds 1, 2, one half
    scored) the same classifier scored 0.498 and 0.500 on 20x tiles, 0.81 and 0.83 on L1 tiles."""
    pools = split_pools(harvest_tiles(cmu_slide))
    rng = np.random.default_rng(0)
    features: dict[int, list] = {1: [], 4: []}
    for index in range(8):
        organised = index % 2 == 1
        slide = PlannedSlide(f"s{index}", "P", "s.svs", "svs", False, 0.0, organised, float(rng.uniform()))
        image, _ = draw_slide(slide, pools, pools[1][:0], rng)
        for side, values in _tile_features(image).items():
            brightness = values[:, :3].mean(axis=1)
            centred = np.column_stack([values - values.mean(axis=0), np.abs(brightness - np.median(brightness))])
            features[side].append((centred, np.full(len(values), int(organised))))
    scores = {
        side: np.mean([_discriminant_auroc(slides[:4], slides[4:]), _discriminant_auroc(slides[4:], slides[:4])])
        for side, slides in features.items()
    }
    assert abs(scores[1] - 0.5) < 0.05, scores
    assert scores[4] > 0.75, scores


def _discriminant_auroc(train: list[tuple[np.ndarray, np.ndarray]], test: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """AUROC on ``test`` of Fisher's linear discriminant fitted on ``train``, each a list of (features, labels)."""
    train_x, train_y = (np.concatenate(part) for part in zip(*train, strict=True))
    test_x, test_y = (np.concatenate(part) for part in zip(*test, strict=True))
    means = [train_x[train_y == label].mean(axis=0) for label in (0, 1)]
    score = test_x @ np.linalg.solve(np.cov(train_x, rowvar=False), means[1] - means[0])
    return auroc(test_y, np.column_stack([1 - score, score]))
