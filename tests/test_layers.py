"""The architecture as DESIGN.md draws it: layers import downwards only, and no module
imports itself back through others (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedmoe"

#: Each layer and the layers it may import (besides itself and the top-level helpers).
ALLOWED = {
    "data": set(),
    "models": set(),
    "engine": {"models"},
    "federation": {"engine", "models"},
    "methods": {"federation", "engine", "models", "data"},
    "experiment": {"methods", "federation", "engine", "models", "data"},
    "sweep": {"experiment", "methods", "federation", "engine", "models", "data"},
    "report": {"sweep", "experiment", "methods", "federation", "engine", "models", "data"},
    "flower": {"experiment", "methods", "federation", "engine", "models", "data"},
}
#: Top-level modules every layer may use.
HELPERS = {"errors", "rng", "summary", "progress", "__init__"}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("fedmoe", *parts)).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fedmoe")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmoe"):
            found.add(node.module)
            # ``from fedmoe.methods import registry`` imports a submodule.
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_layers_import_downwards_only() -> None:
    wrong = []
    for module, imported in _graph().items():
        layer = _layer(module)
        if layer not in ALLOWED:
            continue
        for other in imported:
            target = _layer(other)
            if target != layer and target not in HELPERS and target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {other}")
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's __init__ re-exports its modules: an edge into it is an edge into them.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt.rsplit(".", 1)[0] == node or node.rsplit(".", 1)[0] == nxt:
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
