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


def test_demo_generators_live_apart_from_the_training_datasets() -> None:
    data = {path.name for path in (PACKAGE / "data").glob("*.py")}
    demo = {path.name for path in (PACKAGE / "demo").glob("*.py")}
    assert {"cohort_generator.py", "sample_data.py", "synthetic_slides.py", "synthetic_stores.py"} <= demo
    assert not any("synthetic" in name or "sample" in name or "cohort" in name for name in data)
