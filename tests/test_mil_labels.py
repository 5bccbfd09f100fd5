"""Labels and splits: every bad input is refused before training with the file, column, ids and fix named;
generated folds are patient-level, stratified, seeded and read back unchanged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathme.data.folds import check_folds, folds_to_frame, make_folds, write_folds
from pathme.data.inclusion import cohort_line, cohort_table
from pathme.data.label_format import Fold, LabelError, Labels
from pathme.data.label_spelling import spelling_key
from pathme.data.labels import load_labels


def _csv(tmp_path: Path, frame: pd.DataFrame | str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    return path


def _cohort(n: int = 30, classes: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> pd.DataFrame:
    """Patients P000.. with a class, a survival time and an event."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:03d}" for i in range(n)],
            "subtype": [classes[i % len(classes)] for i in range(n)],
            "time": np.round(rng.uniform(1, 100, n), 1),
            "event": [int(i % 3 != 0) for i in range(n)],
        }
    )


def _features(frame: pd.DataFrame, tokens: int = 52) -> dict[str, int]:
    return dict.fromkeys(frame["patient_id"], tokens)


def _labels(tmp_path: Path, frame: pd.DataFrame, task: str = "subtype") -> Labels:
    return load_labels(_csv(tmp_path, frame), task, _features(frame))


# --- loading -------------------------------------------------------------------------------------------------


def test_classification_table_codes_sorted_classes(tmp_path):
    frame = _cohort(6).iloc[::-1]
    labels = _labels(tmp_path, frame)
    assert labels.classes == ["a", "b", "c"]
    assert labels.table.index.name == "patient_id"
    assert list(labels.table.index) == sorted(frame["patient_id"])
    assert labels.table["target"].tolist() == [0, 1, 2, 0, 1, 2]
    assert labels.strata().tolist() == [0, 1, 2, 0, 1, 2]
    assert not labels.is_survival and labels.folds is None


def test_integer_classes_sort_as_text(tmp_path):
    frame = pd.DataFrame({"patient_id": ["A", "B", "C"], "grade": [2, 10, 2]})
    labels = _labels(tmp_path, frame, "grade")
    assert labels.classes == ["10", "2"]
    assert labels.table["target"].tolist() == [1, 0, 1]


def test_survival_table(tmp_path):
    frame = _cohort(6)
    labels = _labels(tmp_path, frame, "survival")
    assert labels.is_survival and labels.classes == []
    assert list(labels.table.columns) == ["time", "event"]
    assert labels.table["time"].dtype == np.float64 and labels.table["event"].dtype == np.int64
    np.testing.assert_allclose(labels.table["time"], frame["time"])
    assert labels.strata().tolist() == frame["event"].tolist()


def test_slide_rows_map_to_patients(tmp_path):
    frame = pd.DataFrame({"slide_id": ["s1", "s2", "s3", "s4"], "subtype": ["x", "x", "y", "y"]})
    slides = {"s1": "P1", "s2": "P1", "s3": "P2", "s4": "P3"}
    labels = load_labels(_csv(tmp_path, frame), "subtype", {"P1": 10, "P2": 5, "P3": 7}, slides)
    assert list(labels.table.index) == ["P1", "P2", "P3"]
    assert labels.table["target"].tolist() == [0, 1, 1]


def test_unlabelled_stores_are_dropped_with_a_warning(tmp_path, caplog):
    frame = _cohort(6)
    features = {**_features(frame), "EXTRA1": 9, "EXTRA2": 0}
    with caplog.at_level(logging.WARNING, logger="pathme.data.labels"):
        labels = load_labels(_csv(tmp_path, frame), "subtype", features)
    assert "EXTRA1" not in labels.table.index
    assert "2 patient(s) with feature stores have no label row" in caplog.text
    assert "'EXTRA1', 'EXTRA2'" in caplog.text


# --- refusals: each names the file, the column/rows and the fix ---------------------------------------------


def test_missing_id_column(tmp_path):
    path = _csv(tmp_path, "case,subtype\nA,x\n")
    with pytest.raises(
        LabelError,
        match=r"labels .*labels.csv: no id column; add a 'patient_id' \(or 'slide_id'\) column "
        r"\(columns present: case, subtype\)",
    ):
        load_labels(path, "subtype", {"A": 1})


def test_missing_task_column_lists_the_columns(tmp_path):
    path = _csv(tmp_path, _cohort(6))
    with pytest.raises(
        LabelError,
        match=r"labels.csv: missing column\(s\) 'label' for task 'label'; .*set the task to one of the columns "
        r"present .*\(columns present: patient_id, subtype, time, event\)",
    ):
        load_labels(path, "label", _features(_cohort(6)))


@pytest.mark.parametrize("drop", ["time", "event"])
def test_survival_needs_time_and_event(tmp_path, drop):
    frame = _cohort(6).drop(columns=drop)
    with pytest.raises(LabelError, match=rf"missing column\(s\) '{drop}' for task 'survival'; survival needs"):
        _labels(tmp_path, frame, "survival")


def test_duplicate_patient_rows(tmp_path):
    frame = pd.concat([_cohort(6), _cohort(6).iloc[[2]]])
    with pytest.raises(
        LabelError, match=r"duplicate 'patient_id' in row\(s\) 4, 8 \(patient_id 'P002', 'P002'\); keep"
    ):
        _labels(tmp_path, frame)


def test_duplicate_slide_rows(tmp_path):
    path = _csv(tmp_path, "slide_id,subtype\ns1,x\ns2,y\ns1,x\n")
    with pytest.raises(LabelError, match=r"duplicate 'slide_id' in row\(s\) 2, 4 .*one row per slide"):
        load_labels(path, "subtype", {"P1": 1, "P2": 1}, {"s1": "P1", "s2": "P2"})


def test_empty_and_nan_labels_name_the_rows(tmp_path):
    path = _csv(tmp_path, "patient_id,subtype\nA,x\nB,\nC,y\nD,NaN\n")
    with pytest.raises(
        LabelError, match=r"column 'subtype' is empty \(or NaN\) in row\(s\) 3, 5 \(patient_id 'B', 'D'\); fill in"
    ):
        load_labels(path, "subtype", dict.fromkeys("ABCD", 1))


@pytest.mark.parametrize(
    "variants, shown",
    [
        (["LUAD", "LUSC"] * 5 + ["luad", "luad"], r"'LUAD' \(5 rows\) also written 'luad' in row\(s\) 12, 13"),
        (["0", "1"] * 5 + ["1.0", "1.0"], r"'1' \(5 rows\) also written '1.0' in row\(s\) 12, 13"),
        (["Stage II", "Stage I"] * 5 + ["stage  ii", "Stage II "], r"'Stage II' \(6 rows\) also written 'stage  ii'"),
        (["02", "1"] * 5 + ["2", "2.0"], r"'02' \(5 rows\) also written '2' in row\(s\) 12 .*, '2.0' in row\(s\) 13"),
    ],
    ids=["case", "float", "spaces", "leading-zero"],
)
def test_one_class_written_two_ways_is_refused_naming_each_spelling(tmp_path, variants, shown):
    """t02: 'LUAD' and 'luad' (or '1' and '1.0') would train as three classes; refused before training with every
    spelling, its rows and the fix (the class column is compared as the file writes it, spaces trimmed)."""
    frame = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(12)], "subtype": variants})
    with pytest.raises(
        LabelError, match=rf"column 'subtype' writes one class several ways.*{shown}.*write each class one way"
    ):
        _labels(tmp_path, frame)


def test_spelling_key_ignores_case_spaces_and_number_format_only():
    assert spelling_key("LUAD") == spelling_key("luad") == spelling_key("Luad")
    assert spelling_key("Stage  II") == spelling_key("stage ii")
    assert spelling_key("1") == spelling_key("1.0") == spelling_key("01") == spelling_key("1e0")
    assert len({spelling_key(v) for v in ("LUAD", "LUSC", "1", "10", "Stage I", "Stage II", "inf", "nan")}) == 8


def test_leave_out_missing_lists_patients_without_a_usable_store_instead_of_refusing(tmp_path):
    frame = _cohort(8, classes=("a", "b"))
    features = {**_features(frame.iloc[:6]), "P005": 0, "EXTRA": 4}  # P006, P007: no store; P005: no valid token
    path = _csv(tmp_path, frame)
    with pytest.raises(
        LabelError, match=r"no feature store; .* leave such patients out of the run \(pathme mil --leave-out-missing"
    ):
        load_labels(path, "subtype", features)
    labels = load_labels(
        path, "subtype", features, empty_reasons={"P005": "slide s5: no tissue"}, leave_out_missing=True
    )
    assert list(labels.table.index) == ["P000", "P001", "P002", "P003", "P004"]
    left = labels.left_out.set_index("patient_id")["reason"].to_dict()
    assert left == {
        "P005": "no valid token (slide s5: no tissue)",
        "P006": "no store",
        "P007": "no store",
        "EXTRA": "no label row",
    }
    slides = {f"s{i}": f"P{i:03d}" for i in range(6)} | {"s5b": "P005", "x1": "EXTRA"}
    cohort = cohort_table(labels, slides).set_index("patient_id")
    assert list(cohort.columns) == ["subtype", "slides", "slide_ids", "status", "reason"]
    assert cohort.loc["P000"].tolist() == ["a", 1, "s0", "included", ""]
    assert cohort.loc["P005"].tolist() == ["b", 2, "s5;s5b", "left out", "no valid token (slide s5: no tissue)"]
    assert cohort.loc["P007"].tolist() == ["b", 0, "", "left out", "no store"]
    assert cohort.loc["EXTRA"].tolist() == ["", 1, "x1", "left out", "no label row"]
    assert cohort_line(labels, cohort.reset_index()) == (
        "5 patients with 5 slides; classes 'a' 3, 'b' 2; 4 left out: 'P005' (no valid token), 'P006' (no store), "
        "'P007' (no store), 'EXTRA' (no label row)"
    )


def test_a_labelled_slide_without_a_store_is_left_out_as_a_row_of_its_own(tmp_path):
    path = _csv(tmp_path, "slide_id,subtype\ns1,x\ns2,y\ns3,x\ns9,y\n")
    slides = {"s1": "P1", "s2": "P2", "s3": "P3"}
    with pytest.raises(LabelError, match=r"name slides with no feature store; .*--leave-out-missing"):
        load_labels(path, "subtype", dict.fromkeys(["P1", "P2", "P3"], 1), slides)
    labels = load_labels(path, "subtype", dict.fromkeys(["P1", "P2", "P3"], 1), slides, leave_out_missing=True)
    assert list(labels.table.index) == ["P1", "P2", "P3"]
    cohort = cohort_table(labels, slides)
    assert cohort.iloc[-1].tolist() == ["", "y", 0, "s9", "left out", "slide 's9' has no store"]
    assert cohort_line(labels, cohort).endswith("1 left out: slide 's9' (slide 's9' has no store)")


def test_patient_ids_written_another_way_in_the_stores_are_named(tmp_path):
    """A labels file saved by Excel ('12' for '0012') or typed in another case: the refusal names the store's id."""
    frame = pd.DataFrame({"patient_id": ["0011", "12", "tcga-ab-1"], "subtype": ["x", "y", "x"]})
    features = {"0011": 5, "0012": 5, "TCGA-AB-1": 5}
    with pytest.raises(
        LabelError, match=r"\(the stores write '12' as '0012', 'tcga-ab-1' as 'TCGA-AB-1': one id written two ways\?\)"
    ):
        load_labels(_csv(tmp_path, frame), "subtype", features)


@pytest.mark.parametrize("time", ["0", "-3", "soon", "inf"])
def test_survival_time_must_be_positive_number(tmp_path, time):
    path = _csv(tmp_path, f"patient_id,time,event\nA,10,1\nB,{time},0\n")
    with pytest.raises(
        LabelError, match=rf"column 'time' must be a number > 0 in row\(s\) 3 \(patient_id 'B'\) .*{time}"
    ):
        load_labels(path, "survival", dict.fromkeys("AB", 1))


@pytest.mark.parametrize("event", ["2", "yes", "-1", "0.5"])
def test_survival_event_must_be_0_or_1(tmp_path, event):
    path = _csv(tmp_path, f"patient_id,time,event\nA,10,1\nB,5,{event}\n")
    with pytest.raises(LabelError, match=r"column 'event' must be 0 \(censored\) or 1 \(event\) in row\(s\) 3"):
        load_labels(path, "survival", dict.fromkeys("AB", 1))


def test_unknown_patients_are_refused(tmp_path):
    frame = _cohort(6)
    features = _features(frame.iloc[:4])
    with pytest.raises(
        LabelError, match=r"row\(s\) 6, 7 \(patient_id 'P004', 'P005'\) name patients with no feature store; extract"
    ):
        load_labels(_csv(tmp_path, frame), "subtype", features)


def test_unknown_slides_are_refused(tmp_path):
    path = _csv(tmp_path, "slide_id,subtype\ns1,x\ns9,y\n")
    with pytest.raises(LabelError, match=r"row\(s\) 3 \(slide_id 's9'\) name slides with no feature store"):
        load_labels(path, "subtype", {"P1": 1}, {"s1": "P1"})


def test_slide_rows_need_the_slide_mapping(tmp_path):
    path = _csv(tmp_path, "slide_id,subtype\ns1,x\ns2,y\n")
    with pytest.raises(LabelError, match="keyed by 'slide_id' but no slide -> patient mapping"):
        load_labels(path, "subtype", {"P1": 1, "P2": 1})


def test_patients_without_features_are_refused(tmp_path):
    frame = _cohort(6)
    features = {**_features(frame), "P001": 0}
    with pytest.raises(LabelError, match=r"row\(s\) 3 \(patient_id 'P001'\) name patients whose stores hold no valid"):
        load_labels(_csv(tmp_path, frame), "subtype", features)


def test_slides_of_a_patient_must_agree(tmp_path):
    path = _csv(tmp_path, "slide_id,subtype\ns1,x\ns2,y\ns3,y\n")
    slides = {"s1": "P1", "s2": "P1", "s3": "P2"}
    with pytest.raises(
        LabelError, match=r"slides of one patient disagree on column\(s\) 'subtype' \(patient 'P1': slides 's1', 's2'\)"
    ):
        load_labels(path, "subtype", {"P1": 1, "P2": 1}, slides)


def test_a_single_class_is_refused(tmp_path):
    path = _csv(tmp_path, "patient_id,subtype\nA,x\nB,x\n")
    with pytest.raises(LabelError, match="column 'subtype' holds a single class 'x'; a classifier needs at least 2"):
        load_labels(path, "subtype", dict.fromkeys("AB", 1))


def test_survival_without_events_is_refused(tmp_path):
    frame = _cohort(6).assign(event=0)
    with pytest.raises(LabelError, match="column 'event' holds no event"):
        _labels(tmp_path, frame, "survival")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(LabelError, match="nope.csv: file not found"):
        load_labels(tmp_path / "nope.csv", "subtype", {})


# --- generated folds ---------------------------------------------------------------------------------------


def _class_counts(labels: Labels, ids: list[str]) -> np.ndarray:
    return np.bincount(labels.table.loc[ids, "target"], minlength=len(labels.classes))


def test_folds_partition_patients_and_balance_classes(tmp_path):
    frame = _cohort(47, classes=("a", "b", "c", "d"))
    labels = _labels(tmp_path, frame)
    folds = make_folds(labels, num_folds=5, seed=3)
    assert [fold.index for fold in folds] == list(range(5))
    tests = [patient for fold in folds for patient in fold.test]
    assert sorted(tests) == sorted(labels.table.index)  # each patient in exactly one test fold
    for fold in folds:
        assert set(fold.train) | set(fold.val) | set(fold.test) == set(labels.table.index)
        assert not set(fold.train) & set(fold.test) and not set(fold.val) & set(fold.test)
        assert not set(fold.train) & set(fold.val) and fold.val
        assert all(split == sorted(split) for split in (fold.train, fold.val, fold.test))
    per_fold = np.stack([_class_counts(labels, fold.test) for fold in folds])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all()
    sizes = [len(fold.test) for fold in folds]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_seeded(tmp_path):
    labels = _labels(tmp_path, _cohort(40))
    assert make_folds(labels, 4, seed=7) == make_folds(labels, 4, seed=7)
    assert make_folds(labels, 4, seed=7) != make_folds(labels, 4, seed=8)


def test_validation_is_drawn_from_training_patients_stratified(tmp_path):
    labels = _labels(tmp_path, _cohort(60))
    for fold in make_folds(labels, 3, seed=0, val_fraction=0.25):
        pool = len(fold.train) + len(fold.val)
        assert abs(len(fold.val) - 0.25 * pool) <= len(labels.classes)
        assert (_class_counts(labels, fold.val) >= 1).all()


def test_survival_folds_are_stratified_by_event(tmp_path):
    labels = _labels(tmp_path, _cohort(31), "survival")
    folds = make_folds(labels, 5, seed=1)
    events = [int(labels.table.loc[fold.test, "event"].sum()) for fold in folds]
    assert max(events) - min(events) <= 1 and min(events) >= 1


def test_too_few_patients_of_a_class_says_lower_num_folds(tmp_path):
    frame = pd.DataFrame({"patient_id": [f"P{i}" for i in range(10)], "subtype": ["a"] * 7 + ["b"] * 3})
    labels = _labels(tmp_path, frame)
    with pytest.raises(LabelError, match=r"too few patients for 4 folds \('b' has 3\); .*lower num_folds to at most 3"):
        make_folds(labels, 4, seed=0)


def test_too_few_events_says_lower_num_folds(tmp_path):
    frame = _cohort(12).assign(event=[1, 1] + [0] * 10)
    labels = _labels(tmp_path, frame, "survival")
    with pytest.raises(LabelError, match=r"\('patients with an event' has 2\); .*lower num_folds to at most 2"):
        make_folds(labels, 3, seed=0)


def test_write_folds_round_trips_through_load_labels(tmp_path):
    frame = _cohort(30)
    labels = _labels(tmp_path, frame)
    folds = make_folds(labels, 3, seed=5)
    written = write_folds(folds, tmp_path / "out" / "folds.csv")
    assert written == tmp_path / "out" / "folds.csv" and not list(written.parent.glob(".*"))
    merged = frame.merge(pd.read_csv(written, dtype=str), on="patient_id")
    assert list(merged.columns[-3:]) == ["fold_0", "fold_1", "fold_2"]
    again = load_labels(_csv(tmp_path, merged, "with_folds.csv"), "subtype", _features(frame))
    assert again.folds == folds
    pd.testing.assert_frame_equal(folds_to_frame(again.folds), folds_to_frame(folds))


# --- folds from the file -----------------------------------------------------------------------------------


def test_a_fold_column_gives_test_folds_and_seeded_validation(tmp_path):
    frame = _cohort(24).assign(fold=[(i // 3) % 3 for i in range(24)])
    labels = _labels(tmp_path, frame)
    assert [fold.test for fold in labels.folds] == [
        sorted(frame.loc[frame["fold"] == index, "patient_id"]) for index in range(3)
    ]
    assert all(fold.val and not set(fold.val) & set(fold.train) for fold in labels.folds)
    assert _labels(tmp_path, frame).folds == labels.folds


def test_a_class_absent_from_a_file_fold_is_refused(tmp_path):
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(8)],
            "subtype": ["a", "a", "a", "a", "b", "b", "b", "b"],
            "fold": [0, 0, 1, 1, 0, 0, 0, 0],
        }
    )
    with pytest.raises(LabelError, match=r"fold 0 has no patient of class\(es\) 'b' in its train split; use fewer"):
        _labels(tmp_path, frame)


def test_a_class_absent_from_a_test_split_is_refused(tmp_path):
    frame = _cohort(6, classes=("a", "b"))
    splits = {
        "fold_0": ["test", "test", "val", "train", "train", "val"],
        "fold_1": ["train", "val", "test", "train", "test", "test"],
    }
    frame = frame.assign(**splits)
    frame.loc[[0, 1], "subtype"] = "a"
    with pytest.raises(LabelError, match=r"fold 0 has no patient of class\(es\) 'b' in its test split"):
        _labels(tmp_path, frame)


def test_bad_split_values_are_named(tmp_path):
    frame = _cohort(6).assign(fold_0=["train", "val", "test", "TRAIN", "holdout", "test"])
    with pytest.raises(LabelError, match=r"column 'fold_0' must be train, val or test in row\(s\) 6 .*'holdout'"):
        _labels(tmp_path, frame)


def test_both_fold_kinds_are_refused(tmp_path):
    frame = _cohort(6).assign(fold=0, fold_0="train")
    with pytest.raises(LabelError, match="both a 'fold' column and fold_0; keep one kind"):
        _labels(tmp_path, frame)


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ([0, 0, 0, 0, 0, 0], "every patient in test fold 0; number k >= 2"),
        ([0, 0, 2, 2, 0, 2], r"no patient in test fold\(s\) \[1\] of 0 .. 2; number the test folds without gaps"),
        ([0, 1, 0, 1, 99, 1], r"column 'fold' must be the test fold number 0 .. k-1 in row\(s\) 6 .*'99'"),
        ([0, 1, 0, 1, "x", 1], r"column 'fold' must be the test fold number 0 .. k-1 in row\(s\) 6 .*'x'"),
    ],
)
def test_bad_fold_numbers_are_named(tmp_path, folds, message):
    with pytest.raises(LabelError, match=message):
        _labels(tmp_path, _cohort(6).assign(fold=folds))


def _labels_for_checks(tmp_path: Path, task: str = "subtype") -> Labels:
    return _labels(
        tmp_path,
        pd.DataFrame(
            {"patient_id": list("ABCDEFGH"), "subtype": list("xyxyxyxy"), "time": range(1, 9), "event": [1, 0] * 4}
        ),
        task,
    )


def test_check_folds_refuses_a_patient_in_two_test_folds(tmp_path):
    labels = _labels_for_checks(tmp_path)
    folds = [Fold(0, ["E", "F"], ["G", "H"], ["A", "B"]), Fold(1, ["C", "D"], ["E", "F"], ["A", "B", "G", "H"])]
    with pytest.raises(LabelError, match=r"patients in the test splits of folds 0 and 1: 'A', 'B'; put each"):
        check_folds(labels, folds)


def test_check_folds_refuses_train_and_test_overlap(tmp_path):
    labels = _labels_for_checks(tmp_path)
    with pytest.raises(LabelError, match=r"fold 0 has patients in both train and test: 'A'; give each"):
        check_folds(labels, [Fold(0, ["A", "C", "D"], ["E", "F"], ["A", "B"])])


def test_check_folds_refuses_an_empty_validation_split(tmp_path):
    labels = _labels_for_checks(tmp_path)
    with pytest.raises(LabelError, match="fold 0 has no validation patients"):
        check_folds(labels, [Fold(0, ["C", "D", "E", "F"], [], ["A", "B"])])


def test_check_folds_refuses_a_test_split_without_events(tmp_path):
    labels = _labels_for_checks(tmp_path, "survival")
    with pytest.raises(LabelError, match="fold 0 has no patient with an event in its test split"):
        check_folds(labels, [Fold(0, ["A", "C"], ["E", "G"], ["B", "D"])])


def test_check_folds_refuses_unknown_patients(tmp_path):
    labels = _labels_for_checks(tmp_path)
    with pytest.raises(LabelError, match="fold 0 names patients without a usable label row: 'Z'"):
        check_folds(labels, [Fold(0, ["C", "D"], ["E", "F"], ["A", "B", "Z"])])
