"""Benchmark: every MIL aggregator and the linear probe on the same folds, PatHME tokens against raw features.

On the demo cohort (``pathme.demo.cohort_generator``: 40 slides of 32 patients, seed 0) with the demo's stages
(``pathme.demo.walkthrough``: extraction with experts A and B, a tiny teacher distilled on 8 other slides, tokens
embedded), every model of ``--models`` (default: every registered aggregator, then ``linear-probe``) runs the same
patient-level cross-validation (``--folds`` folds, ``--seed``) with its own defaults (lr, weight decay, dropout:
``pathme aggregators``) on three feature sources: PatHME tokens (``pathme``), expert A's raw 20x features and its
raw 5x features, for both signals of the cohort (``planted``: any 20x tile of a dark block shows it; ``context``:
only the arrangement of tiles does) and both tasks (``label``: AUROC; ``survival``, discrete-time NLL: c-index).

Each model x source runs in a child process, so its peak RSS (``VmHWM``) is its own; s/epoch is the child's MIL
seconds over the epochs its folds trained (loading bags and evaluating included). ``--max-epochs`` caps every
fold (pathme's default is 30; on a 2-core CPU 10 keeps the table under an hour), and ``--hidden NAME=WIDTH``
narrows a member (TransMIL's 512 takes 1.4 s a step on 551 instances there). Prints markdown tables and writes
``<out>/bench_mil_models.json``.

Usage: ``python scripts/bench_mil_models.py --out bench_mil_models_output [--max-epochs 10] [--hidden transmil=64]
[--models abmil dsmil linear-probe] [--reuse]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

METRICS = {"label": "auroc", "survival": "c_index"}
SIGNALS = {"planted": "labels.csv", "context": "labels_context.csv"}


def prepare(out: Path, slides: int, seed: int, folds: int, reuse: bool) -> tuple[str, str]:
    """The demo's stages into ``out`` (kept with ``--reuse`` when its tokens are there); expert A's name twice:
    its 20x and 5x sources."""
    from pathme.console import console_logging
    from pathme.demo.walkthrough import DemoSettings, distill_teacher, embed_tokens, extract_features, prepare_cohorts

    settings = DemoSettings(slides=slides, seed=seed, folds=folds)
    expert = settings.expert_names[0]
    if reuse and len(list((out / "tokens").glob("*.h5"))) == slides:
        return expert, f"{expert}@5x"
    for folder in ("features", "distill_features", "distillation", "tokens", "mil"):
        shutil.rmtree(out / folder, ignore_errors=True)
    with console_logging(out):
        cohort, distill = prepare_cohorts(out, settings)
        extract_features(out, cohort, distill, settings)
        distill_teacher(out, settings)
        embed_tokens(out)
    return expert, f"{expert}@5x"


def child(out: Path, model: str, source: str, folds: int, seed: int, max_epochs: int, hidden: int | None) -> list:
    """Every signal x task of one model on one source (runs in the child); one row per metric."""
    from pathme.console import console_logging
    from pathme.engines.mil import TrainSettings
    from pathme.engines.mil_workflow import MILRun

    rows = []
    with console_logging(out / "mil"):
        for signal, labels in SIGNALS.items():
            for task in METRICS:
                output = out / "mil" / f"{model}_{source}_{signal}_{task}"
                shutil.rmtree(output, ignore_errors=True)
                settings = TrainSettings(max_epochs=max_epochs, min_epochs=min(10, max_epochs))
                run = MILRun(out / "tokens", out / "cohort" / labels, task, output, source, num_folds=folds, seed=seed,
                             model=model, hidden=hidden, settings=settings, heatmaps=False)  # fmt: skip
                started = time.perf_counter()
                summary = run.run()
                seconds = time.perf_counter() - started
                results = pd.read_csv(output / "results.csv")
                epochs = int(results["epochs"].sum()) if "epochs" in results else 0
                for row in summary.to_dict("records"):
                    rows.append({"signal": signal, "task": task, "seconds": seconds, "epochs": epochs} | row)
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident set since its exec, in MB (``VmHWM``; ``ru_maxrss`` would count the parent's
    pages the child held between fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_child(args: argparse.Namespace, model: str, source: str, hidden: int | None) -> tuple[list, float]:
    """The child's rows and its peak RSS in MB."""
    command = [sys.executable, __file__, "--out", str(args.out), "--folds", str(args.folds), "--seed", str(args.seed)]
    command += ["--max-epochs", str(args.max_epochs), "--child", model, source, str(hidden or 0)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{model} on {source} failed (status {done.returncode}); see {args.out}/mil/pathme.log")
    found = json.loads(done.stdout.splitlines()[-1])
    return found["rows"], found["peak_rss_mb"]


def tables(frame: pd.DataFrame, sources: dict[str, str]) -> str:
    """Markdown: per signal, each model's metric per source and task; then s/epoch and peak RSS per source."""
    scored = frame[frame["metric"] == frame["task"].map(METRICS)]
    cell = scored.assign(value=[f"{m:.3f} ± {s:.3f}" for m, s in zip(scored["mean"], scored["sd"], strict=True)])
    models = list(dict.fromkeys(frame["model"]))
    parts = []
    for signal in SIGNALS:
        head = [f"{task} {METRICS[task].replace('_', '-').replace('auroc', 'AUROC')} {name}"
                for task in METRICS for name in sources.values()]  # fmt: skip
        lines = [f"| {signal}: model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for model in models:
            values = []
            for task in METRICS:
                for source in sources:
                    hit = cell[(cell["model"] == model) & (cell["signal"] == signal) & (cell["task"] == task)
                               & (cell["source"] == source)]  # fmt: skip
                    values.append(hit["value"].iloc[0] if len(hit) else "")
            lines.append(f"| {model} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    cost = frame.drop_duplicates(["model", "source", "signal", "task"])
    cost = cost.groupby(["model", "source"], sort=False).agg(seconds=("seconds", "sum"), epochs=("epochs", "sum"),
                                                               peak=("peak_rss_mb", "max"))  # fmt: skip
    head = [f"{kind} {name}" for kind in ("s/epoch", "peak RSS MB") for name in sources.values()]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for model in models:
        per = [cost.loc[(model, s)] if (model, s) in cost.index else None for s in sources]
        epochs = [f"{c.seconds / c.epochs:.2f}" if c is not None and c.epochs else "-" for c in per]
        peaks = [f"{c.peak:.0f}" if c is not None else "" for c in per]
        lines.append(f"| {model} | " + " | ".join(epochs + peaks) + " |")
    parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_mil_models_output"))
    parser.add_argument("--slides", type=int, default=40)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--hidden", nargs="*", default=[], metavar="NAME=WIDTH")
    parser.add_argument("--reuse", action="store_true", help="keep the stages of an earlier run in --out")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, source, hidden = args.child
        rows = child(args.out, model, source, args.folds, args.seed, args.max_epochs, int(hidden) or None)
        print(json.dumps({"rows": rows, "peak_rss_mb": peak_rss_mb()}, default=float))
        return
    from pathme.networks import AGGREGATORS

    models = args.models or [*AGGREGATORS, "linear-probe"]
    widths = {name: int(width) for name, width in (item.split("=") for item in args.hidden)}
    expert_20x, expert_5x = prepare(args.out, args.slides, args.seed, args.folds, args.reuse)
    sources = {"pathme": "tokens", expert_20x: "raw 20x", expert_5x: "raw 5x"}
    rows = []
    for model in models:
        for source in sources:
            found, peak = run_child(args, model, source, widths.get(model))
            rows += [row | {"model": model, "source": source, "peak_rss_mb": peak} for row in found]
            print(f"{model} on {source}: done, peak RSS {peak:.0f} MB", flush=True)
    frame = pd.DataFrame(rows)
    report = {
        "settings": vars(args) | {"out": str(args.out), "models": models, "hidden": widths},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "rows": frame.to_dict("records"),
    }
    (args.out / "bench_mil_models.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(tables(frame, sources))


if __name__ == "__main__":
    main()
