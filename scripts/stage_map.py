"""Stage the inputs of the PatHME MONAI Application Package (MAP) for MONAI Deploy's packager.

    python scripts/stage_map.py --models demo_output/app_models --output build/map
    cd build/map && holoscan package app -c app.yaml -m models -t pathme:0.1.0 --platform x86_64 \\
        --sdk monai-deploy --sdk-version 4.0.0

writes into the new folder ``--output``:

- ``app/``: the folder the packager copies to ``/opt/holoscan/app`` and runs as ``python3 /opt/holoscan/app``: its
  ``__main__.py`` (scripts/map/__main__.py), pathme itself with its bundles as its wheel carries them (pip installs it
  there with ``--target``), and ``requirements.txt``: every package pathme needs with the deploy extra, its
  dependencies' dependencies included, pinned as in constraints.txt, which the packager installs into the image;
- ``app.yaml``: scripts/map/app.yaml (title, version, resources);
- ``models/pathme/``: a copy of the app's model folder (a MONAI bundle: :mod:`pathme.deploy.app_models`), checked
  first as the app loads it. The packager puts each subfolder of ``models/`` under ``/opt/holoscan/models/``, the
  app's model path in the image, where the app finds its one model folder.

Why a staging step: the packager takes an application folder and a models folder, and pathme is no PyPI package yet,
so the image gets it from the application folder. Exit status 1 with one line on a model folder the app would refuse.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from email.parser import Parser
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pathme.deploy.app_models import APP_CONFIG, AppModels, inside

ROOT = Path(__file__).resolve().parents[1]
MAP_FILES = ROOT / "scripts" / "map"
MODEL_NAME = "pathme"


def pins(constraints: Path) -> dict[str, str]:
    """Package name (canonical) -> its pinned version in a pip constraints file."""
    found = {}
    for line in constraints.read_text().splitlines():
        if match := re.fullmatch(r"\s*([A-Za-z0-9._-]+)==([^\s;#]+).*", line):
            found[canonicalize_name(match[1])] = match[2]
    return found


def requirements(metadata: Path, pinned: dict[str, str], extras: tuple[str, ...] = ("deploy",)) -> list[str]:
    """Every package pathme needs with ``extras``, its own ``Requires-Dist`` (a wheel's METADATA) and theirs in
    turn as installed here, markers evaluated here (the image is Linux x86_64 too), each as ``name==version``: the
    pin of ``pinned`` (constraints.txt), else the installed version; one not installed here as its requirement."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [(text, extras) for text in Parser().parsestr(metadata.read_text()).get_all("Requires-Dist") or []]
    while queue:
        text, wanted_extras = queue.pop()
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": e}) for e in (*wanted_extras, "")):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            installed = distribution(requirement.name)
        except PackageNotFoundError:
            found.setdefault(name, str(requirement))
            continue
        found[name] = f"{name}=={pinned.get(name, installed.version)}"
        queue += [(text, tuple(requirement.extras)) for text in installed.requires or []]
    return sorted(found.values())


def stage(models: Path, output: Path) -> Path:
    """Stage the MAP inputs of the app model folder ``models`` into the new folder ``output``; returns ``output``.
    FileNotFoundError or ValueError (the app's own) for a model folder it would refuse, ValueError for expert weights
    outside it (they would not be in the image); FileExistsError when ``output`` exists."""
    root = AppModels.load(models).root
    config = json.loads((root / APP_CONFIG).read_text())
    for expert, weights in config.get("weights", {}).items():
        if Path(weights).is_absolute() or (Path(weights).exists() and inside(root, weights) == weights):
            raise ValueError(
                f"{root / APP_CONFIG}: the weights of {expert}, {weights}, are outside the model folder, so not in the "
                f"image; copy them into {root / 'models'} and give their path relative to the folder"
            )
    output.mkdir(parents=True)
    app = output / "app"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(app)]
    subprocess.run([*pip, str(ROOT)], check=True)
    shutil.rmtree(app / "bin")  # the pathme command, which the app does not run
    shutil.copy(MAP_FILES / "__main__.py", app / "__main__.py")
    [metadata] = app.glob("pathme-*.dist-info/METADATA")
    lines = requirements(metadata, pins(ROOT / "constraints.txt"))
    (app / "requirements.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(MAP_FILES / "app.yaml", output / "app.yaml")
    shutil.copytree(root, output / "models" / MODEL_NAME)
    return output


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and stage; a refused model folder or an existing output folder is one line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="the app's model folder (pathme_app.json, ...)")
    parser.add_argument("--output", type=Path, required=True, help="a new folder for app/, app.yaml and models/")
    args = parser.parse_args(argv)
    try:
        output = stage(args.models, args.output)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"stage_map: {error}")
    print(f"staged {output}: app/, app.yaml, models/{MODEL_NAME}/; build the MAP there with holoscan package (README)")


if __name__ == "__main__":
    main()
