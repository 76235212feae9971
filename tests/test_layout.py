"""The package layout: stages import each other in one direction only.

Every import in ``ssu/`` and ``data_prep/`` is read with ``ast`` -- module-level and
inside functions alike -- and resolved to the project module it names. The graph
must have no cycle (so in particular no two modules import each other), and
``data_prep`` must import nothing from ``ssu``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssu", "data_prep")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports (``from a.b import c`` counts a.b.c if it is a module, else a.b)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import ssu.vectors.io as x` -> ssu.vectors.io
                t = t.rpartition(".")[0]
            if t and t != name and t.split(".")[0] in PACKAGES:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles(graph):
    mutual = sorted((a, b) for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, set()))
    assert not mutual, f"modules importing each other: {mutual}"
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            # a package's __init__ is imported by its submodules' import machinery, not by them:
            # an edge into one's own package is not a cycle of the code
            if m.startswith(d + "."):
                continue
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(d):] + [d])}")
            if state.get(d) is None:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_data_prep_depends_on_nothing_in_ssu(graph):
    bad = {m: sorted(d for d in deps if d.startswith("ssu")) for m, deps in graph.items() if m.startswith("data_prep")}
    assert not any(bad.values()), bad


@pytest.mark.parametrize("stage", ["ssu.engine", "ssu.vectors", "ssu.methods", "ssu.metrics", "ssu.eval",
                                   "ssu.models", "ssu.compare", "ssu.run", "ssu.step", "ssu.cli"])
def test_each_stage_imports_cleanly(stage):
    module = importlib.import_module(stage)
    assert module.__name__ == stage and module.__doc__, f"{stage} imports but has no docstring saying what it is"
