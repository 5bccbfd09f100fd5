"""Where the MONAI bundles live, so the ``pathme`` command can run the same configs as ``monai bundle run``."""

from __future__ import annotations

from pathlib import Path

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def bundle_dir(name: str) -> Path:
    """The folder of bundle ``name``; bundles ship with the source tree, next to the package."""
    path = BUNDLES_DIR / name
    if not (path / "configs").is_dir():
        raise FileNotFoundError(
            f"bundle {name} not found at {path}: the pathme command runs the bundles of a source checkout "
            "(git clone, then `pip install -e .`)"
        )
    return path


def run_bundle(name: str, config: str | list[str], **overrides: object) -> None:
    """Run a bundle config exactly as ``python -m monai.bundle run --config_file ...`` would, with overrides."""
    from monai.bundle import run

    root = bundle_dir(name)
    files = [str(root / "configs" / file) for file in ([config] if isinstance(config, str) else config)]
    run(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        **overrides,
    )
