"""Experts from other packages: a package built and pip-installed here registers a tiny non-timm expert through the
``pathme.experts`` entry points; pathme lists it with its package, extracts region stores with it, refuses an
expert named like a built-in one, and leaves out a plugin that fails to import with one warning."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO

from pathme.cli import main
from pathme.encoders import ExpertClashError, ExpertDefinition, build_expert, get_spec, list_experts
from pathme.encoders.plugins import load_plugins
from pathme.engines.extraction import CohortExtractor
from pathme.store import validate_store

EXPERT = "mylab-tiny8"
PACKAGE = "mylab-experts 0.1"

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1"

[project.entry-points."pathme.experts"]
{entry} = "{module}:experts"

[tool.setuptools]
py-modules = ["{module}"]
"""


def readme_block(first_line: str) -> str:
    """The README's code block of "Experts from other packages" from its line starting with ``first_line``."""
    text = (REPO / "README.md").read_text()
    start = text.index(first_line)
    return text[start : text.index("```", start)]


#: the README's example plugin module: a two-layer conv net with its own normalisation, dim 8, seeded weights
EXPERT_MODULE = readme_block("# mylab_experts.py")


def write_plugin(folder: Path, dist: str, source: str) -> Path:
    """A source folder of the distribution ``dist`` 0.1 whose module is ``source``: ``dist`` with underscores,
    named by its ``pathme.experts`` entry point (``dist``'s first word) with its function ``experts``."""
    folder.mkdir(parents=True)
    module, entry = dist.replace("-", "_"), dist.split("-")[0]
    (folder / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, entry=entry, module=module))
    (folder / f"{module}.py").write_text(source)
    return folder


def pip(*args: str | Path) -> None:
    """Run pip offline (``--no-index``; setuptools builds in this environment, ``--no-build-isolation``)."""
    command = [sys.executable, "-m", "pip", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def install_elsewhere(project: Path, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install ``project`` into ``site`` and put that on this process's path: seen by this test alone, so a clash
    or a broken plugin never reaches other processes using the environment."""
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "--target", site, project)
    monkeypatch.syspath_prepend(site)  # also invalidates the import caches


@pytest.fixture(autouse=True)
def fresh_plugins() -> Iterator[None]:
    """Entry points are loaded once per process: look again in each test, and after it, when the modules of the
    plugins a test installed elsewhere are forgotten too (another test may install another module of that name)."""
    load_plugins.cache_clear()
    yield
    load_plugins.cache_clear()
    for module in ("clash_experts", "copy_experts", "broken_experts"):
        sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """mylab-experts 0.1 pip-installed into the test environment, uninstalled afterwards; yields its expert."""
    project = write_plugin(tmp_path_factory.mktemp("plugin") / "mylab-experts", "mylab-experts", EXPERT_MODULE)
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", project)
    importlib.invalidate_caches()
    try:
        yield EXPERT
    finally:
        pip("uninstall", "-y", "-q", "mylab-experts")
        sys.modules.pop("mylab_experts", None)
        importlib.invalidate_caches()


def test_pathme_experts_lists_a_plugin_expert_with_its_package(
    installed_plugin: str, capsys: pytest.CaptureFixture
) -> None:
    assert list_experts()[-1] == installed_plugin
    assert isinstance(get_spec(installed_plugin), ExpertDefinition)
    assert main(["experts"]) == 0
    printed = capsys.readouterr().out.splitlines()
    (line,) = [line for line in printed if line.startswith(installed_plugin + " ")]
    assert line.split()[1:3] == ["8", "-"] and "32x32" in line and line.endswith(PACKAGE)
    assert printed[0].split()[-1] == "source"
    assert next(line for line in printed if line.startswith("uni ")).endswith(" pathme")
    shown = readme_block("expert                       dim").splitlines()
    assert set(shown) - {"..."} <= set(printed)  # the README's excerpt is what `pathme experts` prints


def test_extraction_with_a_plugin_expert_writes_a_valid_store(
    installed_plugin: str, cmu_slide: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide_id,path\ncmu,{cmu_slide}\n")
    summary = CohortExtractor(manifest, tmp_path / "out", [installed_plugin], batch_size=32, num_workers=0).run()
    assert summary["status"].tolist() == ["done"], summary.to_string()
    attrs = validate_store(tmp_path / "out" / "cmu.h5", experts=[installed_plugin])
    expert = build_expert(installed_plugin)
    assert expert.weights_digest.startswith("sha256:")
    assert attrs["expert_dims"] == {installed_plugin: 8}
    assert attrs["expert_weights"] == {installed_plugin: "package"}
    assert attrs["expert_digests"] == {installed_plugin: expert.weights_digest}
    with h5py.File(tmp_path / "out" / "cmu.h5", "r") as store:
        features, valid = store[f"features/{installed_plugin}/L0"][:], store["valid/L0"][:]
    assert features.shape == (*valid.shape, 8) and valid.any()
    assert np.abs(features[valid]).sum(axis=-1).min() > 0  # every valid tile was encoded


def test_a_plugin_expert_named_like_a_built_in_one_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = EXPERT_MODULE.replace(f'name = "{EXPERT}"', 'name = "tiny-vit"')
    assert source != EXPERT_MODULE
    project = write_plugin(tmp_path / "clash", "clash-experts", source)
    install_elsewhere(project, tmp_path / "site", monkeypatch)
    message = (
        "expert 'tiny-vit' is defined by both pathme and clash-experts 0.1 (entry point clash = clash_experts:experts "
        "of group pathme.experts); uninstall one of them, or rename the expert in clash-experts 0.1"
    )
    with pytest.raises(ExpertClashError) as refused:
        build_expert("tiny-vit")
    assert str(refused.value) == message
    assert main(["experts"]) == 2
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == [message]


def test_two_packages_defining_one_expert_are_refused_naming_both(
    installed_plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_elsewhere(write_plugin(tmp_path / "copy", "copy-experts", EXPERT_MODULE), tmp_path / "site", monkeypatch)
    with pytest.raises(ExpertClashError) as refused:
        list_experts()
    packages = re.match(rf"expert '{installed_plugin}' is defined by both (.+) and (.+) \(entry", str(refused.value))
    assert set(packages.groups()) == {"mylab-experts 0.1", "copy-experts 0.1"}


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            'raise RuntimeError("libmylab.so: cannot open shared object file")\n',
            "RuntimeError: libmylab.so: cannot open shared object file",
        ),
        (
            EXPERT_MODULE.replace("dim = 8", "dim = 0"),
            "ValueError: expert 'mylab-tiny8': dim must be a positive int, got 0",
        ),
    ],
    ids=["raises-on-import", "bad-definition"],
)
def test_a_plugin_that_fails_to_load_is_one_warning_and_the_rest_still_works(
    source: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    install_elsewhere(write_plugin(tmp_path / "broken", "broken-experts", source), tmp_path / "site", monkeypatch)
    assert main(["experts"]) == 0
    assert "tiny-vit" in capsys.readouterr().out
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        "expert plugin broken = broken_experts:experts (broken-experts 0.1, group pathme.experts) is left out: "
        + reason
    ]
    assert build_expert("tiny-vit").dim == 64  # built-in experts are untouched
    assert [record.levelname for record in caplog.records].count("WARNING") == 1  # entry points load once
