"""The commands that read slides: ``pathme preview`` (tissue and region grid PNGs), ``pathme extract`` (region
stores) and ``pathme status`` (where a sharded run stands)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pathme.cli.bundle_flags import EXTRACT
from pathme.cli.flags import TISSUE_HELP, flag_dest, parse_mapping_flags
from pathme.cli.output import print_outputs, print_slide_report


def preview_command(args: argparse.Namespace) -> int:
    """Tissue, pen ink and region grid PNGs of every slide (pathme.viz.preview), with the extraction bundle's
    tissue detection and the flags given; 1 when any slide failed."""
    from pathme.viz.preview import preview_manifest
    from pathme.wsi.tissue import TissueConfig

    values = EXTRACT.config_values() | {
        i: getattr(args, flag_dest(i))
        for i in (*TISSUE_HELP, "mpp_tolerance")
        if getattr(args, flag_dest(i)) is not None
    }
    tissue = {config_id.split("#")[1]: values[config_id] for config_id in TISSUE_HELP}
    summary = preview_manifest(
        args.manifest, args.output_dir, args.reader_backend, TissueConfig(**tissue), values["mpp_tolerance"], args.shard
    )
    columns = ["slide_id", "backend", "mpp", "regions", "valid_l0_tiles", "tissue_fraction", "ink_fraction", "preview"]
    status = print_slide_report(summary, columns)
    out = Path(args.output_dir)
    print_outputs(out, [("previews", out), ("summary", out / "preview_summary.csv")])
    return status


def extract_command(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_feature_extraction/configs/inference.json with these overrides."""
    from pathme.bundles import run_bundle

    parse_mapping_flags(args, EXTRACT)
    configs = ["inference.json", "multi_gpu_inference.json"] if args.multi_gpu else "inference.json"
    run_bundle(EXTRACT.bundle, configs, **EXTRACT.overrides(args))
    summary = shard_rows(args.output_dir, "extract", "run_summary.csv", args.shard, "slide_id")
    status = print_slide_report(summary, ["slide_id", "status", "reader_backend", "regions", "tiles", "seconds"])
    out = Path(args.output_dir)
    print_outputs(
        out,
        [("region stores", out), ("summary", out / "run_summary.csv"), ("throughput", out / "extract_throughput.csv")],
    )
    return status


def shard_rows(output_dir: Path, kind: str, summary: str, shard: str | None, key_column: str) -> pd.DataFrame:
    """The rows of the merged ``summary`` for the slides of this process's shard (all of them for one shard)."""
    from pathme.shards import RunRecords, resolve_shard

    plan = RunRecords(output_dir, kind).read_plan()
    table = pd.read_csv(Path(output_dir) / summary, keep_default_na=False)
    if plan is None or plan.count == 1:
        return table
    return table[table[key_column].isin(plan.keys_of(resolve_shard(shard).index))]


def status_command(args: argparse.Namespace) -> int:
    """Where each sharded run in the output folder stands (pathme.shards.status); 0 when every slide has its
    output, 1 while any is missing or failed."""
    from pathme.shards import RunRecords, run_status

    kinds = [args.kind] if args.kind else RunRecords.kinds(args.output_dir)
    if not kinds:
        raise FileNotFoundError(
            f"{args.output_dir}: no records of a pathme preview, extract or embed run (records/<kind>/plan.json)"
        )
    reports = [run_status(args.output_dir, kind) for kind in kinds]
    print("\n\n".join(report.render() for report in reports))
    return int(not all(report.complete for report in reports))
