"""The steps of the PatHME MONAI Deploy application, free of the SDK so they run and are tested anywhere.

Each step runs the bundle config it names with the same ids as ``monai bundle run``: a slide goes through exactly
the code of the cohort pipeline (extraction, teacher tokens, the saved MIL fold models), so the application's
prediction for a slide equals the one the bundles give.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from pathme import __version__
from pathme.bundles import bundle_dir, run_bundle
from pathme.cohorts.manifest import SAFE_ID
from pathme.deploy.app_models import AppModels
from pathme.deploy.dicom_results import write_dicom_results
from pathme.engines.mil_predict import fold_models
from pathme.store import file_digest, read_store_attrs
from pathme.store.atomic import WriteError, copy_atomic, write_atomic
from pathme.store.tokens import TokenProvenance
from pathme.tables import read_text_csv
from pathme.wsi.readers import SLIDE_SUFFIXES, is_slide, slide_name, slide_path
from pathme.wsi.readers.dicom import is_dicom_series, wsi_series

logger = logging.getLogger(__name__)

BUNDLES = ("pathme_feature_extraction", "pathme_distillation", "pathme_mil")
SPLIT_SERIES = "series"  # the work folder's folder of a study's series, one per Series Instance UID


@dataclass(frozen=True)
class Case:
    """What flows from operator to operator: the slides, then step by step their stores and predictions."""

    slides: tuple[Path, ...]
    work: Path
    features: Path | None = None
    tokens: Path | None = None
    failed: dict[str, str] = field(default_factory=dict)  # slide id -> why it has no prediction
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # task -> one row per slide


def slide_id(path: Path) -> str:
    """A slide's id: :func:`~pathme.wsi.readers.slide_name` (``TCGA-XX.svs`` -> ``TCGA-XX``; a DICOM WSI series
    folder's whole name)."""
    return slide_name(path)


def find_slides(input_path: str | Path, work: Path | None = None) -> tuple[Path, ...]:
    """One slide (a file, a DICOM WSI series folder, or one of its ``.dcm`` instances), or every slide of a folder
    (files by suffix, series folders), sorted; a DICOM folder holding the instances of several series is split into
    its series (:func:`study_series`, under ``work``), of which an instance named as the input keeps its own. None is
    an error."""
    path = slide_path(input_path)
    if path.is_file() or is_dicom_series(path):
        candidates = [path]
    else:
        candidates = sorted(p for p in path.iterdir() if is_slide(p)) if path.is_dir() else []
    found = [slide for candidate in candidates for slide in study_series(candidate.resolve(), work)]
    named = Path(input_path)
    if named.suffix.lower() == ".dcm" and named.is_file() and len(found) > 1:  # one instance of a study: its series
        uid = str(dcmread(named, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
        found = [slide for slide in found if slide.name == uid]
    if not found:
        raise FileNotFoundError(
            f"no slide in {path} (looked for {', '.join(SLIDE_SUFFIXES)} files and folders of DICOM instances)"
        )
    ids = [slide_id(p) for p in found]
    if len(set(ids)) < len(ids):
        raise ValueError(f"{path}: slides share a file name stem, so their reports would collide: {ids}")
    return tuple(found)


def study_series(path: Path, work: Path | None) -> list[Path]:
    """The slides of one input: ``path`` itself, unless it is a folder holding the instances of several DICOM WSI
    series (a study, as a PACS export or MONAI's Informatics Gateway writes it): then one folder per series,
    ``<work>/series/<Series Instance UID>/``, of links to its instances, made afresh. ValueError without ``work``."""
    series = wsi_series(path) if is_dicom_series(path) else {}
    if len(series) <= 1:
        return [path]
    if work is None:
        raise ValueError(f"{path}: instances of {len(series)} DICOM series; give a work folder to split them into")
    folders = []
    for uid, instances in sorted(series.items()):
        folder = work.resolve() / SPLIT_SERIES / uid  # absolute: the manifest resolves relative ones
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for instance in instances:
            (folder / instance.name).symlink_to(instance)
        folders.append(folder)
    return folders


def split_source(slide: Path, work: Path) -> dict[str, str]:
    """For a series :func:`study_series` split from a study, its ``series_instance_uid`` and the ``study_folder``
    its instances are in (what a report names besides the links); for any other slide nothing."""
    if slide.parent != work.resolve() / SPLIT_SERIES:
        return {}
    return {"series_instance_uid": slide.name, "study_folder": str(next(slide.iterdir()).resolve().parent)}


def extract_features(case: Case, models: AppModels) -> Case:
    """Region stores of every slide (bundle pathme_feature_extraction, inference.json). A slide goes no further,
    recorded with the reason, when its file name is no safe slide id, when it cannot be read, or when it has no
    tissue. Stores of slides that are not in this case are removed from the work folder first, so the later steps
    see exactly this case's slides."""
    features, failed = case.work / "features", dict(case.failed)
    ids = {slide_id(path) for path in case.slides}
    for stale in [*features.glob("*.h5"), *(case.work / "tokens").glob("*.h5")]:
        if stale.stem not in ids:
            stale.unlink()
    rows = []
    for path in case.slides:
        if SAFE_ID.fullmatch(slide_id(path)):
            rows.append({"slide_id": slide_id(path), "path": str(path), "patient_id": slide_id(path)})
        else:
            failed[slide_id(path)] = "the file name is no safe slide id: rename it to letters, digits, '.', '_', '-'"
    if not rows:
        return replace(case, features=features, failed=failed)
    manifest = case.work / "manifest.csv"
    write_atomic(manifest, lambda temp: pd.DataFrame(rows).to_csv(temp, index=False))
    run_bundle(
        "pathme_feature_extraction",
        "inference.json",
        manifest=str(manifest),
        output_dir=str(features),
        experts=list(models.experts),
        weights=dict(models.weights),
        reader_backend=models.reader_backend,
        tiles_per_batch=models.tiles_per_batch,
        mpp_tolerance=models.mpp_tolerance,
    )
    summary = read_text_csv(features / "run_summary.csv", "extraction summary", RuntimeError, "extraction stopped")
    for row in summary.itertuples():
        if row.status == "failed":  # unreadable, or a store that says why it has no region
            failed[row.slide_id] = row.error or row.status
            (features / f"{row.slide_id}.h5").unlink(missing_ok=True)
    return replace(case, features=features, failed=failed)


def compute_tokens(case: Case, models: AppModels) -> Case:
    """PatHME region tokens from the teacher (bundle pathme_distillation, inference.json). A slide whose tokens
    cannot be computed (e.g. its expert-A features come from other weights than the teacher was trained on) goes
    no further, recorded with the reason."""
    if not _has_stores(case.features):
        return case
    tokens, failed = case.work / "tokens", dict(case.failed)
    run_bundle(
        "pathme_distillation",
        "inference.json",
        dataset_dir=str(case.features),
        output_dir=str(tokens),
        checkpoint=str(models.teacher),
    )
    summary = read_text_csv(tokens / "embed_summary.csv", "embedding summary", RuntimeError, "embedding stopped")
    for row in summary.itertuples():
        if row.status == "failed":
            failed[row.slide] = row.error or row.status
    return replace(case, tokens=tokens, failed=failed)


def predict(case: Case, models: AppModels) -> Case:
    """Every MIL task's ensemble of fold models with heatmaps (bundle pathme_mil, inference.json)."""
    predictions = {}
    for task, run in models.mil_runs.items():
        features = case.tokens if models.mil_sources[task].tokens else case.features
        if not _has_stores(features):
            continue
        output = case.work / "mil" / task
        run_bundle(
            "pathme_mil",
            "inference.json",
            dataset_dir=str(features),
            models_dir=str(run),
            output_dir=str(output),
            run=["$@predictor.run()"],  # the bundle's run also prints the table; the app's output is its reports
        )
        predictions[task] = read_text_csv(output / "predictions.csv", "predictions", RuntimeError, "MIL stopped")
    return replace(case, predictions=predictions)


def write_reports(case: Case, models: AppModels, output_dir: str | Path) -> list[Path]:
    """``<output>/<slide id>/report.json`` for every slide, with its heatmaps (PNG, QuPath GeoJSON, NIfTI in level-0
    µm) beside it."""
    versions = model_versions(case, models)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    written = []
    for path in case.slides:
        sid = slide_id(path)
        folder = Path(output_dir) / sid
        folder.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"slide_id": sid, "slide": str(path), "created": created}
        report |= split_source(path, case.work)
        if sid in case.failed:
            report |= {"status": "failed", "error": case.failed[sid]}
        else:
            report |= {"status": "done", "predictions": _slide_predictions(case, sid, folder)}
            if is_dicom_series(path) and report["predictions"]:
                report["dicom"] = _dicom_results(path, folder, report["predictions"], versions)
        report |= {"intended_use": "Research only; not for clinical diagnosis", "models": versions}
        target = folder / "report.json"
        written.append(write_atomic(target, json.dumps(report, indent=2) + "\n"))
    return written


def _dicom_results(series: Path, folder: Path, predictions: dict[str, Any], models: dict[str, Any]) -> dict[str, str]:
    """:func:`~pathme.deploy.dicom_results.write_dicom_results` for a slide read from a DICOM series; what cannot be
    written (a header highdicom refuses) is a warning and the report's ``error`` entry, not the end of the run."""
    try:
        return write_dicom_results(series, folder, predictions, models)
    except (ValueError, InvalidDicomError, WriteError) as error:
        logger.warning("%s: no DICOM results: %s", series, error)
        return {"error": str(error)}


def model_versions(case: Case, models: AppModels) -> dict[str, Any]:
    """Versions and digests of everything that made the predictions, read from the stores and model files."""
    versions: dict[str, Any] = {"pathme": __version__, "bundles": {}}
    versions["app_models"] = {key: models.metadata[key] for key in ("name", "version")}
    for name in BUNDLES:
        versions["bundles"][name] = json.loads((bundle_dir(name) / "configs" / "metadata.json").read_text())["version"]
    if _has_stores(case.features):
        attrs = _first_store_attrs(case.features)
        sources, digests = attrs["expert_weights"], attrs["expert_digests"]
        versions["experts"] = {name: {"weights": sources[name], "digest": digests[name]} for name in models.experts}
    if _has_stores(case.tokens):
        teacher = TokenProvenance.from_attrs(_first_store_attrs(case.tokens))
        versions["teacher"] = {"checkpoint": teacher.teacher_checkpoint, "digest": teacher.teacher_digest}
    versions["mil"] = {}
    for task, run in models.mil_runs.items():
        digests = {file.parent.name: file_digest(file) for file in fold_models(run)}
        versions["mil"][task] = {
            "model": models.mil_models[task],
            "feature_source": str(models.mil_sources[task]),
            "fold_models": digests,
        }
    return versions


def _slide_predictions(case: Case, sid: str, folder: Path) -> dict[str, Any]:
    """Each task's row of this slide (one slide is one patient here) and its heatmaps copied next to the report."""
    result = {}
    for task, table in case.predictions.items():
        row = table[table["patient_id"] == sid]
        if row.empty:
            continue
        values = row.iloc[0]
        if "risk" in values:
            entry: dict[str, Any] = {"type": "survival", "risk": float(values["risk"]), "higher_risk": "shorter time"}
        else:
            probs = {col.removeprefix("prob_"): float(values[col]) for col in table.columns if col.startswith("prob_")}
            entry = {"type": "classification", "prediction": str(values["predicted"]), "probabilities": probs}
        for kind, suffix in (("png", "png"), ("geojson", "geojson"), ("nifti", "nii.gz")):
            heatmap = case.work / "mil" / task / "heatmaps" / f"{sid}_attention.{suffix}"
            if heatmap.is_file():
                copy_atomic(heatmap, folder / f"{task}_attention.{suffix}")
                entry[f"heatmap_{kind}"] = f"{task}_attention.{suffix}"
        summary = case.work / "mil" / task / "slide_summary.csv"
        if "heatmap_png" not in entry and summary.is_file():  # why not: e.g. a model without instance scores
            slides = pd.read_csv(summary, dtype=str, keep_default_na=False)
            row = slides[slides["slide_id"] == sid]
            entry["no_heatmap"] = "; ".join(filter(None, row.iloc[0][["status", "note"]])) if len(row) else ""
        result[task] = entry
    return result


def _has_stores(folder: Path | None) -> bool:
    return folder is not None and any(folder.glob("*.h5"))


def _first_store_attrs(folder: Path) -> dict[str, Any]:
    return read_store_attrs(sorted(folder.glob("*.h5"))[0])
