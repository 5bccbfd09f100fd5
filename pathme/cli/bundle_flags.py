"""The flags of the bundle commands: the ids of each bundle config that ``pathme extract``, ``distill``, ``embed``
and ``mil`` set, with what each means (their defaults are read from the config files)."""

from __future__ import annotations

from pathme.cli.flags import DEVICE_HELP, MPP_TOLERANCE_HELP, SHARD_HELP, TISSUE_HELP, BundleFlags
from pathme.data.label_format import SURVIVAL_LOSSES
from pathme.store.schema import FEATURE_DTYPES
from pathme.wsi.readers import BACKENDS

EXTRACT = BundleFlags(
    "pathme_feature_extraction",
    "inference.json",
    {
        "manifest": "CSV with slide_id, path[, mpp][, patient_id]",
        "output_dir": "folder for <slide_id>.h5 and run_summary.csv",
        "experts": "expert names (`pathme experts` lists them) or timm:<model name>",
        "weights": "EXPERT=PATH per expert: a weight file or a folder holding one (a Hugging Face snapshot or cache "
        "folder); or EXPERT=hub (the published weights), EXPERT=random",
        "reader_backend": "slide reader; auto tries, per slide, the readers of its form (cucim then openslide for a "
        "file, wsidicom for a DICOM folder)",
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
        "freeze_last_layer": "steps the DINO/iBOT heads' last layer stays frozen (null: the first epoch)",
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
        "views#min_valid_local": "valid tiles a local window needs to be drawn (where none has that many: the "
        "windows with the most)",
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
