"""Import structure: no cycle among project modules, a numpy-only `selection`, nothing imports `backend`."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("backend", "bench", "demo", "formats", "metrics", "model", "selection", "synth")
SELECTION_MAY_IMPORT = {"numpy", "scipy", "selection"}  # and the standard library


def _modules() -> dict[str, Path]:
    """Every project module name -> its file."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports anywhere (top level, in functions, under ``if TYPE_CHECKING``).

    ``from a import b`` yields ``a.b`` when that is a project module (a submodule: importing it runs package
    ``a`` first, which is not a dependency of ``a.b`` on ``a``'s contents), else ``a``; relative imports are
    resolved.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent if is_package else parent[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if sub in MODULES else base)
    return names


def _project_target(name: str) -> str | None:
    """The project module an imported name refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a package's ``__init__`` counts as the package)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_project_target(n) for n in _imported_names(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_are_resolved(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import rules\nfrom .lsm import score_image\n")
    assert _imported_names(path, "selection.batch") >= {"selection.rules", "selection.lsm"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_selection_imports_only_numpy_scipy_and_the_standard_library():
    bad = []
    for module, path in MODULES.items():
        if module.split(".")[0] != "selection":
            continue
        for name in _imported_names(path, module):
            top = name.split(".")[0]
            if top and top not in SELECTION_MAY_IMPORT and top not in sys.stdlib_module_names:
                bad.append(f"{module} imports {name}")
    assert not bad, bad


# The demo is an application on top of everything (like the tests): it drives Label Studio with the
# backend's project helpers. No library package may import the backend.
MAY_IMPORT_BACKEND = {"backend", "demo"}


def test_nothing_imports_backend():
    graph = import_graph()
    bad = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.split(".")[0] not in MAY_IMPORT_BACKEND
        for target in targets
        if target.split(".")[0] == "backend"
    ]
    assert not bad, bad
