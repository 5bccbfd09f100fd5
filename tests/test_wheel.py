"""``pip install`` of the wheel gives a working ``pathme`` with its bundles, away from the source tree.

The wheel is built from a copy of the package files, installed (without dependencies) into a fresh venv, and the
test's own environment lends that venv the dependencies through a ``.pth`` file naming its site-packages (torch,
MONAI and the rest are gigabytes; a ``.pth`` line adds a path without running that folder's own ``.pth`` files,
so the editable install of the source tree stays out). Everything then runs from a folder outside the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from pathme.synthetic.stores import write_store

#: what the wheel is built from (the rest of the checkout, tests and caches included, stays out)
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "pathme", "bundles")


def _run(command: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path, Path]:
    """(the fresh venv's python, the environment to run it in, a working folder outside the tree, the venv's
    site-packages)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # offline: nothing comes from an index
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", source], root, env)
    (wheel,) = (root / "dist").glob("pathme-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], root, env)
    python = venv / "bin" / "python"
    _run([*pip, "--python", python, "install", "--no-deps", "-q", wheel], root, env)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib], root, env).stdout.strip())
    lent = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}  # this environment's packages
    (site / "_dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(lent)))
    work = root / "work"
    work.mkdir()
    return python, env, work, site


def test_the_installed_package_is_the_wheel_and_carries_the_bundles(installed):
    python, env, work, site = installed
    script = "import pathme, pathme.bundles as b; print(pathme.__file__, b.BUNDLES_DIR, *b.bundle_names(), sep='\\n')"
    package, bundles, *names = _run([python, "-c", script], work, env).stdout.splitlines()
    assert Path(package).is_relative_to(site) and not Path(package).is_relative_to(REPO), package
    assert Path(bundles) == Path(package).parent / "_bundles"
    assert names == ["pathme_distillation", "pathme_feature_extraction", "pathme_mil"]
    for bundle in names:
        shipped = {p.relative_to(bundles): p for p in (Path(bundles) / bundle).rglob("*") if p.is_file()}
        folder = REPO / "bundles" / bundle
        needed = [folder / "LICENSE", *(folder / "configs").iterdir(), *(folder / "docs").iterdir()]
        assert {p.relative_to(REPO / "bundles") for p in needed} <= set(shipped)  # every config, doc and licence
        assert all(path.read_bytes() == (REPO / "bundles" / name).read_bytes() for name, path in shipped.items())


def test_pathme_extract_help_runs_from_the_installed_command(installed):
    python, env, work, _ = installed
    done = _run([python.with_name("pathme"), "extract", "--help"], work, env)
    assert "--tiles-per-batch" in done.stdout and "(default 64)" in done.stdout


@pytest.mark.slow
def test_monai_bundle_run_of_the_installed_mil_bundle(installed):
    """The MIL bundle, found with ``python -m pathme.bundles``, trains 2 folds on tiny random stores."""
    python, env, work, site = installed
    bundle = Path(_run([python, "-m", "pathme.bundles", "pathme_mil"], work, env).stdout.strip())
    assert bundle.is_relative_to(site) and (bundle / "configs" / "train.json").is_file()
    stores = work / "stores"
    stores.mkdir()
    for index in range(8):
        write_store(stores, f"s{index}", f"p{index}", ["full"], {"tiny-vit": 16})
    labels = pd.DataFrame({"patient_id": [f"p{i}" for i in range(8)], "label": ["a", "b"] * 4})
    labels.to_csv(work / "labels.csv", index=False)
    configs = bundle / "configs"
    command = [python, "-m", "monai.bundle", "run", "--config_file", configs / "train.json"]
    command += ["--meta_file", configs / "metadata.json", "--logging_file", configs / "logging.conf"]
    command += ["--dataset_dir", "stores", "--labels", "labels.csv", "--output_dir", "mil_run"]
    command += ["--feature_source", "tiny-vit", "--num_folds", "2", "--max_epochs", "2", "--min_epochs", "1"]
    command += ["--heatmaps", "False"]
    done = _run(command, work, env)
    assert "auroc" in done.stdout
    summary = pd.read_csv(work / "mil_run" / "summary.csv").set_index("metric")
    assert summary.loc["auroc", "folds"] == 2
