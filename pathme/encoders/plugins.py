"""Experts from other packages: the ``pathme.experts`` entry-point group.

A package registers its experts with an entry point naming a function that takes no argument and returns its
expert definitions (objects of the :class:`~pathme.encoders.protocol.ExpertDefinition` protocol), in its
``pyproject.toml``::

    [project.entry-points."pathme.experts"]
    mylab = "mylab_experts:experts"

Each expert is then available by its definition's name wherever a built-in one is (``pathme experts``,
``--experts``, :func:`~pathme.encoders.expert.build_expert`). Entry points are loaded on first use and once per
process (:func:`load_plugins` is cached; ``load_plugins.cache_clear()`` looks again). An entry point that cannot
be loaded (its module raises on import, its function raises, or returns anything but expert definitions) is left
out with one warning naming it and the error, so other experts and commands go on. An expert name registered by
two packages is an :class:`ExpertClashError` naming both; the registry raises the same where a plugin takes a
built-in expert's name.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from pathme.encoders.protocol import ExpertDefinition

logger = logging.getLogger(__name__)

GROUP = "pathme.experts"
#: the package of the built-in experts, as ``pathme experts`` names it
BUILTIN_PACKAGE = "pathme"


class ExpertClashError(ValueError):
    """Two packages define an expert of the same name; the one-line message names the expert and both packages."""


@dataclass(frozen=True)
class PluginExpert:
    """An expert another package registers: its definition, the package (distribution name and version, e.g.
    ``mylab-experts 0.1``) and the entry point (``name = module:function``)."""

    definition: ExpertDefinition
    package: str
    entry_point: str


def clash_error(name: str, package: str, plugin: PluginExpert) -> ExpertClashError:
    """The error for ``plugin`` registering the expert ``name``, which ``package`` already defines."""
    return ExpertClashError(
        f"expert {name!r} is defined by both {package} and {plugin.package} (entry point {plugin.entry_point} of "
        f"group {GROUP}); uninstall one of them, or rename the expert in {plugin.package}"
    )


def _package(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown package"


def _definitions(entry_point: EntryPoint) -> list[ExpertDefinition]:
    """The definitions the entry point's function returns. Raises what its import or call raises, TypeError for
    anything but expert definitions, ValueError for a name that is empty or holds ':', a dim that is not a positive
    int, or a transform that is not (height, width), 3 means and 3 stds."""
    definitions = list(entry_point.load()())
    for definition in definitions:
        if not isinstance(definition, ExpertDefinition):
            raise TypeError(
                f"{definition!r} is not an expert definition (name, dim, input_size, mean, std, load, features: "
                "see pathme.encoders.protocol)"
            )
        name = definition.name
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"expert name {name!r}: give a non-empty name without ':'")
        if not isinstance(definition.dim, int) or definition.dim < 1:
            raise ValueError(f"expert {name!r}: dim must be a positive int, got {definition.dim!r}")
        if [len(definition.input_size), len(definition.mean), len(definition.std)] != [2, 3, 3]:
            raise ValueError(f"expert {name!r}: input_size must be (height, width), mean and std 3 values each")
    return definitions


@functools.cache
def load_plugins() -> dict[str, PluginExpert]:
    """Expert name -> the expert an installed package registers, in entry-point order. An entry point that cannot
    be loaded is left out with one warning; raises ExpertClashError where two packages register one name."""
    plugins: dict[str, PluginExpert] = {}
    for entry_point in entry_points(group=GROUP):
        label, package = f"{entry_point.name} = {entry_point.value}", _package(entry_point)
        try:
            definitions = _definitions(entry_point)
        except Exception as error:  # a plugin's import and function may raise anything: it must not stop pathme
            reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, whatever the message
            logger.warning("expert plugin %s (%s, group %s) is left out: %s", label, package, GROUP, reason)
            continue
        for definition in definitions:
            plugin = PluginExpert(definition, package, label)
            if definition.name in plugins:
                raise clash_error(definition.name, plugins[definition.name].package, plugin)
            plugins[definition.name] = plugin
    return plugins
