"""The MONAI Deploy application: its operators' steps outside the SDK, and the application itself on the CMU slide.

Steps and the application drive the bundles, so they run in a subprocess (MONAI's logging.conf and pytest's
captured streams do not mix).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import highdicom as hd
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO_EXPERTS
from dicom_series import drop_pixel_spacing, make_ct, rewrite, to_dicom
from packaging.utils import canonicalize_name
from PIL import Image

from pathme import __version__
from pathme.deploy.app_models import APP_CONFIG, METADATA, AppModels, write_app_models
from pathme.deploy.pipeline import find_slides
from pathme.engines.mil import TrainSettings
from pathme.engines.mil_predict import MILPredict
from pathme.engines.mil_workflow import MILRun
from pathme.networks import AGGREGATORS
from pathme.store.digests import file_digest
from pathme.synthetic.slides import write_pyramid

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # minutes of CPU: the MONAI Deploy application and its steps on the demo models

FAST = TrainSettings(max_epochs=6, min_epochs=3, patience=3, lr=1e-3)
#: task folder -> (labels column, feature source, aggregator): the app loads any member's fold models, with or
#: without instance scores
RUNS = {
    "label": ("label", "pathme", "abmil"),
    "survival": ("survival", "pathme", "dsmil"),
    "label_raw": ("label", "tiny-vit", "mean-pool"),
}

STEPS = """
import sys
from pathlib import Path
from pathme.deploy import pipeline
from pathme.deploy.app_models import AppModels
models = AppModels.load(sys.argv[2])
work = Path(sys.argv[3]) / "work"
case = pipeline.Case(pipeline.find_slides(sys.argv[1], work), work)
for step in (pipeline.extract_features, pipeline.compute_tokens, pipeline.predict):
    case = step(case, models)
pipeline.write_reports(case, models, sys.argv[3])
"""


@pytest.fixture(scope="module")
def app_models(demo_cohort: Path, demo_features: Path, demo_tokens: Path, demo_teacher: Path, tmp_path_factory) -> Path:
    """A model folder as a user assembles it: the app config, the teacher's checkpoints and three MIL runs
    (classification and survival on PatHME tokens, classification on raw tiny-vit features)."""
    runs = tmp_path_factory.mktemp("mil_runs")
    for name, (task, source, model) in RUNS.items():
        features = demo_tokens if source == "pathme" else demo_features
        labels, output = demo_cohort / "labels.csv", runs / name
        MILRun(features, labels, task, output, source, num_folds=2, model=model, settings=FAST, heatmaps=False).run()
    config = {"experts": DEMO_EXPERTS}  # teacher.pt records its expert, preset and network
    root = tmp_path_factory.mktemp("app_models")
    return write_app_models(
        root, config, demo_teacher, {name: runs / name for name in RUNS}, model_version="1.2.3"
    ).root


def run_steps(slides: Path, models: Path, output: Path) -> None:
    done = subprocess.run([sys.executable, "-c", STEPS, str(slides), str(models), str(output)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def single_slide_patients(demo_cohort: Path) -> pd.DataFrame:
    manifest = pd.read_csv(demo_cohort / "manifest.csv", dtype=str)
    labels = pd.read_csv(demo_cohort / "labels.csv", dtype={"patient_id": str, "label": str})
    single = manifest.groupby("patient_id").filter(lambda group: len(group) == 1)
    return single.merge(labels, on="patient_id")


@pytest.fixture(scope="module")
def steps_output(demo_cohort: Path, app_models: Path, cmu_slide: Path, tmp_path_factory) -> tuple[Path, pd.Series]:
    """The operators' steps outside the SDK on one folder: the slide of a positive single-slide patient, named
    ``NA`` (a name pandas reads as missing), the CMU slide as an SVS and as a DICOM WSI series, and five slides
    without a prediction: a file that is no slide, a slide whose file name is no safe id, a slide without tissue, a
    DICOM series of no whole-slide image and one without pixel spacing."""
    chosen = single_slide_patients(demo_cohort).query("label == '1'").iloc[0]
    root = tmp_path_factory.mktemp("steps")
    inputs = root / "in"
    inputs.mkdir()
    shutil.copy(demo_cohort / chosen["path"], inputs / f"NA{Path(chosen['path']).suffix}")
    shutil.copy(cmu_slide, inputs / "a b.svs")
    shutil.copy(cmu_slide, inputs / "cmu.svs")
    to_dicom(cmu_slide, inputs / "cmu_dicom")
    for name, change in (("ct_series", make_ct), ("no_spacing", drop_pixel_spacing)):
        shutil.copytree(inputs / "cmu_dicom", inputs / name)
        rewrite(inputs / name, change)
    (inputs / "broken.svs").write_bytes(b"not a slide at all" * 100)
    write_pyramid(inputs / "blank.tiff", np.full((1024, 1024, 3), 245, np.uint8), mpp=0.5)
    run_steps(inputs, app_models, root / "out")
    return root / "out", chosen


def test_the_steps_predict_what_the_bundles_predict(steps_output, demo_tokens, demo_features, app_models, tmp_path):
    """The report carries the same probabilities and risks as the fold models on the cohort's own stores."""
    output, chosen = steps_output
    report = json.loads((output / "NA" / "report.json").read_text())
    assert report["status"] == "done" and set(report["predictions"]) == set(RUNS)
    for name, (task, source, model) in RUNS.items():
        features = demo_tokens if source == "pathme" else demo_features
        expected = MILPredict(features, app_models / "models" / "mil" / name, tmp_path / name, heatmaps=False).run()
        expected = expected.set_index("patient_id").loc[chosen["patient_id"]]
        got = report["predictions"][name]
        if task == "survival":
            assert got["risk"] == pytest.approx(expected["risk"], abs=1e-5)
        else:
            want = {label: expected[f"prob_{label}"] for label in ("0", "1")}
            assert got["probabilities"] == pytest.approx(want, abs=1e-5)
            assert got["prediction"] == max(got["probabilities"], key=got["probabilities"].get)
        if AGGREGATORS[model].cls.instance_scores:
            assert (output / "NA" / got["heatmap_geojson"]).is_file()
        else:  # mean pooling has no instance scores: the report says so instead of drawing nothing silently
            assert "heatmap_png" not in got and got["no_heatmap"].startswith("no instance scores; mean pooling")


def test_a_dicom_series_gets_the_report_of_the_svs_it_was_made_from(steps_output) -> None:
    output, _ = steps_output
    svs, dicom = (json.loads((output / name / "report.json").read_text()) for name in ("cmu", "cmu_dicom"))
    assert svs["status"] == dicom["status"] == "done" and dicom["slide"].endswith("cmu_dicom")
    for name, got in dicom["predictions"].items():
        want = svs["predictions"][name]
        assert got.get("risk") == want.get("risk") and got.get("probabilities") == want.get("probabilities")
        if "heatmap_png" in want:  # the same cells with the same attention (names carry the slide id)
            cells = [
                [(f["geometry"], f["properties"]["measurements"]) for f in json.loads(path.read_text())["features"]]
                for path in (output / "cmu_dicom" / got["heatmap_geojson"], output / "cmu" / want["heatmap_geojson"])
            ]
            assert cells[0] == cells[1] and cells[0]


def test_a_dicom_series_gets_dicom_results_that_read_back_as_the_svs_report(steps_output) -> None:
    """The SR holds the SVS report's probabilities, classes and risks (to the bit: the SR keeps float64); the bulk
    annotations hold the SVS heatmap GeoJSON's cells and attention (float32, as the standard stores them)."""
    output, _ = steps_output
    svs, dicom = (json.loads((output / name / "report.json").read_text()) for name in ("cmu", "cmu_dicom"))
    assert "dicom" not in svs and dicom["dicom"] == {"sr": "prediction_sr.dcm", "annotations": "attention_ann.dcm"}
    sr = hd.sr.srread(output / "cmu_dicom" / dicom["dicom"]["sr"])
    groups = {group.tracking_identifier: group for group in sr.content.get_image_measurement_groups()}
    assert set(groups) == set(RUNS)
    for task, want in svs["predictions"].items():
        values = {m.name.value.split("=", 1)[1]: m.value for m in groups[task].get_measurements()}
        if want["type"] == "survival":
            assert values == {"risk": want["risk"]}
        else:
            assert values == {f"p({label})": p for label, p in want["probabilities"].items()}
            [evaluation] = groups[task].get_qualitative_evaluations()
            assert evaluation.value.value == f"{task}={want['prediction']}"
    ann = hd.ann.annread(output / "cmu_dicom" / dicom["dicom"]["annotations"])
    drawn = {name for name, want in svs["predictions"].items() if "heatmap_geojson" in want}
    groups = {group.label.removesuffix(" attention"): group for group in ann.get_annotation_groups()}
    assert set(groups) == drawn and drawn
    for task in drawn:
        features = json.loads((output / "cmu" / svs["predictions"][task]["heatmap_geojson"]).read_text())["features"]
        polygons = groups[task].get_graphic_data("2D")
        rings = [np.asarray(feature["geometry"]["coordinates"][0][:4], np.float32) for feature in features]
        assert len(polygons) == len(rings) and all(np.array_equal(a, b) for a, b in zip(polygons, rings, strict=True))
        attention = [feature["properties"]["measurements"]["attention"] for feature in features]
        np.testing.assert_allclose(groups[task].get_measurements()[1][:, 0], attention, rtol=1e-7)


@pytest.mark.parametrize(
    ("slide", "reason"),
    [
        ("broken", "Error"),
        ("a b", "no safe slide id"),
        ("blank", "no tissue found"),
        ("ct_series", "no VL Whole Slide Microscopy image in the series (SOP classes 1.2.840.10008.5.1.4.1.1.2)"),
        ("no_spacing", "no_spacing: the series states no pixel spacing"),
    ],
)
def test_a_slide_without_a_prediction_gets_a_failed_report_with_the_reason(steps_output, slide, reason) -> None:
    output, _ = steps_output
    report = json.loads((output / slide / "report.json").read_text())
    assert report["status"] == "failed" and reason in report["error"] and "\n" not in report["error"]
    assert "predictions" not in report and "dicom" not in report and not list((output / slide).glob("*.dcm"))


def test_a_rerun_into_the_same_output_predicts_only_its_own_slides(steps_output, app_models, cmu_slide) -> None:
    """Stores of the earlier run's slides leave the work folder, so the steps and the versions see only this
    run's slides."""
    output, _ = steps_output
    inputs = output.parent / "in_again"
    inputs.mkdir()
    shutil.copy(cmu_slide, inputs / "second.svs")
    run_steps(inputs, app_models, output)
    for folder in ("features", "tokens"):
        assert sorted(path.name for path in (output / "work" / folder).glob("*.h5")) == ["second.h5"]
    report = json.loads((output / "second" / "report.json").read_text())
    assert report["status"] == "done" and set(report["predictions"]) == set(RUNS)
    assert set(report["models"]["experts"]) == set(DEMO_EXPERTS)


def test_a_teacher_distilled_on_other_expert_weights_gives_failed_reports_naming_them(
    app_models: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    """The app extracts with its experts' weights (random tiny ones: 'random:0'); a teacher distilled on features
    of other weights (recorded as 'random:7' here) refuses them, and the slide's report says why instead of
    carrying predictions from features the models never saw."""
    models = tmp_path / "models"
    shutil.copytree(app_models, models)
    state = torch.load(models / "models" / "teacher.pt", weights_only=True)
    state["trained_on"]["expert_digests"] = dict.fromkeys(DEMO_EXPERTS, "random:7")
    torch.save(state, models / "models" / "teacher.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(cmu_slide, inputs / "cmu.svs")
    run_steps(inputs, models, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "cmu" / "report.json").read_text())
    assert report["status"] == "failed" and "predictions" not in report
    assert "(tiny-vit weights 'random:7' in training, 'random:0' in " in report["error"]
    assert "teacher.pt was trained on features of other weights" in report["error"]


def test_the_monai_deploy_app_runs_on_the_cmu_slide(cmu_slide: Path, app_models: Path, tmp_path: Path) -> None:
    """The real MONAI Deploy (Holoscan) application, on CPU: a report with prediction, risk and model versions,
    and attention heatmaps (PNG over the thumbnail, GeoJSON for QuPath) per task."""
    command = [sys.executable, "-m", "pathme.deploy.app", "-i", str(cmu_slide), "-o", str(tmp_path / "out")]
    done = subprocess.run([*command, "-m", str(app_models)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # as quiet as the pathme command: no Holoscan, CUDA, codec or INFO lines; the full log in the output folder
    console = (done.stdout + done.stderr).splitlines()
    assert len(console) <= 3 and console[0].startswith("extract shard 0/1 finished: 1 slide(s) done"), console
    assert "Holoscan" not in done.stderr and "input summary" in (tmp_path / "out" / "pathme.log").read_text()
    folder = tmp_path / "out" / cmu_slide.stem
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "done" and report["slide"] == str(cmu_slide.resolve())
    label, survival = report["predictions"]["label"], report["predictions"]["survival"]
    assert sum(label["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) and label["prediction"] in {"0", "1"}
    assert np.isfinite(survival["risk"])
    with h5py.File(tmp_path / "out" / "work" / "tokens" / f"{cmu_slide.stem}.h5", "r") as store:
        n_tokens = int(np.isfinite(store["tokens"][:]).all(axis=-1).sum())
    for name in ("label", "survival"):  # label_raw's mean pooling has no instance scores
        geojson = json.loads((folder / f"{name}_attention.geojson").read_text())
        assert geojson["type"] == "FeatureCollection" and geojson["features"]
        with Image.open(folder / f"{name}_attention.png") as image:
            assert image.size[0] > 10 and image.size[1] > 10
    assert len(json.loads((folder / "label_attention.geojson").read_text())["features"]) <= n_tokens
    versions = report["models"]
    assert versions["teacher"]["digest"] == file_digest(app_models / "models" / "teacher.pt")
    assert versions["app_models"] == {"name": "PatHME MONAI Deploy app models", "version": "1.2.3"}
    assert versions["experts"]["tiny-vit"]["weights"] == "random"
    assert versions["mil"]["label_raw"]["feature_source"] == "tiny-vit"
    assert {name: versions["mil"][name]["model"] for name in RUNS} == {n: run[2] for n, run in RUNS.items()}
    for name in RUNS:
        folds = versions["mil"][name]["fold_models"]
        assert folds == {
            f"fold_{k}": file_digest(app_models / "models" / "mil" / name / f"fold_{k}" / "model.pt") for k in (0, 1)
        }


def test_the_monai_deploy_app_reads_a_dicom_study_and_writes_dicom_results(cmu_slide, app_models, tmp_path) -> None:
    """The real application on a study folder as the Informatics Gateway hands it over (the instances of a DICOM WSI
    series made from the sample slide), as quiet as on a slide file: its SR and bulk annotations hold what its
    report.json and heatmap GeoJSON say."""
    series = to_dicom(cmu_slide, tmp_path / "series")
    command = [sys.executable, "-m", "pathme.deploy.app", "-i", str(series), "-o", str(tmp_path / "out")]
    done = subprocess.run([*command, "-m", str(app_models)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    console = (done.stdout + done.stderr).splitlines()
    assert len(console) <= 3 and console[0].startswith("extract shard 0/1 finished: 1 slide(s) done"), console
    folder = tmp_path / "out" / "series"
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "done" and report["dicom"] == {
        "sr": "prediction_sr.dcm",
        "annotations": "attention_ann.dcm",
    }
    sr = hd.sr.srread(folder / "prediction_sr.dcm")
    for group in sr.content.get_image_measurement_groups():
        want = report["predictions"][group.tracking_identifier]
        got = {m.name.value.split("=", 1)[1]: m.value for m in group.get_measurements()}
        assert got == (
            {"risk": want["risk"]} if "risk" in want else {f"p({k})": v for k, v in want["probabilities"].items()}
        )
    for group in hd.ann.annread(folder / "attention_ann.dcm").get_annotation_groups():
        task = group.label.removesuffix(" attention")
        features = json.loads((folder / report["predictions"][task]["heatmap_geojson"]).read_text())["features"]
        attention = [feature["properties"]["measurements"]["attention"] for feature in features]
        np.testing.assert_allclose(group.get_measurements()[1][:, 0], attention, rtol=1e-7)


def test_a_model_folder_without_its_config_or_models_is_a_clear_error(app_models: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no {METADATA}; the model folder holds {METADATA}, {APP_CONFIG}"):
        AppModels.load(tmp_path)
    shutil.copytree(app_models, tmp_path / "m", ignore=shutil.ignore_patterns("mil", "teacher.pt"))
    with pytest.raises(FileNotFoundError, match="no models/teacher.pt"):
        AppModels.load(tmp_path / "m")
    shutil.copy(app_models / "models" / "teacher.pt", tmp_path / "m" / "models")
    with pytest.raises(FileNotFoundError, match="no MIL run"):
        AppModels.load(tmp_path / "m")
    config = tmp_path / "m" / APP_CONFIG
    config.write_text(json.dumps({"experts": ["uni"]}))
    with pytest.raises(ValueError, match="takes 'tiny-vit' features, which experts \\['uni'\\] do not include"):
        AppModels.load(tmp_path / "m")
    config.write_text(json.dumps({"experts": ["tiny-vit"], "expert_a": "tiny-vit"}))
    with pytest.raises(ValueError, match="unknown keys \\['expert_a'\\]"):
        AppModels.load(tmp_path / "m")
    config.write_text(json.dumps({"weights": {}}))
    with pytest.raises(ValueError, match="missing key 'experts'"):
        AppModels.load(tmp_path / "m")
    shutil.copytree(app_models / "models" / "mil", tmp_path / "m" / "models" / "mil")  # on tiny-vit features and tokens
    config.write_text(json.dumps({"experts": ["tiny-cnn", "tiny-vit"]}))
    assert AppModels.load(tmp_path / "m").expert_a == "tiny-vit"  # from teacher.pt
    (tmp_path / "m" / "models" / "uni.bin").write_bytes(b"weights")  # a relative path: a file inside the folder
    config.write_text(json.dumps({"experts": ["tiny-vit"], "weights": {"uni": "models/uni.bin", "tiny-vit": "random"}}))
    weights = AppModels.load(tmp_path / "m").weights
    assert weights == {"uni": str(tmp_path / "m" / "models" / "uni.bin"), "tiny-vit": "random"}
    (tmp_path / "m" / METADATA).write_text(json.dumps({"name": "models"}))
    with pytest.raises(ValueError, match="metadata.json: no version"):
        AppModels.load(tmp_path / "m")
    shutil.copytree(app_models, tmp_path / "two" / "a")
    shutil.copytree(app_models, tmp_path / "two" / "b")
    with pytest.raises(ValueError, match="two: 2 model folders \\(a, b\\); give one"):
        AppModels.load(tmp_path / "two")
    assert AppModels.load(tmp_path / "two" / "a").root == tmp_path / "two" / "a"


def test_an_input_without_slides_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no slide here")
    with pytest.raises(FileNotFoundError, match="no slide in"):
        find_slides(tmp_path)


def test_a_dicom_series_is_one_slide_however_it_is_named(tmp_path: Path) -> None:
    series = tmp_path / "S1"
    series.mkdir()
    (series / "level0.dcm").write_bytes(b"instance")
    (tmp_path / "a.svs").write_bytes(b"slide")
    (tmp_path / "empty").mkdir()
    assert find_slides(tmp_path) == (tmp_path / "S1", tmp_path / "a.svs")
    assert find_slides(series / "level0.dcm") == find_slides(series) == (series,)


#: what MONAI Deploy's packager (holoscan-cli 4.2) downloads from the holoscan-cli repository before it packages
#: (releases/4.2.0/artifacts.json: the images it builds on), written here for a machine without that network
HOLOSCAN_SOURCE = {
    "4.2.0": {
        "holoscan": {
            "debian-version": "4.2.0.1-1",
            "wheel-version": "4.2.0",
            "base-images": {"dgpu": "nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04"},
            "build-images": {
                "dgpu": {
                    "x64-workstation": "nvcr.io/nvidia/clara-holoscan/holoscan:v4.2.0-cuda13",
                    "sbsa": "nvcr.io/nvidia/clara-holoscan/holoscan:v4.2.0-cuda13",
                },
                "igpu": {},
                "cpu": {"x64-workstation": "nvcr.io/nvidia/clara-holoscan/holoscan:v4.2.0-cuda13"},
            },
        },
        "health-probes": {
            "linux/amd64": "https://github.com/grpc-ecosystem/grpc-health-probe/releases/download/v0.4.38/"
            "grpc_health_probe-linux-amd64",
            "linux/arm64": "https://github.com/grpc-ecosystem/grpc-health-probe/releases/download/v0.4.38/"
            "grpc_health_probe-linux-arm64",
        },
    }
}


@pytest.fixture(scope="module")
def staged_map(app_models: Path, tmp_path_factory) -> Path:
    """scripts/stage_map.py on the test's model folder, as the README runs it."""
    output = tmp_path_factory.mktemp("map") / "map"
    script = ROOT / "scripts" / "stage_map.py"
    command = [sys.executable, str(script), "--models", str(app_models), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def package_map(folder: Path, tmp_path: Path) -> tuple[int, str]:
    """``holoscan package`` (MONAI Deploy's MAP packager) on a staged folder, as the README runs it, with no docker
    on the PATH: it checks and writes everything up to the image build, which needs Docker."""
    source = tmp_path / "artifacts.json"
    source.write_text(json.dumps(HOLOSCAN_SOURCE))
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "holoscan"), "package", "app", "-c", "app.yaml", "-m", "models", "-t", "pathme:test"]
    command += ["--platform", "x86_64", "--sdk", "monai-deploy", "--sdk-version", "4.0.0", "--source", str(source)]
    command += ["--build-cache", str(tmp_path / "cache"), "-l", "DEBUG"]
    done = subprocess.run(command, cwd=folder, env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True)
    return done.returncode, (done.stdout + done.stderr).decode()


def printed_manifest(log: str, name: str) -> dict:
    """The manifest the packager prints between its 'Begin <name>' and 'End <name>' lines."""
    return json.loads(log.split(f"Begin {name} ===============\n")[1].split("\n=====")[0])


def test_the_staged_map_holds_the_app_its_pinned_requirements_and_the_model_folder(staged_map: Path) -> None:
    app = staged_map / "app"
    assert (app / "__main__.py").is_file() and (app / "pathme" / "deploy" / "app.py").is_file()
    assert (app / "pathme" / "_bundles" / "pathme_mil" / "configs" / "inference.json").is_file()
    requirements = dict(line.split("==") for line in (app / "requirements.txt").read_text().splitlines())
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    # pathme's requirements with the deploy extra and theirs in turn (pydantic-core: holoscan-cli's, through
    # python-on-whales and pydantic), every one pinned as in constraints.txt; none of the dev extra
    assert {"torch", "monai-deploy-app-sdk", "highdicom", "holoscan-cu13", "pydantic-core"} <= set(requirements)
    assert {name: pins[name] for name in requirements if name in pins} == {
        name: version for name, version in requirements.items() if name in pins
    }
    assert not {"pytest", "ruff", "wsidicomizer"} & set(requirements)
    # the image's model path holds the model folder as pathme/, where the app finds it
    assert AppModels.load(staged_map / "models").root == staged_map / "models" / "pathme"


def test_staging_refuses_expert_weights_outside_the_model_folder(app_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(app_models, models)
    weights = tmp_path / "uni.bin"
    weights.write_bytes(b"weights")
    (models / APP_CONFIG).write_text(json.dumps({"experts": ["tiny-vit"], "weights": {"tiny-vit": str(weights)}}))
    script = ROOT / "scripts" / "stage_map.py"
    command = [sys.executable, str(script), "--models", str(models), "--output", str(tmp_path / "map")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1 and not (tmp_path / "map").exists()
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("stage_map: ") and f"{weights}, are outside the model folder, so not in the image" in line


def test_the_map_packager_accepts_the_app_and_stops_only_where_docker_is_needed(staged_map, tmp_path) -> None:
    returncode, log = package_map(staged_map, tmp_path)
    app = printed_manifest(log, "app.json")
    assert app["command"] == '["python3", "/opt/holoscan/app"]' and app["version"] == __version__
    assert app["sdk"] == "monai-deploy" and app["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    package = printed_manifest(log, "pkg.json")
    assert package["models"] == {"pathme": "/opt/holoscan/models/pathme"} and package["resources"]["gpu"] == 1
    assert "End Dockerfile" in log and "COPY ./models  /opt/holoscan/models" in log
    [error] = [line for line in log.splitlines() if "[ERROR]" in line]
    assert returncode == 1 and "The binary 'docker' could not be found" in log.split(error)[1], log[-2000:]


def test_the_map_packager_refuses_an_app_yaml_without_a_title(staged_map, tmp_path) -> None:
    """The check above can fail: the packager's own validation of app.yaml."""
    broken = tmp_path / "map"
    shutil.copytree(staged_map, broken)
    (broken / "app.yaml").write_text((broken / "app.yaml").read_text().replace("  title:", "  name:"))
    returncode, log = package_map(broken, tmp_path)
    assert returncode == 1 and "('application>title') cannot be found or is empty" in log
    assert "Begin app.json" not in log
