"""The package layout: stages import each other in one direction only (docs/architecture.md).

Every import in ``ssu/`` and ``data_prep/`` is read with ``ast`` -- module-level and
inside functions alike -- and resolved to the project module it names. Each module
belongs to a stage (``data_prep``, or ``ssu.<first part>``), and the stages are ordered
in layers: a module may import its own stage and the stages of lower layers only --
never a higher layer, and never another stage of its own layer. Within a stage, the
modules may not import each other in a cycle. ``test_the_checker_catches_a_back_edge``
shows the checker failing on a fabricated function-level back-edge.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssu", "data_prep")

# Lowest first; the order docs/architecture.md draws.
LAYERS: list[tuple[str, ...]] = [
    ("ssu.errors",),
    ("ssu.io", "ssu.registry"),
    ("ssu.config", "ssu.presets"),
    ("data_prep",),
    ("ssu.metrics",),
    ("ssu.models", "ssu.vectors"),
    ("ssu.engine",),
    ("ssu.methods", "ssu.regularizers"),
    ("ssu.eval",),
    ("ssu.recipes",),
    ("ssu.compare",),
    ("ssu.demo",),
    ("ssu.cli",),
]


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (``from a.b import c`` counts
    a.b.c if it is a module, else a.b)."""
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
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import ssu.vectors.io as x` -> ssu.vectors.io
                t = t.rpartition(".")[0]
            if t and t != name and t.split(".")[0] in PACKAGES:
                found.add(t)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def stage(module: str) -> str:
    """``data_prep.windows`` -> ``data_prep``; ``ssu.engine.saliency`` -> ``ssu.engine``; ``ssu`` -> ``ssu``."""
    parts = module.split(".")
    return parts[0] if parts[0] == "data_prep" else ".".join(parts[:2])


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import that goes up a layer or across to another stage of the same layer, and every
    module whose stage has no layer."""
    layer = {s: i for i, group in enumerate(layers) for s in group}
    out = []
    for module, deps in sorted(graph.items()):
        here = stage(module)
        if here == "ssu":  # the package root: a docstring and a version, nothing imported
            out += [f"ssu/__init__ imports {d}" for d in sorted(deps)]
            continue
        if here not in layer:
            out.append(f"{module}: stage {here} has no layer")
            continue
        for d in sorted(deps):
            there = stage(d)
            if there == here or there == "ssu":
                continue
            if there not in layer or layer[there] >= layer[here]:
                out.append(f"{module} imports {d}: {here} (layer {layer[here]}) may not import "
                           f"{there} (layer {layer.get(there, '?')})")
    return out


def cycles_within_stages(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    found: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            # a package's __init__ is imported by its submodules' import machinery, not by them
            if m.startswith(d + ".") or stage(d) != stage(m):
                continue
            if state.get(d) == 1:
                found.append(" -> ".join(path[path.index(d):] + [d]))
            elif state.get(d) is None:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_stages_import_in_one_direction(graph):
    assert layer_violations(graph) == []


def test_no_import_cycles_within_a_stage(graph):
    assert cycles_within_stages(graph) == []


def test_every_stage_of_the_tree_has_a_layer(graph):
    stages = {stage(m) for m in graph} - {"ssu"}
    assert stages == {s for group in LAYERS for s in group}


def test_the_checker_catches_a_back_edge(tmp_path):
    """A fabricated tree: the engine reaching up into the recipes from inside a function."""
    for rel, text in {
        "ssu/__init__.py": '"""root"""\n',
        "ssu/errors.py": "",
        "ssu/engine/__init__.py": "",
        "ssu/engine/loop.py": "from ssu.errors import SSUError\n\n\ndef f():\n    from ssu.recipes import step\n",
        "ssu/recipes/__init__.py": "",
        "ssu/recipes/step.py": "import ssu.engine.loop\n",
        "data_prep/__init__.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = layer_violations(import_graph(tmp_path))
    assert found == ["ssu.engine.loop imports ssu.recipes.step: ssu.engine (layer 6) may not import "
                     "ssu.recipes (layer 9)"]
    across = layer_violations({"ssu.methods.ga": {"ssu.regularizers.kl"}})  # same layer, other stage
    assert len(across) == 1 and "ssu.methods (layer 7) may not import ssu.regularizers (layer 7)" in across[0]


def test_nothing_below_the_recipes_reads_the_run_directory_or_the_schedule(graph):
    """The schedule and the run directory are read by the recipes (and above) only."""
    recipes = next(i for i, group in enumerate(LAYERS) if "ssu.recipes" in group)
    low = {s for group in LAYERS[:recipes] for s in group} - {"data_prep"}
    offenders = []
    for name, path in modules().items():
        if stage(name) not in low:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            words = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else \
                [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else \
                [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []
            offenders += [f"{name}: {w}" for w in words if w in ("load_schedule", "RunDir", "manifest.json")]
    assert offenders == []


@pytest.mark.parametrize("name", sorted({s for group in LAYERS for s in group} | {"ssu"}))
def test_each_stage_imports_cleanly_and_says_what_it_is(name):
    module = importlib.import_module(name)
    assert module.__name__ == name and module.__doc__, f"{name} imports but has no docstring saying what it is"
