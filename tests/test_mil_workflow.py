"""Cross-validated attention MIL on the demo cohort: it learns the planted signal, attends to it, stays
reproducible, and refuses bad labels before training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathme.cli import main
from pathme.data.label_format import LabelError
from pathme.engines.mil import TrainSettings
from pathme.engines.mil_predict import MILPredict
from pathme.engines.mil_workflow import MILRun

pytestmark = pytest.mark.slow  # minutes of CPU: cross-validated MIL runs on the demo cohort


FAST = TrainSettings(lr=1e-3)  # the demo cohort is small: a higher rate than the bundle default (2e-4)
HEATMAP_MPP = 8.0  # the demo's slides as the demo draws them: 0.2 s a heatmap, not the default's 0.9 s
TOP_K = {"pathme": 4, "tiny-vit": 64}  # a planted block is 2 x 2 5x tiles = 8 x 8 20x tiles
MIN_TOP_IN_PLANTED = 0.5  # and at least 4x chance (the planted block's share of the slide's tiles, ~0.11)


def _run(features: Path, labels: Path, output: Path, source: str, **overrides) -> MILRun:
    settings = {"feature_source": source, "num_folds": 5, "settings": FAST, "heatmap_mpp": HEATMAP_MPP} | overrides
    return MILRun(features, labels, "label", output, **settings)


def _top_fraction_in_planted(heatmaps: Path, planted: pd.DataFrame, k: int) -> tuple[float, float]:
    """Over slides with a planted block: the share of the k most attended cells of the GeoJSON (one per tile the
    heatmap shows, clipped to the slide) inside it, and that share for cells drawn at random (chance)."""
    inside, chance = [], []
    for row in planted.itertuples():
        features = json.loads((heatmaps / f"{row.slide_id}_attention.geojson").read_text())["features"]
        tiles = []
        for feature in features:
            x0, y0 = np.array(feature["geometry"]["coordinates"][0]).min(axis=0)
            tiles.append((x0, y0, feature["properties"]["measurements"]["attention"]))
        hit = [row.x <= x < row.x + row.width and row.y <= y < row.y + row.height for x, y, _ in tiles]
        order = np.argsort([-t[2] for t in tiles], kind="stable")[:k]
        inside.append(np.mean([hit[i] for i in order]))
        chance.append(np.mean(hit))
    return float(np.mean(inside)), float(np.mean(chance))


@pytest.mark.parametrize("source", ["pathme", "tiny-vit"])
def test_cross_validation_learns_the_planted_signal_and_attends_to_it(
    source: str, demo_cohort: Path, demo_features: Path, demo_tokens: Path, tmp_path: Path
) -> None:
    features = demo_tokens if source == "pathme" else demo_features
    summary = _run(features, demo_cohort / "labels.csv", tmp_path, source).run().set_index("metric")
    assert summary.loc["auroc", "mean"] >= 0.9
    folds = pd.read_csv(tmp_path / "folds.csv", index_col="patient_id")
    assert ((folds == "test").sum(axis=1) == 1).all()  # every patient in exactly one test fold
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["fold"]) == [0, 1, 2, 3, 4] and (tmp_path / "fold_4" / "model.pt").is_file()
    slides = pd.read_csv(demo_cohort / "manifest.csv")["slide_id"]
    for slide in slides:
        assert (tmp_path / "heatmaps" / f"{slide}_attention.png").is_file()
    planted = pd.read_csv(demo_cohort / "planted.csv")
    inside, chance = _top_fraction_in_planted(tmp_path / "heatmaps", planted, TOP_K[source])
    auroc = summary.loc["auroc", "mean"]
    print(f"{source}: auroc {auroc:.3f}, top-{TOP_K[source]} in planted {inside:.3f}, chance {chance:.3f}")
    assert inside >= MIN_TOP_IN_PLANTED and inside >= 4 * chance, (inside, chance)


@pytest.mark.parametrize("source", ["pathme", "tiny-vit"])
def test_shuffled_labels_leave_nothing_to_learn(
    source: str, demo_cohort: Path, demo_features: Path, demo_tokens: Path, tmp_path: Path
) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    labels["label"] = np.random.default_rng(0).permutation(labels["label"].to_numpy())
    labels.to_csv(tmp_path / "shuffled.csv", index=False)
    features = demo_tokens if source == "pathme" else demo_features
    summary = _run(features, tmp_path / "shuffled.csv", tmp_path / "out", source, heatmaps=False).run()
    auroc = summary.set_index("metric").loc["auroc", "mean"]
    print(f"{source}, shuffled labels: auroc {auroc:.3f}")
    assert auroc <= 0.65


def test_same_seed_same_folds_and_metrics(demo_cohort: Path, demo_tokens: Path, tmp_path: Path) -> None:
    settings = TrainSettings(max_epochs=3, min_epochs=3)
    outputs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for output, seed in zip(outputs, [0, 0, 1], strict=True):
        _run(
            demo_tokens, demo_cohort / "labels.csv", output, "pathme", seed=seed, settings=settings, heatmaps=False
        ).run()
    read = {name: [pd.read_csv(o / name) for o in outputs] for name in ("folds.csv", "results.csv")}
    for frames in read.values():
        pd.testing.assert_frame_equal(frames[0], frames[1])
    assert not read["folds.csv"][0].equals(read["folds.csv"][2])


def test_survival_cross_validation_ranks_patients(demo_cohort: Path, demo_tokens: Path, tmp_path: Path) -> None:
    run = MILRun(demo_tokens, demo_cohort / "labels.csv", "survival", tmp_path, settings=FAST, heatmap_mpp=HEATMAP_MPP)
    summary = run.run().set_index("metric")
    print(f"pathme, survival: c-index {summary.loc['c_index', 'mean']:.3f}")
    assert list(summary.index) == ["c_index"] and summary.loc["c_index", "mean"] >= 0.75
    assert list((tmp_path / "heatmaps").glob("*.png"))  # survival models get heatmaps too
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert {"risk", "time", "event", "fold"} <= set(predictions.columns)


def test_bad_labels_fail_before_any_training(demo_cohort: Path, demo_features: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(demo_cohort / "labels.csv")
    labels.loc[0, "label"] = None
    labels.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LabelError, match="bad.csv"):
        _run(demo_features, tmp_path / "bad.csv", tmp_path / "out", "tiny-vit").run()
    assert not (tmp_path / "out").exists()
    assert (
        main(
            [
                "mil",
                "--dataset-dir",
                str(demo_features),
                "--labels",
                str(tmp_path / "bad.csv"),
                "--task",
                "label",
                "--feature-source",
                "tiny-vit",
                "--output-dir",
                str(tmp_path / "cli"),
            ]
        )
        == 2
    )


def test_bundle_commands_train_then_predict_new_slides(demo_cohort: Path, demo_tokens: Path, tmp_path: Path) -> None:
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "pathme_mil" / "configs"
    train = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "train.json")]
    args = ["--dataset_dir", str(demo_tokens), "--labels", str(demo_cohort / "labels.csv"), "--task", "label"]
    done = subprocess.run(
        [*train, *args, "--output_dir", str(tmp_path / "cv"), "--max_epochs", "3", "--heatmap_mpp", str(HEATMAP_MPP)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "auroc" in done.stdout and list((tmp_path / "cv" / "heatmaps").glob("*.geojson"))
    command = ["mil", "--dataset-dir", str(demo_tokens), "--labels", str(demo_cohort / "labels.csv")]
    command += ["--heatmap-mpp", str(HEATMAP_MPP)]
    assert main([*command, "--task", "label", "--output-dir", str(tmp_path / "cli"), "--max-epochs", "3"]) == 0
    for name in ("folds.csv", "results.csv", "predictions.csv"):  # the command wraps the bundle: same outputs
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cli" / name), pd.read_csv(tmp_path / "cv" / name))
    # evaluate is inference.json with labels (there is no evaluate.json), so it needs them
    evaluate = [
        "mil",
        "evaluate",
        "--dataset-dir",
        str(demo_tokens),
        "--models-dir",
        str(tmp_path / "cv"),
        "--no-heatmaps",
    ]
    assert main([*evaluate, "--output-dir", str(tmp_path / "eval")]) == 2 and not (tmp_path / "eval").exists()
    assert main([*evaluate, "--output-dir", str(tmp_path / "eval"), "--labels", str(demo_cohort / "labels.csv")]) == 0
    evaluated = pd.read_csv(tmp_path / "eval" / "metrics.csv")
    assert "fold-model ensemble auroc over" in (tmp_path / "eval" / "report.html").read_text()
    assert list(evaluated["model"]) == [f"fold_{k}" for k in range(5)] + ["ensemble"]
    assert evaluated["auroc"].between(0, 1).all() and (tmp_path / "eval" / "metrics.csv").is_file()
    predicted = MILPredict(demo_tokens, tmp_path / "cv", tmp_path / "new", heatmap_mpp=HEATMAP_MPP).run()
    assert len(predicted) == len(pd.read_csv(demo_cohort / "labels.csv"))
    assert (tmp_path / "new" / "predictions.csv").is_file() and list((tmp_path / "new" / "heatmaps").glob("*.png"))
