"""``pathme experts`` and ``pathme aggregators``: what a run can be given, as tables."""

from __future__ import annotations

import argparse

from pathme.cli.output import print_table


def aggregators_command(args: argparse.Namespace) -> int:
    """The registered MIL aggregators with their paper, tasks, instance scores and training defaults."""
    from pathme.networks.mil.aggregators import describe_aggregators

    print_table(describe_aggregators())
    print("\npathme mil train --model NAME; also --model linear-probe. Defaults and their sources: docs/mil_models.md")
    return 0


def experts_command(args: argparse.Namespace) -> int:
    """The built-in experts and those installed packages register (``source``: the package) as a table; any timm
    model is also an expert as ``timm:<name>``."""
    from pathme.encoders.registry import describe_experts

    print_table(describe_experts())
    print(
        "\nalso: any timm model as timm:<name>. Weights: a file or folder path, 'hub' (published weights) or 'random'"
        "; a plugin's experts take the weights its package documents"
    )
    return 0
