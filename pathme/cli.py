"""The ``pathme`` command: thin wrappers over the package, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from pathme import __version__
from pathme.wsi.backends import AUTO, BACKENDS
from pathme.wsi.tissue import TissueConfig

logger = logging.getLogger("pathme")


def _sample_data(args: argparse.Namespace) -> int:
    from pathme.data.sample import fetch_sample_slide

    print(fetch_sample_slide(args.out))
    return 0


def _demo_cohort(args: argparse.Namespace) -> int:
    from pathme.data.cohort import make_demo_cohort
    from pathme.data.sample import fetch_sample_slide

    source = args.source or fetch_sample_slide(args.out / "source")
    print(make_demo_cohort(args.out, source, n_slides=args.slides, seed=args.seed))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from pathme.viz.preview import preview_manifest

    summary = preview_manifest(args.manifest, args.out, backend=args.backend, tissue=_tissue_config(args))
    columns = ["slide_id", "backend", "mpp", "regions", "valid_l0_tiles", "tissue_fraction", "ink_fraction", "preview"]
    return _report(summary, columns)


def _demo(args: argparse.Namespace) -> int:
    """The whole pipeline on a demo cohort (pathme.demo), ending with the metrics table."""
    from pathme.demo import DemoSettings, run_demo

    names = ("slides", "seed", "backend", "distill_iterations", "distill_slides", "folds")
    run_demo(args.out, DemoSettings(**{name: getattr(args, name) for name in names}))
    return 0


def _report(summary: pd.DataFrame, columns: list[str]) -> int:
    """Print the slides that worked as a table of ``columns``, then each note and each failure on its own line;
    1 when any slide failed (its ``error`` is not empty)."""
    summary = summary.assign(note=summary["note"].fillna(""), error=summary["error"].fillna(""))
    failed = summary["error"].astype(bool)
    if (~failed).any():
        print(summary.loc[~failed, columns].to_string(index=False))
    for slide_id, note in summary.loc[summary["note"].astype(bool), ["slide_id", "note"]].itertuples(index=False):
        print(f"NOTE {slide_id}: {note}")
    for slide_id, error in summary.loc[failed, ["slide_id", "error"]].itertuples(index=False):
        print(f"FAILED {slide_id}: {error}")
    return int(failed.any())


def _extract(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_feature_extraction/configs/inference.json with these overrides."""
    from pathme.bundles import run_bundle

    overrides: dict[str, object] = {"manifest": str(args.manifest), "output_dir": str(args.output_dir)}
    for name in ("experts", "reader_backend", "batch_size", "num_workers", "seed"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.weights:
        overrides["weights"] = dict(_name_value(item) for item in args.weights)
    if args.interop_h5:
        overrides["interop_h5"] = True
    configs = ["inference.json", "multi_gpu_inference.json"] if args.multi_gpu else "inference.json"
    run_bundle("pathme_feature_extraction", configs, **overrides)
    summary = pd.read_csv(args.output_dir / "run_summary.csv", keep_default_na=False)
    return _report(summary, ["slide_id", "status", "reader_backend", "regions", "tiles", "seconds"])


def _distill(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_distillation/configs/train.json (+ train_tiny.json with --tiny)."""
    from pathme.bundles import run_bundle

    overrides = _given(args, "dataset_dir", "output_dir", "patients", "max_iterations", "batch_size", "num_workers")
    configs = ["train.json"]
    if args.tiny:
        configs.append("train_tiny.json")
    if args.multi_gpu:
        configs.append("multi_gpu_train.json")
    run_bundle("pathme_distillation", configs, **overrides)
    return 0


def _embed(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_distillation/configs/inference.json (+ inference_tiny.json)."""
    from pathme.bundles import run_bundle

    overrides = _given(args, "dataset_dir", "output_dir", "checkpoint", "batch_size")
    run_bundle("pathme_distillation", ["inference.json"] + (["inference_tiny.json"] if args.tiny else []), **overrides)
    summary = pd.read_csv(args.output_dir / "embed_summary.csv", keep_default_na=False)
    print(summary.to_string(index=False))
    return 0


def _mil(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_mil/configs/train.json (or evaluate.json / inference.json)."""
    from pathme.bundles import run_bundle

    ids = ["features_dir", "output_dir", "labels", "seed", "device"]
    if args.mode == "train":
        ids += ["task", "feature_source", "num_folds", "lr", "max_epochs", "survival_loss"]
    else:
        ids += ["models_dir"]
    overrides = _given(args, *ids)
    if args.no_heatmaps:
        overrides["heatmaps"] = False
    if args.mode != "train" and "seed" in overrides:
        overrides.pop("seed")
    config = {"train": "train.json", "evaluate": "evaluate.json", "predict": "inference.json"}[args.mode]
    run_bundle("pathme_mil", config, **overrides)
    return 0


def _given(args: argparse.Namespace, *names: str) -> dict[str, object]:
    """The config ids the user gave on the command line (paths as strings), so the bundle's defaults stay."""
    values = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


def _name_value(item: str) -> tuple[str, str]:
    name, separator, value = item.partition("=")
    if not separator or not name or not value:
        raise ValueError(f"--weights takes EXPERT=PATH (or EXPERT=random, EXPERT=hub), got {item!r}")
    return name, value


def _tissue_config(args: argparse.Namespace) -> TissueConfig:
    return TissueConfig(mpp=args.tissue_mpp, min_tile_fraction=args.min_tile_fraction)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathme", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pathme {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample-data", help="fetch the real CMU H&E sample slide (checked by sha256)")
    sample.add_argument("--out", type=Path, required=True, help="folder to write cmu_small_region.svs into")
    sample.set_defaults(run=_sample_data)

    cohort = commands.add_parser("demo-cohort", help="build a labelled demo cohort from real H&E pixels")
    cohort.add_argument("--out", type=Path, required=True, help="cohort folder (slides/, manifest.csv, labels.csv)")
    cohort.add_argument("--slides", type=int, default=8, help="number of slides (default 8)")
    cohort.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    cohort.add_argument("--source", type=Path, help="H&E slide to take pixels from (default: the CMU sample)")
    cohort.set_defaults(run=_demo_cohort)

    preview = commands.add_parser("preview", help="tissue mask and region grid preview PNG of every slide")
    preview.add_argument("--manifest", type=Path, required=True, help="CSV with slide_id, path[, mpp][, patient_id]")
    preview.add_argument("--out", type=Path, required=True, help="folder for the PNGs and preview_summary.csv")
    preview.add_argument(
        "--backend", choices=BACKENDS, default=AUTO, help="slide reader (default auto: cucim, then openslide)"
    )
    preview.add_argument("--tissue-mpp", type=float, default=TissueConfig.mpp, help="thumbnail µm/px")
    preview.add_argument(
        "--min-tile-fraction", type=float, default=TissueConfig.min_tile_fraction, help="tissue share of a valid tile"
    )
    preview.set_defaults(run=_preview)

    extract = commands.add_parser(
        "extract", help="region stores of every slide (runs the pathme_feature_extraction bundle)"
    )
    extract.add_argument("--manifest", type=Path, required=True, help="CSV with slide_id, path[, mpp][, patient_id]")
    extract.add_argument("--output-dir", type=Path, required=True, help="folder for <slide_id>.h5 and run_summary.csv")
    extract.add_argument("--experts", nargs="+", help="expert names (default: the bundle's tiny-vit tiny-cnn)")
    extract.add_argument(
        "--weights", nargs="+", metavar="EXPERT=PATH", help="weight file of an expert (or EXPERT=random, EXPERT=hub)"
    )
    extract.add_argument(
        "--reader-backend", choices=BACKENDS, help="slide reader (default auto: cucim, then openslide)"
    )
    extract.add_argument("--batch-size", type=int, help="tiles per encoder batch (default 64)")
    extract.add_argument("--num-workers", type=int, help="region-reading processes (default 1)")
    extract.add_argument("--seed", type=int, help="random seed (default 0)")
    extract.add_argument("--interop-h5", action="store_true", help="also write CLAM/TRIDENT-style h5_files/<expert>/")
    extract.add_argument(
        "--multi-gpu", action="store_true", help="add multi_gpu_inference.json (start the command with torchrun)"
    )
    extract.set_defaults(run=_extract)

    distill = commands.add_parser("distill", help="train the PatHME teacher (runs the pathme_distillation bundle)")
    distill.add_argument("--dataset-dir", type=Path, required=True, help="folder of region stores (pathme extract)")
    distill.add_argument("--output-dir", type=Path, required=True, help="checkpoints/ and tensorboard/ go here")
    distill.add_argument("--patients", help="CSV with a patient_id column: train on these patients only")
    distill.add_argument("--max-iterations", type=int, help="training steps (default: the bundle's)")
    distill.add_argument("--batch-size", type=int, help="regions per device and step (>= 2)")
    distill.add_argument("--num-workers", type=int, help="data-loading processes")
    distill.add_argument("--tiny", action="store_true", help="the CPU-sized network and tiny experts (train_tiny.json)")
    distill.add_argument("--multi-gpu", action="store_true", help="add multi_gpu_train.json (start with torchrun)")
    distill.set_defaults(run=_distill)

    embed = commands.add_parser("embed", help="region tokens of every store from a trained teacher")
    embed.add_argument("--dataset-dir", type=Path, required=True, help="folder of region stores (pathme extract)")
    embed.add_argument("--output-dir", type=Path, required=True, help="folder for the token stores")
    embed.add_argument(
        "--checkpoint", type=Path, required=True, help="teacher.pt of a finished run, or a checkpoint (folder: latest)"
    )
    embed.add_argument("--batch-size", type=int, help="regions per forward pass")
    embed.add_argument("--tiny", action="store_true", help="the network was trained with --tiny")
    embed.set_defaults(run=_embed)

    mil = commands.add_parser(
        "mil", help="attention MIL: cross-validated training, evaluation or prediction (runs the pathme_mil bundle)"
    )
    mil.add_argument("mode", nargs="?", choices=["train", "evaluate", "predict"], default="train", help="default train")
    mil.add_argument("--features-dir", type=Path, required=True, help="token stores (pathme embed) or region stores")
    mil.add_argument("--output-dir", type=Path, required=True, help="where folds, models, metrics and heatmaps go")
    mil.add_argument("--labels", type=Path, help="labels CSV (patient_id or slide_id, the task column[s], fold[s])")
    mil.add_argument("--task", help="the class column of the labels, or 'survival' (time, event)")
    mil.add_argument("--feature-source", help="'pathme' (default), 'pathme-mean' or an expert name (raw features)")
    mil.add_argument("--num-folds", type=int, help="folds generated when the labels have none (default 5)")
    mil.add_argument("--models-dir", type=Path, help="evaluate/predict: the training run's output folder")
    mil.add_argument("--lr", type=float, help="learning rate (default 2e-4)")
    mil.add_argument("--max-epochs", type=int, help="epochs per fold (default 30)")
    mil.add_argument("--survival-loss", choices=["nll", "cox"], help="survival objective (default nll)")
    mil.add_argument("--seed", type=int, help="random seed (default 0)")
    mil.add_argument("--device", help="e.g. cpu or cuda:0 (default: cuda when present)")
    mil.add_argument("--no-heatmaps", action="store_true", help="skip the attention heatmaps")
    mil.set_defaults(run=_mil)

    demo = commands.add_parser(
        "demo", help="the whole pipeline on a demo cohort: features, distillation, tokens, MIL, heatmaps, metrics"
    )
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    demo.add_argument("--slides", type=int, default=40, help="demo cohort size (default 40)")
    demo.add_argument("--distill-iterations", type=int, default=100, help="tiny distillation steps (default 100)")
    demo.add_argument("--distill-slides", type=int, default=8, help="slides of the distillation cohort (default 8)")
    demo.add_argument("--folds", type=int, default=5, help="cross-validation folds of the MIL runs (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument(
        "--backend", choices=BACKENDS, default=AUTO, help="slide reader (default auto: cucim, then openslide)"
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (ValueError, OSError, RuntimeError) as error:  # bad input: one clear line, no traceback (-v shows it)
        cause = _input_error(error)
        if args.verbose or cause is None:
            raise
        logger.error("%s", cause)
        return 2


def _input_error(error: BaseException | None) -> BaseException | None:
    """The ValueError or OSError behind ``error``, also when MONAI's config parser wrapped it in a RuntimeError."""
    while error is not None and not isinstance(error, ValueError | OSError):
        error = error.__cause__ or error.__context__
    return error


if __name__ == "__main__":
    sys.exit(main())
