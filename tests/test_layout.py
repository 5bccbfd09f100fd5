"""The package's layout rules: one module name, one place; every public function and class documented."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pathme

PACKAGE = Path(pathme.__file__).parent


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def _undocumented(tree: ast.AST, prefix: str = "") -> list[str]:
    """Qualified names of the public functions, classes and methods of public classes without a docstring."""
    missing = []
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name.startswith("_"):
            continue
        if ast.get_docstring(node) is None:
            missing.append(prefix + node.name)
        if isinstance(node, ast.ClassDef):
            missing += _undocumented(node, f"{prefix}{node.name}.")
    return missing


def test_no_module_name_is_used_in_two_packages() -> None:
    places = defaultdict(list)
    for path in _modules():
        if path.name != "__init__.py":
            places[path.name].append(str(path.relative_to(PACKAGE)))
    assert {name: where for name, where in places.items() if len(where) > 1} == {}


def test_every_public_function_and_class_has_a_docstring() -> None:
    missing = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in _modules()
        for name in _undocumented(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert missing == []


def test_demo_and_fixture_generators_live_apart_from_the_training_datasets() -> None:
    data = {path.name for path in (PACKAGE / "data").glob("*.py")}
    demo = {path.name for path in (PACKAGE / "demo").glob("*.py")}
    synthetic = {path.name for path in (PACKAGE / "synthetic").glob("*.py")}
    assert {"cohort_generator.py", "sample_data.py"} <= demo and {"slides.py", "stores.py"} <= synthetic
    assert not any("synthetic" in name or "sample" in name or "cohort" in name for name in data)
    assert not any(name.startswith("synthetic") for name in demo)  # test fixtures are not the demo's


#: pathme's units from the bottom up (docs/architecture.md draws them): a module imports from its own unit and the
#: units before it, never from one after it; ``pathme`` itself (its version) is below them all
LAYERS = (
    "tables",
    "gpu_libraries",
    "device",
    "wsi",
    "store",
    "synthetic",
    "cohorts",
    "wheels",
    "console",
    "shards",
    "metrics",
    "losses",
    "networks",
    "encoders",
    "data",
    "viz",
    "engines",
    "bundles",
    "deploy",
    "demo",
    "cli",
)


def _unit(module: str) -> str:
    """``pathme.engines.mil`` -> ``engines``; ``pathme`` -> "" (the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(package: Path) -> list[str]:
    """Every import (at any depth of a module) of a unit above the importing module's unit in ``LAYERS``, as
    ``file: imports module (unit above unit)``; a unit missing from LAYERS is reported too, so a new package must
    be placed."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        source = _unit(".".join(part for part in relative.parts if part != "__init__"))
        if source and source not in LAYERS:
            found.append(f"{path.relative_to(package.parent)}: unit {source!r} is not in LAYERS")
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                target = _unit(name) if name.startswith(f"{package.name}.") else ""
                if source and target and (target not in LAYERS or LAYERS.index(target) > LAYERS.index(source)):
                    found.append(f"{path.relative_to(package.parent)}: imports {name} ({target} is above {source})")
    return found


def test_no_module_imports_from_a_unit_above_its_own() -> None:
    assert upward_imports(PACKAGE) == []


def test_the_layer_check_finds_a_planted_upward_import(tmp_path: Path) -> None:
    planted = tmp_path / "pathme" / "wsi"
    planted.mkdir(parents=True)
    (planted / "reader.py").write_text("def read():\n    from pathme.engines.mil import MILTask\n")
    (tmp_path / "pathme" / "newunit.py").write_text("import pathme.wsi\n")
    assert upward_imports(tmp_path / "pathme") == [
        "pathme/newunit.py: unit 'newunit' is not in LAYERS",
        "pathme/wsi/reader.py: imports pathme.engines.mil (engines is above wsi)",
    ]
