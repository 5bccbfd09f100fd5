"""Benchmark: what PatHME distillation adds over raw expert features, on a task where it should and one where it
need not.

The demo cohort (``pathme.demo.cohort_generator``) carries two signals on the same slides: ``planted`` (a dark block
that any of its 20x tiles shows: the easy control) and ``context`` (the arrangement of two tile pools: the multiset
of a slide's 20x tiles is the same in both classes, tests/test_demo_cohort.py, so only 5x / 1.25x context tells them
apart). With the demo's stages (``pathme.demo.walkthrough``), this script extracts features of the evaluated cohort
and of a separate distillation cohort (other patients, another seed), distils a teacher on the latter, embeds the
former, and runs the same cross-validated ABMIL (patient-level folds, seeds fixed) on every feature source:

* ``pathme``: PatHME region tokens [R x 26] (10 prompts + 16 5x tokens per region with tissue);
* ``pathme-mean``: one mean token per region [R];
* expert A raw 20x [R x 256], expert A raw 5x (``@5x``, [R x 16]), expert B raw 20x.

Per signal, task and source it reports AUROC (label) or c-index (survival) as mean +- sd over folds, valid
instances per slide, MIL seconds per fold; and the distillation and embedding cost. With ``--ablations`` it also
distils one teacher per :data:`ABLATIONS` variant (a teacher after one step, about its random initialisation; four
times the iterations; without the expert-to-expert KD; without the DINO and iBOT self-distillation) and runs the
context signal's MIL on each one's tokens. Every figure comes from this invocation: the derived folders of an
earlier one are removed first (the cohorts, deterministic, are kept). Prints markdown tables and writes JSON
beside the runs.

Usage: ``python scripts/bench_value.py --out bench_value_output [--experts tiny|pretrained] [--slides 40]
[--distill-slides 8] [--distill-iterations 100] [--folds 5] [--seed 0] [--ablations]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from pathme.console import console_logging
from pathme.data.bags import BagIndex
from pathme.demo.walkthrough import (
    DemoSettings,
    distill_teacher,
    embed_tokens,
    extract_features,
    mil_runs,
    prepare_cohorts,
)
from pathme.store.atomic import write_atomic

METRICS = {"label": "auroc", "survival": "c_index"}
#: teacher variants of --ablations: the distillation bundle ids each replaces, given --distill-iterations
ABLATIONS: dict[str, Callable[[int], dict[str, object]]] = {
    "one step (about the initialisation)": lambda iterations: {"max_iterations": 1},
    "four times the iterations": lambda iterations: {"max_iterations": 4 * iterations},
    "no expert-to-expert KD (kd 0)": lambda iterations: {"loss_weights#kd": 0.0},
    "no DINO / iBOT (dino 0, ibot 0)": lambda iterations: {"loss_weights#dino": 0.0, "loss_weights#ibot": 0.0},
}
DERIVED = ("features", "distill_features", "distillation", "tokens", "mil", "ablations")


def sources(settings: DemoSettings) -> list[str]:
    """The compared feature sources: PatHME's two, then expert A at 20x and 5x and expert B at 20x."""
    expert_a, expert_b = settings.expert_names
    return ["pathme", "pathme-mean", expert_a, f"{expert_a}@5x", expert_b]


def timed(function: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Seconds ``function(*args, **kwargs)`` took."""
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def instances_per_slide(tokens: Path, source: str) -> float:
    """Mean number of valid instances (tokens) a slide's bag holds for ``source``."""
    index = BagIndex(tokens, source, cache_bytes=0)
    return sum(index.token_counts().values()) / len(index.slide_patients)


def table(results: pd.DataFrame, folds: int, instances: dict[str, float]) -> str:
    """Markdown: one row per signal, task and source with the task's metric, instances per slide, MIL s/fold."""
    rows = results[results["metric"] == results["task"].map(METRICS)]
    lines = [
        "| signal | task | features | metric (mean ± sd over folds) | instances / slide | MIL s / fold |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows.itertuples():
        lines.append(
            f"| {row.signal} | {row.task} | {row.features} | {row.metric} {row.mean:.3f} ± {row.sd:.3f} "
            f"| {instances[row.features]:.0f} | {row.seconds / folds:.1f} |"
        )
    return "\n".join(lines)


def run_ablations(out: Path, settings: DemoSettings) -> pd.DataFrame:
    """Each ABLATIONS teacher distilled, embedded and evaluated by MIL on the context signal (PatHME tokens)."""
    rows = []
    for number, (name, overrides) in enumerate(ABLATIONS.items()):
        folder = f"ablations/{number}"
        config = overrides(settings.distill_iterations)
        seconds = timed(distill_teacher, out, settings, f"{folder}/distillation", **config)
        embed_tokens(out, f"{folder}/distillation", f"{folder}/tokens")
        results = mil_runs(out, settings, ["pathme"], ["context"], f"{folder}/tokens", f"{folder}/mil")
        rows.append(results.assign(ablation=name, distillation_s=seconds))
    return pd.concat(rows, ignore_index=True)


def ablation_table(main: pd.DataFrame, ablations: pd.DataFrame, iterations: int) -> str:
    """Markdown: the context signal's metrics with PatHME tokens, the main teacher first, then each variant."""
    main = main[(main["signal"] == "context") & (main["features"] == "pathme")]
    rows = pd.concat([main.assign(ablation=f"main teacher ({iterations} iterations)"), ablations])
    rows = rows[rows["metric"] == rows["task"].map(METRICS)]
    cells = rows.assign(value=[f"{m:.3f} ± {s:.3f}" for m, s in zip(rows["mean"], rows["sd"], strict=True)])
    pivot = cells.pivot(index="ablation", columns="task", values="value").reindex(cells["ablation"].unique())
    lines = ["| teacher | context label AUROC | context survival c-index |", "|---|---|---|"]
    lines += [f"| {name} | {row['label']} | {row['survival']} |" for name, row in pivot.iterrows()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_value_output"))
    parser.add_argument("--experts", choices=("tiny", "pretrained"), default="tiny")
    parser.add_argument("--slides", type=int, default=40)
    parser.add_argument("--distill-slides", type=int, default=8)
    parser.add_argument("--distill-iterations", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true", help="also the teacher variants of ABLATIONS")
    args = parser.parse_args()
    with console_logging(args.out):  # as `pathme demo`: a line per stage on the console, the full log in pathme.log
        bench(args)


def bench(args: argparse.Namespace) -> None:
    """Every stage, the report (``<out>/bench_value.json``) and its tables, printed."""
    settings = DemoSettings(
        slides=args.slides,
        seed=args.seed,
        distill_iterations=args.distill_iterations,
        distill_slides=args.distill_slides,
        folds=args.folds,
        experts=args.experts,
    )
    torch.manual_seed(args.seed)
    for folder in DERIVED:
        shutil.rmtree(args.out / folder, ignore_errors=True)
    cohort, distill = prepare_cohorts(args.out, settings)
    costs = {"extraction_s": timed(extract_features, args.out, cohort, distill, settings)}
    costs["distillation_s"] = timed(distill_teacher, args.out, settings)
    costs["embedding_s"] = timed(embed_tokens, args.out)
    compared = sources(settings)
    results = mil_runs(args.out, settings, compared)
    instances = {source: instances_per_slide(args.out / "tokens", source) for source in compared}
    ablations = run_ablations(args.out, settings) if args.ablations else pd.DataFrame()
    report = {
        "settings": vars(args) | {"out": str(args.out), "experts": list(settings.expert_names)},
        "costs": costs,
        "instances_per_slide": instances,
        "results": results.to_dict("records"),
        "ablations": ablations.to_dict("records"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
    }
    write_atomic(args.out / "bench_value.json", json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nexperts A, B: {', '.join(settings.expert_names)}; {args.slides} slides evaluated, teacher distilled")
    print(f"on {args.distill_slides} other slides for {args.distill_iterations} iterations in")
    print(f"{costs['distillation_s']:.0f} s, tokens embedded in {costs['embedding_s']:.0f} s ({report['machine']})\n")
    print(table(results, args.folds, instances))
    if args.ablations:
        print("\nablations (context signal, PatHME tokens):\n")
        print(ablation_table(results, ablations, args.distill_iterations))


if __name__ == "__main__":
    main()
