"""The commands that train and apply networks on region stores: ``pathme distill`` (the PatHME teacher),
``pathme embed`` (its region tokens), ``pathme mil`` (attention MIL) and ``pathme embeddings`` (one per slide and
patient)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pathme.cli.bundle_flags import DISTILL, EMBED, MIL_CONFIGS, MIL_PREDICT, MIL_TRAIN
from pathme.cli.flags import flag_dest, flag_name, parse_mapping_flags
from pathme.cli.output import print_failed, print_outputs, tensorboard_hint
from pathme.cli.slide_commands import shard_rows


def embeddings_command(args: argparse.Namespace) -> int:
    """One embedding per slide and per patient (pathme.engines.embeddings), for linear probes and retrieval."""
    from pathme.engines.embeddings import write_embeddings

    path = write_embeddings(args.dataset_dir, args.output_dir, args.feature_source, args.models_dir, args.device)
    print_outputs(args.output_dir, [("embeddings (HDF5: slides/, patients/)", path)])
    return 0


def distill_command(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_distillation/configs/train.json (+ train_tiny.json with --tiny)."""
    from pathme.bundles import run_bundle

    parse_mapping_flags(args, DISTILL)
    configs = (
        ["train.json"]
        + (["train_tiny.json"] if args.tiny else [])
        + (["multi_gpu_train.json"] if args.multi_gpu else [])
    )
    run_bundle(DISTILL.bundle, configs, **DISTILL.overrides(args))
    from pathme.engines.distill_workflow import TEACHER_FILE

    out = Path(args.output_dir)
    outputs = [("teacher", out / TEACHER_FILE), ("checkpoints", out / "checkpoints")]
    print_outputs(out, [*outputs, ("TensorBoard", tensorboard_hint(out / "tensorboard"))])
    return 0


def embed_command(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_distillation/configs/inference.json; the checkpoint says which expert
    and network."""
    from pathme.bundles import run_bundle

    run_bundle(EMBED.bundle, EMBED.config, **EMBED.overrides(args))
    summary = shard_rows(args.output_dir, "embed", "embed_summary.csv", args.shard, "slide")
    failed = summary["status"] == "failed"
    print(summary.loc[~failed, ["slide", "status", "regions"]].to_string(index=False))
    print_failed(list(summary.loc[failed, "slide"]))
    out = Path(args.output_dir)
    print_outputs(out, [("token stores", out), ("summary", out / "embed_summary.csv")])
    return int(failed.any())


def mil_command(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_mil/configs/train.json, or inference.json (evaluate: with labels)."""
    from pathme.bundles import run_bundle

    flags = MIL_TRAIN if args.mode == "train" else MIL_PREDICT
    other = MIL_PREDICT if args.mode == "train" else MIL_TRAIN
    stray = [flag_name(i) for i in other.helps if i not in flags.helps and getattr(args, flag_dest(i)) is not None]
    if stray:
        raise ValueError(f"pathme mil {args.mode}: {', '.join(stray)} do(es) not apply to {args.mode}")
    if args.mode == "evaluate" and args.labels is None:
        raise ValueError("pathme mil evaluate: give --labels (the labels CSV to score the predictions against)")
    run_bundle(flags.bundle, MIL_CONFIGS[args.mode], **flags.overrides(args))
    from pathme.viz.report import REPORT_FILE

    out = Path(args.output_dir)
    heatmaps = out / "heatmaps"
    drawn = len(list(heatmaps.glob("*_attention.png"))) if heatmaps.is_dir() else 0
    outputs = [("report", out / REPORT_FILE), ("summary", out / "summary.csv"), ("metrics", out / "metrics.csv")]
    outputs += [("predictions", out / "predictions.csv"), ("slides", out / "slide_summary.csv")]
    outputs += [(f"heatmaps ({drawn} slides: PNG, QuPath GeoJSON, NIfTI)", heatmaps)] if drawn else []
    if (out / "tensorboard").is_dir():
        outputs.append(("TensorBoard", tensorboard_hint(out / "tensorboard")))
    print_outputs(out, outputs)
    return 0
