"""Every MIL aggregator through the whole run (issue 26): cross-validation for classification and survival (NLL
and Cox), evaluation and prediction with its fold models, heatmaps or the reason there are none, the linear probe,
the small-validation rule, slide and patient embeddings, and the refusals that come before any work."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathme.cli import main
from pathme.data.bags import BagIndex
from pathme.engines.embeddings import write_embeddings
from pathme.engines.mil import TrainSettings, load_fold_model
from pathme.engines.mil_predict import MILPredict
from pathme.engines.mil_workflow import MILRun
from pathme.networks import AGGREGATORS
from pathme.networks.mil import aggregators
from pathme.synthetic.stores import write_store

MEMBERS = list(AGGREGATORS)
PATIENTS = 12
QUICK = TrainSettings(max_epochs=2, min_epochs=1, min_val_patients=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """12 one-slide patients with random 8-d 'exp' features (two regions each), class and survival labels."""
    root = tmp_path_factory.mktemp("members")
    for i in range(PATIENTS):
        write_store(root / "stores", f"s{i}", f"P{i}", ["full", "sparse"], {"exp": 8})
    ids = [f"P{i}" for i in range(PATIENTS)]
    pd.DataFrame({"patient_id": ids, "label": ["AB"[i % 2] for i in range(PATIENTS)]}).to_csv(
        root / "labels.csv", index=False
    )
    times = [3, 8, 12, 4, 9, 15, 7, 5, 20, 11, 6, 14]
    events = [1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1]
    pd.DataFrame({"patient_id": ids, "time": times, "event": events}).to_csv(root / "survival.csv", index=False)
    return root


def _run(cohort: Path, output: Path, model: str, task: str = "label", **options) -> MILRun:
    labels = cohort / ("survival.csv" if task == "survival" else "labels.csv")
    options = {
        "num_folds": 2,
        "settings": QUICK,
        "heatmap_mpp": 8.0,
        "hidden": 32,
    } | options  # 32: TransMIL's 512 is slow
    return MILRun(cohort / "stores", labels, task, output, "exp", model=model, **options)


@pytest.mark.parametrize("model", MEMBERS)
def test_every_member_cross_validates_and_its_fold_models_evaluate_again(cohort, tmp_path, model) -> None:
    summary = _run(cohort, tmp_path / "cv", model).run().set_index("metric")
    assert summary.loc["auroc", "folds_total"] == 2
    loaded, task, source = load_fold_model(tmp_path / "cv" / "fold_0" / "model.pt")
    assert type(loaded) is AGGREGATORS[model].cls and (task.classes, source) == (("A", "B"), "exp")
    slides = pd.read_csv(tmp_path / "cv" / "slide_summary.csv", keep_default_na=False)
    assert len(slides) == PATIENTS
    if AGGREGATORS[model].cls.instance_scores:  # the test slides' images do not exist: the GeoJSON is drawn
        assert set(slides["status"]) == {"geojson only"} and all(Path(p).is_file() for p in slides["geojson"])
    else:
        assert set(slides["status"]) == {"no instance scores"}
        assert set(slides["note"]) == {AGGREGATORS[model].cls.no_instance_scores}
    evaluated = MILPredict(cohort / "stores", tmp_path / "cv", tmp_path / "eval", cohort / "labels.csv").run()
    assert list(evaluated["model"]) == ["fold_0", "fold_1", "ensemble"]
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert len(predictions) == PATIENTS
    np.testing.assert_allclose(predictions[["prob_A", "prob_B"]].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("loss", ["nll", "cox"])
@pytest.mark.parametrize("model", MEMBERS)
def test_every_member_learns_survival_with_the_nll_and_cox(cohort, tmp_path, model, loss) -> None:
    settings = dataclasses.replace(QUICK, batch_size=4 if loss == "cox" else 1)
    run = _run(cohort, tmp_path, model, "survival", survival_loss=loss, num_bins=2, settings=settings, heatmaps=False)
    summary = run.run().set_index("metric")
    assert list(summary.index) == ["c_index"] and summary.loc["c_index", "folds_total"] == 2
    _, task, _ = load_fold_model(tmp_path / "fold_1" / "model.pt")
    assert task.survival_loss == loss and task.num_outputs == (1 if loss == "cox" else 2)
    risks = pd.read_csv(tmp_path / "predictions.csv")["risk"]
    assert len(risks) == PATIENTS and np.isfinite(risks).all()


@pytest.mark.parametrize("task", ["label", "survival"])
def test_the_linear_probe_scores_the_same_folds_into_the_same_tables(cohort, tmp_path, task) -> None:
    probe = _run(cohort, tmp_path / "probe", "linear-probe", task).run().set_index("metric")
    abmil = _run(cohort, tmp_path / "abmil", "abmil", task, heatmaps=False).run().set_index("metric")
    assert list(probe.index) == list(abmil.index)
    folds = [pd.read_csv(tmp_path / run / "folds.csv") for run in ("probe", "abmil")]
    pd.testing.assert_frame_equal(*folds)  # same seed: the same patients in every split
    results = pd.read_csv(tmp_path / "probe" / "results.csv")
    assert set(results["chosen_by"]) == {"fit on train + validation"}
    assert not list((tmp_path / "probe").glob("fold_*/model.pt"))
    slides = pd.read_csv(tmp_path / "probe" / "slide_summary.csv")
    assert set(slides["status"]) == {"no instance scores"} and "linear probe" in slides["note"][0]
    predictions = pd.read_csv(tmp_path / "probe" / "predictions.csv")
    if task == "label":
        np.testing.assert_allclose(predictions[["prob_A", "prob_B"]].sum(axis=1), 1.0)
    else:
        assert np.isfinite(predictions["risk"]).all()


def test_a_validation_split_too_small_to_choose_on_keeps_the_last_epoch(cohort, tmp_path, caplog) -> None:
    """Two folds of 12 patients validate on 1-2 patients: below min_val_patients (10 by default) no epoch is
    chosen on their loss; each fold trains max_epochs and keeps the last weights, and says so."""
    settings = TrainSettings(max_epochs=3, min_epochs=1, patience=1)
    with caplog.at_level(logging.INFO, logger="pathme.engines.mil_workflow"):
        _run(cohort, tmp_path / "small", "abmil", settings=settings, heatmaps=False).run()
    results = pd.read_csv(tmp_path / "small" / "results.csv")
    assert (results["best_epoch"] == 3).all()
    assert all(text.startswith("last epoch (validation split of ") for text in results["chosen_by"])
    said = [r.getMessage() for r in caplog.records if "min_val_patients" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 of 2 folds validate on fewer than min_val_patients 10 patients")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    chosen = dataclasses.replace(settings, min_val_patients=1)
    _run(cohort, tmp_path / "chosen", "abmil", settings=chosen, heatmaps=False).run()
    assert set(pd.read_csv(tmp_path / "chosen" / "results.csv")["chosen_by"]) == {"validation loss"}


def test_a_member_that_cannot_learn_survival_says_so_before_training(cohort, tmp_path, monkeypatch) -> None:
    only = dataclasses.replace(AGGREGATORS["abmil"], name="classes-only", tasks=(aggregators.CLASSIFICATION,))
    monkeypatch.setitem(aggregators._REGISTRY, "classes-only", only)
    with pytest.raises(ValueError, match=r"MIL model 'classes-only' cannot learn survival; those that can: abmil, "):
        _run(cohort, tmp_path / "out", "classes-only", "survival").run()
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_is_one_line_naming_the_members(cohort, tmp_path, caplog) -> None:
    command = ["mil", "--dataset-dir", str(cohort / "stores"), "--labels", str(cohort / "labels.csv")]
    assert main([*command, "--output-dir", str(tmp_path / "out"), "--model", "clam"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"unknown MIL model 'clam': choose one of {', '.join(AGGREGATORS)}, linear-probe"]
    assert not (tmp_path / "out").exists()


def test_slide_and_patient_embeddings_hold_token_means_and_fold_model_embeddings(cohort, tmp_path) -> None:
    _run(cohort, tmp_path / "cv", "abmil", heatmaps=False).run()
    path = write_embeddings(cohort / "stores", tmp_path / "emb", models_dir=tmp_path / "cv")
    index = BagIndex(cohort / "stores", "exp")
    model, _, _ = load_fold_model(tmp_path / "cv" / "fold_1" / "model.pt")
    with h5py.File(path, "r") as file:
        assert file.attrs["feature_source"] == "exp" and '"exp weights"' in file.attrs["feature_provenance"]
        slides, patients = file["slides"], file["patients"]
        ids = slides["ids"].asstr()[:]
        assert set(ids) == {f"s{i}" for i in range(PATIENTS)}
        assert slides["mean"].shape == (PATIENTS, 8) and slides["fold_1"].shape == (PATIENTS, 32)
        row = list(ids).index("s3")
        bag = index.patient_bag("P3")[0].features
        np.testing.assert_allclose(slides["mean"][row], bag.astype(np.float64).mean(axis=0), rtol=1e-5)
        with torch.no_grad():
            expected = model(torch.from_numpy(bag.astype(np.float32)))["embedding"][0].numpy()
        np.testing.assert_allclose(slides["fold_1"][row], expected, rtol=1e-4, atol=1e-6)
        assert slides["patient_ids"].asstr()[row] == "P3" and slides["tokens"][row] == len(bag)
        assert patients["mean"].shape == (PATIENTS, 8)
        frame = pd.DataFrame(patients["mean"][:], index=patients["ids"].asstr()[:])  # the linear-probe user's read
        assert frame.loc["P3"].to_numpy() == pytest.approx(slides["mean"][row], rel=1e-5)
    command = ["embeddings", "--dataset-dir", str(cohort / "stores"), "--feature-source", "exp"]
    assert main([*command, "--output-dir", str(tmp_path / "plain")]) == 0
    alone = tmp_path / "plain" / "embeddings.h5"
    with h5py.File(alone, "r") as file:
        assert set(file["slides"]) == {"ids", "patient_ids", "slide_digests", "tokens", "mean"}
    with pytest.raises(ValueError, match=r"the fold models in .*cv take exp features, not 'exp@5x'"):
        write_embeddings(cohort / "stores", tmp_path / "x", "exp@5x", tmp_path / "cv")


def test_pathme_aggregators_lists_every_member_with_its_defaults(capsys) -> None:
    assert main(["aggregators"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in printed[1 : len(AGGREGATORS) + 1]}
    assert list(rows) == list(AGGREGATORS)
    assert "1e-05" in rows["clam-sb"] and "without the instance loss" in rows["clam-sb"]
    assert rows["transmil"].split()[-4] == "none" and rows["dsmil"].split()[-4] == "yes"
