"""The Deploy app's DICOM: its results (:mod:`pathme.deploy.dicom_results`), a TID 1500 SR of the prediction and bulk
annotations of the attention about a DICOM WSI series made from the sample slide, read back with highdicom and
checked by dicom3tools' ``dciodvfy`` where it is installed (scripts/install_test_packages.sh); and its input, a
study's series in one folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_series import make_ct, rewrite, to_dicom

from pathme import __version__
from pathme.deploy.dicom_results import ANN_FILE, SR_FILE, level0_image, write_dicom_results
from pathme.deploy.pipeline import find_slides, split_source
from pathme.wsi.readers import slide_name
from pathme.wsi.slide import Slide

#: dciodvfy 1.00~20220618 (Debian 12) flags Common Z Coordinate Value in every 2D annotation group, present or not:
#: its rule verifies the attribute under the condition "coordinate type is not 3D" without testing its presence
DCIODVFY_FALSE_POSITIVE = "Only valid for AnnotationCoordinateType of 3D - attribute <CommonZCoordinateValue> = <>"

PREDICTIONS = {
    "label": {
        "type": "classification",
        "prediction": "1",
        "probabilities": {"0": 0.12345678901234568, "1": 0.8765432109876543},
        "heatmap_geojson": "label_attention.geojson",
    },
    "survival": {"type": "survival", "risk": -1.2345678901234567, "higher_risk": "shorter time"},
}
MODELS = {
    "app_models": {"name": "test models", "version": "1.2.3"},
    "mil": {
        task: {"model": "abmil", "feature_source": "pathme", "fold_models": {"fold_0": "ab" * 32, "fold_1": "cd" * 32}}
        for task in PREDICTIONS
    },
}


def square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


@pytest.fixture(scope="module")
def results(cmu_slide: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A series of the sample slide and its results folder: the report's predictions and a heatmap GeoJSON of five
    cells (one clipped at the slide's right edge, 2220 px)."""
    root = tmp_path_factory.mktemp("dicom_results")
    series = to_dicom(cmu_slide, root / "series")
    folder = root / "out"
    folder.mkdir()
    cells = [square(256.0 * i, 512.0, 256.0) for i in range(4)] + [[[2048, 0], [2220, 0], [2220, 256], [2048, 256]]]
    cells[-1].append(cells[-1][0])
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"measurements": {}}}
        for ring in cells
    ]
    for i, feature in enumerate(features):
        feature["properties"]["measurements"]["attention"] = 0.0123456789 + 0.1 * i
    geojson = {"type": "FeatureCollection", "features": features}
    (folder / "label_attention.geojson").write_text(json.dumps(geojson))
    written = write_dicom_results(series, folder, PREDICTIONS, MODELS)
    assert written == {"sr": SR_FILE, "annotations": ANN_FILE}
    return series, folder, geojson


def test_the_sr_reads_back_as_the_prediction_about_the_slide(results) -> None:
    series, folder, _ = results
    image = level0_image(series)
    sr = hd.sr.srread(folder / SR_FILE)
    assert sr.StudyInstanceUID == image.StudyInstanceUID and sr.PatientID == image.PatientID
    assert sr.SeriesInstanceUID != image.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == image.SeriesInstanceUID
    assert image.FrameOfReferenceUID in str(sr)  # the image library entry of the slide
    groups = {group.tracking_identifier: group for group in sr.content.get_image_measurement_groups()}
    assert set(groups) == set(PREDICTIONS)
    for task, group in groups.items():
        assert group.source_images[0].referenced_sop_instance_uid == image.SOPInstanceUID
        values = {m.name.value: m.value for m in group.get_measurements()}
        if task == "survival":
            assert values == {"survival=risk": PREDICTIONS[task]["risk"]}  # exact: the SR keeps the float64 value
            assert not group.get_qualitative_evaluations()
        else:
            assert values == {f"label=p({k})": v for k, v in PREDICTIONS[task]["probabilities"].items()}
            [evaluation] = group.get_qualitative_evaluations()
            assert evaluation.value.value == "label=1"
        texts = [element.value for element in group[0].iterall() if element.keyword == "TextValue"]
        algorithm = [f"pathme {task}", __version__, "aggregator=abmil", "feature_source=pathme"] + [
            f"fold_{k} sha256={digest * 32}" for k, digest in ((0, "ab"), (1, "cd"))
        ]  # TID 4019 algorithm identification: name, version, parameters
        assert texts[0] == task and texts[1 : 1 + len(algorithm)] == algorithm  # tracking identifier, then the model


def test_the_annotations_hold_the_heatmap_cells_and_their_attention(results) -> None:
    series, folder, geojson = results
    image = level0_image(series)
    ann = hd.ann.annread(folder / ANN_FILE)
    assert ann.StudyInstanceUID == image.StudyInstanceUID
    assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert ann.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    [group] = ann.get_annotation_groups()  # the survival task has no heatmap
    assert group.label == "label attention"
    polygons = group.get_graphic_data("2D")
    want = [np.asarray(f["geometry"]["coordinates"][0][:4], np.float32) for f in geojson["features"]]
    assert len(polygons) == len(want) and all(np.array_equal(p, w) for p, w in zip(polygons, want, strict=True))
    names, values, units = group.get_measurements()
    assert [name.value for name in names] == ["attention"] and units[0].value == "1"
    attention = [f["properties"]["measurements"]["attention"] for f in geojson["features"]]
    np.testing.assert_allclose(values[:, 0], attention, rtol=1e-7)  # float32, as the standard stores them


@pytest.mark.parametrize("name", [SR_FILE, ANN_FILE])
def test_dciodvfy_finds_no_error(results, name: str) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools is not installed: sudo scripts/install_test_packages.sh")
    _, folder, _ = results
    done = subprocess.run(["dciodvfy", str(folder / name)], capture_output=True, text=True)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    if name == ANN_FILE:
        assert "CommonZCoordinateValue" not in pydicom.dcmread(folder / name).AnnotationGroupSequence[0]
        errors = [line for line in errors if DCIODVFY_FALSE_POSITIVE not in line]
    assert errors == []


def test_a_series_without_a_slide_image_is_refused_naming_the_folder(results, tmp_path: Path) -> None:
    series, _, _ = results
    copy = tmp_path / "other"
    shutil.copytree(series, copy)
    rewrite(copy, make_ct)
    with pytest.raises(ValueError, match=f"{copy}: no VL Whole Slide Microscopy image"):
        level0_image(copy)


def test_the_instances_of_a_study_in_one_folder_are_split_into_their_series(
    results, cmu_slide, tmp_path, monkeypatch
) -> None:
    """A study as a PACS export or the Informatics Gateway writes it: one folder, the instances of two series, a
    series of only a label image and a file that is no DICOM; the app reads each series with a pyramid as a slide,
    named by its Series Instance UID."""
    series, _, _ = results
    other = to_dicom(cmu_slide, tmp_path / "other")
    study = tmp_path / "study"
    study.mkdir()
    for instance in [*series.glob("*.dcm"), *other.glob("*.dcm")]:
        shutil.copy(instance, study / instance.name)
    (study / "notes.dcm").write_text("not an instance")
    label = pydicom.dcmread(next(series.glob("*.dcm")))  # a series of only a label image is no slide
    label.SeriesInstanceUID, label.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    label.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    label.save_as(study / "label.dcm")
    uids = sorted(pydicom.dcmread(next(folder.glob("*.dcm"))).SeriesInstanceUID for folder in (series, other))
    monkeypatch.chdir(tmp_path)
    slides = find_slides(study, Path("work"))  # a relative work folder (-o out): the slides' paths are absolute
    assert slides == tuple(tmp_path / "work" / "series" / uid for uid in uids)
    for slide in slides:
        assert Slide.open(slide).mpp == pytest.approx(0.499, abs=1e-3) and slide_name(slide) in uids
    assert find_slides(study, tmp_path / "work") == slides  # made afresh on a rerun
    for uid, slide in zip(uids, slides, strict=True):  # what a report names besides the links
        assert split_source(slide, Path("work")) == {"series_instance_uid": uid, "study_folder": str(study)}
    assert split_source(series, Path("work")) == {}
    instance = next(other.glob("*.dcm")).name  # -i naming one instance of the study: its series only
    other_uid = pydicom.dcmread(other / instance).SeriesInstanceUID
    assert find_slides(study / instance, Path("work")) == (tmp_path / "work" / "series" / other_uid,)
    assert find_slides(series, tmp_path / "work") == (series.resolve(),)  # one series: the folder itself
    with pytest.raises(ValueError, match="instances of 2 DICOM series"):
        find_slides(study)


def test_a_task_name_past_dicom_lengths_is_kept_whole_in_codes_and_cut_in_meanings(results, tmp_path) -> None:
    """Code meanings and group labels are Long Strings (64 characters): a long task name is cut there, not refused;
    its code value (a Long Code Value) and tracking identifier keep it whole."""
    series, folder, _ = results
    task = "x" * 70
    shutil.copy(folder / "label_attention.geojson", tmp_path / "label_attention.geojson")
    predictions = {task: PREDICTIONS["label"]}
    models = {**MODELS, "mil": {task: MODELS["mil"]["label"]}}
    assert write_dicom_results(series, tmp_path, predictions, models) == {"sr": SR_FILE, "annotations": ANN_FILE}
    [group] = hd.sr.srread(tmp_path / SR_FILE).content.get_image_measurement_groups()
    assert group.tracking_identifier == task
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.name.value == task and evaluation.name.meaning == task[:64]
    ann = hd.ann.annread(tmp_path / ANN_FILE)
    assert ann.get_annotation_groups()[0].label == f"{task} attention"[:64]
    assert ann.DeviceSerialNumber == "test models 1.2.3"  # the model folder that made it
