"""Where the MONAI bundles live, so the ``pathme`` command can run the same configs as ``monai bundle run``.

The bundles are kept in the top-level ``bundles/`` folder of the source tree; the wheel carries that folder as
``pathme/_bundles`` (setup.py). ``python -m pathme.bundles [NAME]`` prints where they are, for ``monai bundle run``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from pathme import console

_PACKAGE = Path(__file__).resolve().parent
#: the bundles of an installed wheel (``pathme/_bundles``), else those of the source checkout beside the package
BUNDLES_DIR = _PACKAGE / "_bundles" if (_PACKAGE / "_bundles").is_dir() else _PACKAGE.parent / "bundles"


def bundle_names() -> list[str]:
    """The names of the bundles found, sorted (each a folder with ``configs/metadata.json``)."""
    return sorted(path.name for path in BUNDLES_DIR.glob("*") if (path / "configs" / "metadata.json").is_file())


def bundle_dir(name: str) -> Path:
    """The folder of bundle ``name`` (its ``configs/``, ``docs/``, ``LICENSE``).

    Raises:
        FileNotFoundError: no such bundle; the message lists the bundles there are.
    """
    path = BUNDLES_DIR / name
    if not (path / "configs").is_dir():
        raise FileNotFoundError(f"bundle {name} not found in {BUNDLES_DIR}; the bundles: {', '.join(bundle_names())}")
    return path


def run_bundle(name: str, config: str | list[str], **overrides: object) -> None:
    """Run a bundle config exactly as ``python -m monai.bundle run --config_file ...`` would, with overrides. Under
    the pathme command's logging (:mod:`pathme.console`) the bundle's ``logging.conf`` is not applied: it would
    replace that set-up (log file included) with INFO on standard output."""
    from monai.bundle import run

    root = bundle_dir(name)
    files = [str(root / "configs" / file) for file in ([config] if isinstance(config, str) else config)]
    if console.active():
        console.route_monai_loggers()
    with warnings.catch_warnings():
        # MONAI warns that a config's "$" expressions are evaluated, for configs from elsewhere; these are pathme's
        warnings.filterwarnings("ignore", message="parsing config_file", category=UserWarning)
        run(
            config_file=files if len(files) > 1 else files[0],
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=False if console.active() else str(root / "configs" / "logging.conf"),
            **overrides,
        )


def main(argv: list[str] | None = None) -> int:
    """Print the folder of each bundle named in ``argv`` (default: every bundle, one per line); 2 for an unknown
    name."""
    names = sys.argv[1:] if argv is None else argv
    try:
        folders = [bundle_dir(name) for name in names or bundle_names()]
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    print("\n".join(map(str, folders)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
