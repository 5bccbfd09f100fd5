"""The Deploy app's model folder, in the MONAI bundle layout: what the app loads, and how it is assembled from runs.

    <folder>/configs/metadata.json   the bundle's metadata: name and version (the reports and DICOM results name
                                     them), MONAI, PyTorch and pathme versions, task, intended use
    <folder>/configs/pathme_app.json the experts to extract and their weights (and the extraction's settings)
    <folder>/models/teacher.pt       the teacher a finished distillation run writes (it records its expert, preset
                                     and network)
    <folder>/models/mil/<task>/      per task the fold models of a MIL cross-validation (fold_<k>/model.pt)

A MONAI Application Package holds the folder as ``/opt/holoscan/models/pathme/`` (scripts/stage_map.py). The
metadata has the keys of a MONAI bundle's but ``network_data_format``: the folder holds several networks (teacher,
fold models) that the app chains, not one network a bundle config would run. A relative path in ``weights`` is a
file inside the folder (``models/experts/uni.bin``), so the folder moves whole into an image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pathme import __version__
from pathme.data.feature_source import PATHME, PATHME_MEAN, FeatureSource
from pathme.engines.distill_workflow import TEACHER_FILE, TrainedOn, load_checkpoint
from pathme.engines.mil import MILModelConfig, load_fold_model, read_fold_model
from pathme.engines.mil_predict import fold_models
from pathme.store.atomic import copy_atomic, write_atomic
from pathme.wsi.mpp import MPP_TOLERANCE

CONFIGS, MODELS = "configs", "models"
METADATA = f"{CONFIGS}/metadata.json"
APP_CONFIG = f"{CONFIGS}/pathme_app.json"
TEACHER = f"{MODELS}/{TEACHER_FILE}"
MIL = f"{MODELS}/mil"
LAYOUT = f"{METADATA}, {APP_CONFIG}, {TEACHER} and {MIL}/<task>/fold_<k>/model.pt"


def inside(root: Path, weights: str) -> str:
    """An expert's ``weights`` value with a relative path to a file or folder inside ``root`` made absolute; any other
    value (``hub``, ``random``, an absolute path) as it is."""
    return str(root / weights) if not Path(weights).is_absolute() and (root / weights).exists() else weights


@dataclass(frozen=True)
class AppModels:
    """The model folder (the module's layout); the fields are ``pathme_app.json``'s keys."""

    root: Path
    experts: tuple[str, ...]
    weights: dict[str, str] = field(default_factory=dict)
    # cuCIM reads crash (SIGSEGV in read_region) inside Holoscan operator threads once an earlier operator has
    # read with cuCIM (seen with cucim-cu13 26.10, holoscan-cu13 4.6, CPU); OpenSlide reads are safe there
    reader_backend: str = "openslide"
    tiles_per_batch: int = 64  # the extraction bundle's id
    mpp_tolerance: float = MPP_TOLERANCE  # the extraction bundle's id: a scan this much coarser than 20x is read at it

    @classmethod
    def load(cls, root: str | Path) -> AppModels:
        """Read the model folder ``root``, or its one subfolder that is one (a MONAI Application Package's model
        path, ``/opt/holoscan/models``, holds it as ``pathme/``). Raises FileNotFoundError naming the missing file,
        ValueError on several model folders, metadata without name or version, an unknown key or a feature source
        the app cannot make."""
        root = Path(root)
        nested = (
            sorted(path.parents[1] for path in root.glob(f"*/{APP_CONFIG}")) if not (root / APP_CONFIG).exists() else []
        )
        if len(nested) > 1:
            raise ValueError(f"{root}: {len(nested)} model folders ({', '.join(p.name for p in nested)}); give one")
        root = nested[0] if nested else root
        for name in (METADATA, APP_CONFIG):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root}: no {name}; the model folder holds {LAYOUT} (README 'MONAI Deploy')")
        config = root / APP_CONFIG
        values = json.loads(config.read_text())
        allowed = {f.name for f in fields(cls)} - {"root"}
        if unknown := sorted(set(values) - allowed):
            raise ValueError(f"{config}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        if "experts" not in values:
            raise ValueError(f"{config}: missing key 'experts' (the experts whose features the app extracts)")
        weights = {name: inside(root, value) for name, value in values.get("weights", {}).items()}
        models = cls(root=root, **{**values, "experts": tuple(values["experts"]), "weights": weights})
        if missing := [key for key in ("name", "version") if not models.metadata.get(key)]:
            raise ValueError(f"{root / METADATA}: no {' or '.join(missing)} (the bundle's; reports name them)")
        if not models.teacher.is_file():
            raise FileNotFoundError(f"{root}: no {TEACHER} (the {TEACHER_FILE} a finished distillation run writes)")
        if models.expert_a not in models.experts:
            raise ValueError(
                f"{config}: the teacher in {models.teacher} takes {models.expert_a!r} features, which experts "
                f"{list(models.experts)} do not include"
            )
        if not models.mil_runs:
            raise FileNotFoundError(f"{root}: no MIL run with fold models in {root / MIL}/<task>/fold_<k>/model.pt")
        for task, source in models.mil_sources.items():
            if not source.tokens and source.expert not in models.experts:
                known = [PATHME, PATHME_MEAN, *models.experts]
                raise ValueError(
                    f"{root / MIL / task}: its fold models take '{source}' features; this app makes {known} "
                    "(an expert also at @5x and @1.25x)"
                )
        return models

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """The bundle's ``configs/metadata.json``."""
        return json.loads((self.root / METADATA).read_text())

    @property
    def teacher(self) -> Path:
        """Path of the distilled teacher checkpoint in the model folder."""
        return self.root / TEACHER

    @cached_property
    def expert_a(self) -> str:
        """The expert whose features the teacher takes, as ``teacher.pt`` records it."""
        return TrainedOn.of(load_checkpoint(self.teacher), self.teacher).expert_a

    @property
    def mil_runs(self) -> dict[str, Path]:
        """Task name -> the folder of its fold models."""
        folder = self.root / MIL
        runs = sorted(p for p in folder.iterdir() if any(p.glob("fold_*/model.pt"))) if folder.is_dir() else []
        return {run.name: run for run in runs}

    @cached_property
    def mil_sources(self) -> dict[str, FeatureSource]:
        """Task name -> the features its fold models take (PatHME tokens or an expert's raw features)."""
        runs = self.mil_runs.items()
        return {task: FeatureSource.parse(load_fold_model(fold_models(run)[0])[2]) for task, run in runs}

    @cached_property
    def mil_models(self) -> dict[str, str]:
        """Task name -> the aggregator of its fold models (pathme aggregators)."""
        saved = {task: read_fold_model(fold_models(run)[0])["model_config"] for task, run in self.mil_runs.items()}
        return {task: MILModelConfig.from_saved(config).model for task, config in saved.items()}


def write_app_models(
    folder: Path,
    config: Mapping[str, Any],
    teacher: Path,
    mil_runs: Mapping[str, Path],
    name: str = "PatHME MONAI Deploy app models",
    model_version: str = "0.1.0",
) -> AppModels:
    """Assemble a model folder: ``config`` (``pathme_app.json``'s keys), the ``teacher.pt`` of a distillation run and
    the fold models of each task's MIL run (task -> its output folder), with the bundle's metadata; fold models of an
    earlier assembly leave. Returns the folder loaded (so it is what the app accepts)."""
    tasks = sorted(mil_runs)
    metadata = {
        "version": model_version,
        "changelog": {model_version: "assembled by pathme"},
        "monai_version": version("monai"),
        "pytorch_version": version("torch"),
        "numpy_version": version("numpy"),
        "required_packages_version": {"pathme": __version__},
        "name": name,
        "task": f"Slide-level predictions ({', '.join(tasks)}) from H&E whole-slide images",
        "description": "The PatHME MONAI Deploy app's models: the experts to extract, the distilled teacher and "
        "each task's MIL fold models",
        "intended_use": "Research only; not for clinical diagnosis",
        "license": "Apache-2.0",
        "authors": "pathme contributors",
        "copyright": "Copyright (c) pathme contributors",
        "optional_packages_version": {},
    }
    write_atomic(folder / METADATA, json.dumps(metadata, indent=2) + "\n")
    write_atomic(folder / APP_CONFIG, json.dumps(dict(config), indent=2) + "\n")
    copy_atomic(teacher, folder / TEACHER)
    for stale in (folder / MIL).glob("*/fold_*/model.pt"):  # an earlier assembly's must not join the ensembles
        stale.unlink()
    for task in tasks:
        for fold_model in fold_models(mil_runs[task]):
            copy_atomic(fold_model, folder / MIL / task / fold_model.parent.name / fold_model.name)
    return AppModels.load(folder)
