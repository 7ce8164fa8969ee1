"""The test suite itself: ``pytest`` and ``python -m pytest`` collect the same modules, and CI runs every
marker the default run leaves out.

A test module that imports another one (``from test_formats import ...``) works only where that module is
importable by name, and runs its module-level code twice under pytest's own import; shared helpers live
in tests/helpers.py (plain functions and constants) and tests/conftest.py (fixtures), and nothing imports
conftest by name either.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:  # from . import x, from .test_x import y
            names.update(f".{node.module or alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def _is_test_code(name: str) -> bool:
    top = name.lstrip(".").split(".")[0]
    return name.startswith(".") or top in ("tests", "conftest") or top.startswith("test_")


def test_no_test_module_imports_another_test_module_or_conftest():
    offenders = {
        path.name: sorted(name for name in _imported_names(path) if _is_test_code(name))
        for path in sorted(TESTS.glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_check_sees_what_it_is_meant_to_refuse(tmp_path):
    module = tmp_path / "test_example.py"
    module.write_text("import os\nfrom helpers import write_image\n\ndef test_x():\n    from test_formats import load\n"
                      "    from conftest import Page\n    import tests.test_loaders\n    from . import test_spec\n"
                      "    importlib.import_module('test_h5_import')\n")
    assert sorted(filter(_is_test_code, _imported_names(module))) == [
        ".test_spec", "conftest", "test_formats", "test_h5_import", "tests.test_loaders"]


def test_ci_runs_every_marker_the_default_run_deselects():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    deselected = re.findall(r"not (\w+)", options["addopts"])
    assert {"slow", "cluster", "e2e"} <= set(deselected)
    declared = {marker.split(":")[0] for marker in options["markers"]}
    assert set(deselected) <= declared
    ci = (ROOT / ".ci" / "run").read_text()
    for marker in deselected:
        assert re.search(rf"^python -m pytest -m {marker}( -n \d+)?$", ci, re.M), marker  # -n: how many processes
