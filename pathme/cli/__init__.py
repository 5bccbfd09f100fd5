"""The ``pathme`` command: thin wrappers over the package, one subcommand per job.

The bundle subcommands (``extract``, ``distill``, ``embed``, ``mil``) run one bundle config as ``monai bundle
run`` does, and their flags are that config's ids: ``--output-dir`` is ``output_dir``, ``--tissue-mpp`` is
``tissue#mpp``. Each flag's help shows the bundle's default, read from the config file itself, and a flag left out
leaves the bundle's default in place.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pathme import __version__
from pathme.cli.parser import build_parser
from pathme.console import console_logging
from pathme.gpu_libraries import import_image_codecs_quietly
from pathme.shards.run import Interrupted
from pathme.wsi.slide_error import error_reason

__all__ = ["build_parser", "main", "output_folder"]

logger = logging.getLogger("pathme")


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
