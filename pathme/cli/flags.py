"""What a ``pathme`` flag is: the help texts several commands share, a bundle config's ids as flags
(:class:`BundleFlags`), their defaults read from the config file, and the old spellings kept for one release."""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathme.bundles import bundle_dir
from pathme.wsi.readers import AUTO, BACKENDS

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
        given = {config_id: getattr(args, flag_dest(config_id)) for config_id in self.helps}
        return {
            key: str(value) if isinstance(value, Path) else value for key, value in given.items() if value is not None
        }


class _OldSpelling(argparse.Action):
    """A flag's old spelling, kept working for one release: it sets the new flag's value and leaves a deprecation
    warning in ``namespace.old_spellings`` for :func:`pathme.cli.main` to log once logging is in place."""

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


def flag_dest(config_id: str) -> str:
    """``tissue#min_tile_fraction`` -> ``tissue_min_tile_fraction``, where argparse keeps the flag's value."""
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
    name, options = flag_name(config_id), {"dest": flag_dest(config_id), "default": None, "required": required}
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


def parse_mapping_flags(args: argparse.Namespace, flags: BundleFlags) -> None:
    """Turn the KEY=VALUE lists of mapping ids into mappings, in place."""
    values = flags.config_values()
    for config_id in flags.helps:
        given = getattr(args, flag_dest(config_id))
        if isinstance(values[config_id], dict) and given is not None:
            setattr(args, flag_dest(config_id), _key_values(given, flag_name(config_id)))
