"""The Deploy app's results as DICOM objects beside the slide they describe, for a DICOM WSI series read as input.

Two objects per slide, made with highdicom, each in a new series of the slide's study (Patient and Study copied from
the slide, and for the annotations its Specimen; the slide's series and level-0 image referenced; the SR's image
library also records the slide's Frame of Reference, and the annotations' 2D coordinates are that image's own total
pixel matrix, origin at the top-left corner of its top-left pixel, as the heatmap GeoJSON's level-0 px):

- **the prediction**, a Comprehensive 3D SR document with the Measurement Report template **TID 1500**: it is the
  template a PACS, OHIF and Slim read as "measurements of an image" and the one highdicom builds and parses. Each
  task is one Measurement Group (TID 1501, image-level: a prediction is about the whole slide, not a region of it)
  whose source image is the slide, tracked by the task's name, with the model as Algorithm Identification (TID 4019:
  "pathme <task>", pathme's version, and as parameters the aggregator, the feature source and the sha256 of every
  fold model). A classification holds the class probabilities (one measurement per class, unit 1) and the predicted
  class (a qualitative evaluation); a survival model the risk (higher: shorter time). Task and class names are no
  standard concepts, so they are coded in the local scheme ``99PATHME`` (the "99" prefix DICOM reserves for local
  schemes), with readable meanings.
- **the attention maps**, one Microscopy Bulk Simple Annotations instance with one annotation group per task: one
  polygon per heatmap cell (the GeoJSON's cells, in the slide's total pixel matrix, which is level 0) and the cell's
  attention as a measurement. Chosen over a Parametric Map or a Segmentation because Slim (the DICOMweb slide viewer)
  displays bulk annotations over the slide as they are, with their measurement values; a Parametric Map
  or Segmentation would need its own pixel grid resampled to the slide's tiles, and stores a cell's value only
  as the grid's pixels, while each annotation carries its cell's exact square and value (float32).

Names longer than DICOM's 64 characters (a long task name) are cut to 64 in code meanings, group labels and
algorithm names; the code values keep them whole. Results of a slide that is a file (SVS, TIFF, ...) stay JSON, PNG,
GeoJSON and NIfTI: there is no study to put DICOM objects in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pathme import __version__
from pathme.store.atomic import write_atomic
from pathme.wsi.readers.dicom import WSI_SOP_CLASS, dicom_instances

LOCAL_SCHEME = "99PATHME"
MANUFACTURER = "pathme"
MODEL_NAME = "PatHME MONAI Deploy app"
SR_SERIES_NUMBER, ANN_SERIES_NUMBER = 9001, 9002  # new series in the slide's study; any number not the scanner's
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
ATTENTION = hd.sr.CodedConcept("attention", LOCAL_SCHEME, "Attention weight of the MIL model")
SR_FILE, ANN_FILE = "prediction_sr.dcm", "attention_ann.dcm"
LONG_STRING = 64  # characters of a DICOM Long String (LO): code meanings, labels


def level0_image(series: Path) -> Dataset:
    """The header of the series' level-0 image: its VL Whole Slide Microscopy instance of the largest total pixel
    matrix. ValueError naming the folder when it holds none."""
    headers = [dcmread(path, stop_before_pixels=True) for path in dicom_instances(series)]
    images = [header for header in headers if str(header.SOPClassUID) == WSI_SOP_CLASS]
    if not images:
        raise ValueError(f"{series}: no VL Whole Slide Microscopy image to reference")
    return max(images, key=lambda image: int(image.TotalPixelMatrixColumns) * int(image.TotalPixelMatrixRows))


def local_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    """A concept of the local scheme, its meaning cut to DICOM's 64 characters (a Long String)."""
    return hd.sr.CodedConcept(value, LOCAL_SCHEME, meaning[:LONG_STRING])


def task_code(task: str) -> hd.sr.CodedConcept:
    """A task's concept: what its prediction is of."""
    return local_code(task, task)


def class_code(task: str, label: str) -> hd.sr.CodedConcept:
    """A class of a task."""
    return local_code(f"{task}={label}", f"{task} {label}")


def probability_code(task: str, label: str) -> hd.sr.CodedConcept:
    """The measurement "probability of class ``label``" of a task."""
    return local_code(f"{task}=p({label})", f"Probability of {task} {label}")


def risk_code(task: str) -> hd.sr.CodedConcept:
    """The measurement "risk score" of a survival task."""
    return local_code(f"{task}=risk", f"{task} risk score (higher: shorter time)")


def _model_folder(models: Mapping[str, Any]) -> str:
    """The app's model folder as the report names it (name and version): what made the objects."""
    folder = models["app_models"]
    return f"{folder['name']} {folder['version']}"[:LONG_STRING]


def _new_series(number: int, description: str) -> dict[str, Any]:
    """The attributes of the one instance of a new series that highdicom's constructors take."""
    return {
        "series_instance_uid": generate_uid(),
        "series_number": number,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "series_description": f"{description} (research only; not for clinical diagnosis)",
    }


def _algorithm(task: str, model: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The name and parameters that identify a task's model: aggregator, feature source, fold models' sha256."""
    parameters = {"aggregator": model["model"], "feature_source": model["feature_source"]}
    parameters |= {f"{fold} sha256": digest for fold, digest in sorted(model["fold_models"].items())}
    return f"pathme {task}"[:LONG_STRING], parameters


def prediction_sr(image: Dataset, predictions: Mapping[str, Any], models: Mapping[str, Any]) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 measurement report of a slide's predictions (the report's ``predictions``: per task its type and
    probabilities and predicted class, or its risk) by the models of ``models`` (the report's ``models``: its ``mil``
    per task), about the level-0 ``image``."""
    groups = []
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(image)
    for task, entry in predictions.items():
        name, parameters = _algorithm(task, models["mil"][task])
        algorithm = hd.sr.AlgorithmIdentification(name, __version__, [f"{k}={v}" for k, v in parameters.items()])
        if entry["type"] == "survival":
            measurements = [hd.sr.Measurement(risk_code(task), entry["risk"], UNITLESS)]
            evaluations = []
        else:
            measurements = [
                hd.sr.Measurement(probability_code(task, label), value, UNITLESS)
                for label, value in entry["probabilities"].items()
            ]
            evaluations = [hd.sr.QualitativeEvaluation(task_code(task), class_code(task, entry["prediction"]))]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=task),
                finding_type=task_code(task),
                algorithm_id=algorithm,  # the group's: each measurement in it is the model's
                source_images=[source],
                measurements=measurements,
                qualitative_evaluations=evaluations,
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(), name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=f"pathme {__version__}"
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, observer_identifying_attributes=device)
    )
    report = hd.sr.MeasurementReport(
        context, codes.SCT.LightMicroscopy, imaging_measurements=groups, referenced_images=[image]
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[image], content=report, is_complete=True, **_new_series(SR_SERIES_NUMBER, "PatHME prediction")
    )


def geojson_cells(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a heatmap GeoJSON (:func:`pathme.viz.heatmap.heatmap_geojson`): (n, 4, 2) float32 corners in
    level-0 px (column, row; the closing vertex dropped) and (n,) float32 attention."""
    features = json.loads(path.read_text())["features"]
    corners = [feature["geometry"]["coordinates"][0][:4] for feature in features]
    values = [feature["properties"]["measurements"]["attention"] for feature in features]
    return np.asarray(corners, np.float32).reshape(-1, 4, 2), np.asarray(values, np.float32)


def attention_annotations(
    image: Dataset, heatmaps: Mapping[str, Path], models: Mapping[str, Any]
) -> hd.ann.MicroscopyBulkSimpleAnnotations:
    """Bulk annotations over the level-0 ``image``: per task of ``heatmaps`` (task -> its heatmap GeoJSON) a group of
    polygons, one per shown cell, with its attention; ``models`` as for :func:`prediction_sr`."""
    groups = []
    for number, (task, geojson) in enumerate(heatmaps.items(), start=1):
        corners, values = geojson_cells(geojson)
        name, parameters = _algorithm(task, models["mil"][task])
        algorithm = hd.AlgorithmIdentificationSequence(
            name=name,
            family=codes.cid7162.ArtificialIntelligence,
            version=__version__,
            parameters=parameters,
        )
        groups.append(
            hd.ann.AnnotationGroup(
                number=number,
                uid=generate_uid(),
                label=f"{task} attention"[:LONG_STRING],
                annotated_property_category=codes.SCT.Tissue,
                annotated_property_type=codes.SCT.Tissue,
                graphic_type=hd.ann.GraphicTypeValues.POLYGON,
                graphic_data=list(corners),
                algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                measurements=[hd.ann.Measurements(ATTENTION, values, UNITLESS)],
                description=f"attention of the {task} model per heatmap cell (level-0 px)",
            )
        )
    return hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[image],
        annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD,
        annotation_groups=groups,
        **_new_series(ANN_SERIES_NUMBER, "PatHME attention"),
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number=_model_folder(models),
        content_description="PatHME attention maps",
        content_label="ATTENTION",
    )


def write_dicom_results(
    series: Path, folder: Path, predictions: Mapping[str, Any], models: Mapping[str, Any]
) -> dict[str, str]:
    """Write :data:`SR_FILE` (:func:`prediction_sr`) and, where a task has a heatmap GeoJSON in ``folder``,
    :data:`ANN_FILE` (:func:`attention_annotations`) into ``folder``, each atomically and only once both are made;
    returns their file names under ``sr`` and ``annotations``. ``predictions`` and ``models`` are the slide report's.
    ValueError for a series without a slide image, or values highdicom refuses."""
    image = level0_image(series)
    objects = {"sr": (SR_FILE, prediction_sr(image, predictions, models))}
    heatmaps = {
        task: folder / entry["heatmap_geojson"] for task, entry in predictions.items() if "heatmap_geojson" in entry
    }
    if heatmaps:
        objects["annotations"] = (ANN_FILE, attention_annotations(image, heatmaps, models))
    for name, dataset in objects.values():
        write_atomic(folder / name, dataset.save_as)
    return {kind: name for kind, (name, _) in objects.items()}
