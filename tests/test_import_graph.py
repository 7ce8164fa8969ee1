"""No import cycles between FERBench's modules, counting imports inside functions too.

A cycle hides behind a lazy import until someone moves it to the top of the file; then the package
stops importing. ``from pkg import submodule`` counts as an import of the submodule alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "backbones", "reports")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = ("ferbench", *path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module → the FERBench modules it imports anywhere in its code."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "ferbench.harness.study.engine" in graph["ferbench.harness.cli.main"]  # imported inside cmd_run
    assert {"ferbench.backbones.registry", "ferbench.harness.study.checkpoints"} <= set().union(*graph.values())


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, frontier = set(), [start]
    while frontier:
        for target in graph[frontier.pop()] - seen:
            seen.add(target)
            frontier.append(target)
    return seen


def test_reports_read_an_experiment_without_the_trainable_or_the_engine():
    """The report builder needs the folder's layout (ferbench.harness.study.layout), not Ray Tune's trainable or the
    study engine: rendering a report must not import what runs a study."""
    graph = import_graph()
    for module in (m for m in graph if m == "ferbench.reports" or m.startswith("ferbench.reports.")):
        assert not {"ferbench.harness.train.trial", "ferbench.harness.study.engine"} & _reachable(graph, module), module


def test_the_layers_depend_one_way():
    """backbones ← harness ← reports: backbones import neither of the others; harness reaches the report only
    through the package's public entry points (``ferbench.reports``), from the engine's report phase and the
    ``ferbench report`` command, never a report module directly."""
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("ferbench.backbones"):
            assert not {t for t in targets if t.startswith(("ferbench.harness", "ferbench.reports"))}, module
        if module.startswith("ferbench.harness"):
            reports = {t for t in targets if t.startswith("ferbench.reports")}
            assert reports <= {"ferbench.reports"}, (module, reports)
            assert not reports or module in {"ferbench.harness.study.engine", "ferbench.harness.cli.main"}, module
