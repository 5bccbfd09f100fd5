"""The commands that make a cohort to run on: ``pathme sample-data``, ``demo-cohort`` and ``cohort-from-gdc``, and
``pathme demo``, the whole pipeline on a demo cohort."""

from __future__ import annotations

import argparse

from pathme.console import LOG_FILE


def cohort_from_gdc_command(args: argparse.Namespace) -> int:
    """manifest.csv and label files from GDC downloads and the clinical TSV (pathme.cohorts.gdc)."""
    from pathme.cohorts.gdc import cohort_from_gdc

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


def sample_data_command(args: argparse.Namespace) -> int:
    """The real CMU H&E sample slide in the output folder (pathme.demo.sample_data); prints its path."""
    from pathme.demo.sample_data import fetch_sample_slide

    print(fetch_sample_slide(args.output_dir))
    return 0


def demo_cohort_command(args: argparse.Namespace) -> int:
    """A labelled demo cohort from real H&E pixels (pathme.demo.cohort_generator); prints what it wrote."""
    from pathme.demo.cohort_generator import make_demo_cohort
    from pathme.demo.sample_data import fetch_sample_slide

    source = args.source or fetch_sample_slide(args.output_dir / "source")
    print(make_demo_cohort(args.output_dir, source, n_slides=args.slides, seed=args.seed))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """The whole pipeline on a demo cohort (pathme.demo.walkthrough), ending with the metrics table."""
    from pathme.demo.walkthrough import DemoSettings, run_demo

    names = ("slides", "seed", "reader_backend", "distill_iterations", "distill_slides", "folds", "experts")
    run_demo(args.output_dir, DemoSettings(**{name: getattr(args, name) for name in names}))
    print(f"full log: {(args.output_dir / LOG_FILE).resolve()}")
    return 0
