"""The cohort a MIL run evaluates is stated before training, never taken silently from loose input (issue 23,
kind 3): a class written two ways is named on the console, the run writes cohort.csv and says it in one line, and
labelled patients without a usable store are refused unless ``--leave-out-missing`` leaves them out by name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pathme.cli import main
from pathme.synthetic.stores import write_store

DIMS = {"exp": 8}


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    """Patients P0..P8, one slide each (s<i>); P8's slide has no valid tile."""
    folder = tmp_path / "stores"
    folder.mkdir()
    for index in range(9):
        write_store(folder, f"s{index}", f"P{index}", ["empty"] if index == 8 else ["full", "sparse"], DIMS)
    return folder


def _labels(path: Path, values: dict[str, str]) -> Path:
    pd.DataFrame({"patient_id": list(values), "label": list(values.values())}).to_csv(path, index=False)
    return path


def _mil(stores: Path, labels: Path, output: Path, *extra: str) -> int:
    common = [
        "--feature-source",
        "exp",
        "--task",
        "label",
        "--num-folds",
        "2",
        "--max-epochs",
        "1",
        "--min-epochs",
        "1",
    ]
    args = ["mil", "--dataset-dir", str(stores), "--labels", str(labels), "--output-dir", str(output), *common]
    return main([*args, "--device", "cpu", "--no-heatmaps", *extra])


@pytest.mark.parametrize("variant, usual", [("luad", "LUAD"), ("1.0", "1")])
def test_a_class_written_two_ways_is_named_on_the_console_before_training(
    stores: Path, tmp_path: Path, capsys, variant: str, usual: str
) -> None:
    """t02: 'LUAD'/'luad' or '1'/'1.0' would silently train a 3-class model; the command refuses, naming both."""
    other = "LUSC" if usual == "LUAD" else "0"
    values = {f"P{i}": [usual, other][i % 2] for i in range(6)} | {"P6": variant, "P7": variant}
    assert _mil(stores, _labels(tmp_path / "labels.csv", values), tmp_path / "out") == 2
    console = capsys.readouterr().err
    assert f"ERROR pathme: labels {tmp_path / 'labels.csv'}: column 'label' writes one class several ways" in console
    assert f"{usual!r} (3 rows) also written {variant!r} in row(s) 8, 9 (patient_id 'P6', 'P7')" in console
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_a_run_states_its_cohort_and_leaves_out_missing_patients_only_when_asked(
    stores: Path, tmp_path: Path, capsys
) -> None:
    """Labelled P9 and P10 have no store and P8's store holds no valid tile; P7 has a store but no label row. By
    default the run is refused (saying how to go on); with --leave-out-missing the rest is evaluated, the left-out
    patients named on the console and in cohort.csv."""
    values = {f"P{i}": "AB"[i % 2] for i in range(7)} | {"P8": "A", "P9": "B", "P10": "A"}
    labels = _labels(tmp_path / "labels.csv", values)
    assert _mil(stores, labels, tmp_path / "refused") == 2
    assert (
        "name patients with no feature store; extract their slides or remove those rows, or leave such patients "
        in (capsys.readouterr().err)
    )
    assert _mil(stores, labels, tmp_path / "out", "--leave-out-missing") == 0
    console = capsys.readouterr().err
    assert (
        "cohort of labels.csv: 7 patients with 7 slides; classes 'A' 4, 'B' 3; 4 left out: 'P8' (no valid token), "
        f"'P9' (no store), 'P10' (no store), 'P7' (no label row) (every patient in {tmp_path / 'out' / 'cohort.csv'})"
    ) in console
    assert "WARNING pathme.data.labels: labels" in console and "3 labelled patient(s) left out" in console
    cohort = pd.read_csv(tmp_path / "out" / "cohort.csv", keep_default_na=False, dtype=str).set_index("patient_id")
    assert list(cohort.columns) == ["label", "slides", "slide_ids", "status", "reason"]
    assert (cohort.loc[[f"P{i}" for i in range(7)], "status"] == "included").all()
    assert cohort.loc["P8"].tolist() == ["A", "1", "s8", "left out", "no valid token (slide s8: no valid tile)"]
    assert cohort.loc["P10"].tolist() == ["A", "0", "", "left out", "no store"]
    assert cohort.loc["P7"].tolist() == ["", "1", "s7", "left out", "no label row"]
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str)
    assert sorted(predictions["patient_id"]) == sorted(f"P{i}" for i in range(7))

    evaluate = ["mil", "evaluate", "--dataset-dir", str(stores), "--models-dir", str(tmp_path / "out")]
    evaluate += ["--labels", str(labels), "--output-dir", str(tmp_path / "eval"), "--device", "cpu", "--no-heatmaps"]
    assert main(evaluate) == 2  # the same refusal, the same way out
    assert main([*evaluate, "--leave-out-missing"]) == 0
    evaluated = pd.read_csv(tmp_path / "eval" / "cohort.csv", keep_default_na=False, dtype=str)
    assert evaluated.equals(pd.read_csv(tmp_path / "out" / "cohort.csv", keep_default_na=False, dtype=str))
