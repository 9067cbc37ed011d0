"""The package's layout: a module imports only from its own folder or the floors below; no two folders import
each other.

Read from the source (imports inside functions included), so a lazy import cannot hide an arrow running back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kd_hydra"

#: Floors from the ground up: a module may import from its own floor's folder or from lower floors only.
FLOORS = (
    ("errors", "enums", "losses", "instantiate"),
    ("records",),
    ("models", "trackers"),
    ("methods",),
    ("train",),
    ("stores",),
    ("data",),
    ("config",),
    ("run",),
    ("sweeps",),
    ("api", "cli", "__init__"),
)
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def room(module: str) -> str:
    """``kd_hydra.train.trainer`` -> ``train``; ``kd_hydra`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative.with_suffix(".py")).is_file() or (PACKAGE.parent / relative).is_dir()


def imports_of(path: Path) -> set[str]:
    """Every ``kd_hydra`` module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "kd_hydra":  # from kd_hydra import x: the submodule x
                found |= {f"kd_hydra.{alias.name}" for alias in node.names}
            elif target.startswith("kd_hydra."):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names if _is_module(f"{target}.{alias.name}")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("kd_hydra.")}
    return found


MODULES = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_room_has_a_floor() -> None:
    assert {room(module) for module in MODULES} <= set(FLOOR_OF), "a new folder of kd_hydra needs its floor here"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_back_up(module: str) -> None:
    mine = FLOOR_OF[room(module)]
    upward = sorted(target for target in MODULES[module] if FLOOR_OF[room(target)] > mine)
    assert not upward, f"{module} (floor {mine}) imports from a higher floor: {upward}"


def test_no_two_folders_import_each_other() -> None:
    arrows = {(room(module), room(target)) for module, targets in MODULES.items() for target in targets}
    circles = sorted((a, b) for a, b in arrows if a < b and (b, a) in arrows and a != b)
    assert not circles, f"folders that import each other: {circles}"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` (module -> modules it imports), one per strongly connected group of several modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                found.append(sorted([node, *group]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other() -> None:
    """No circle of modules, even through an import inside a function (a lazy import hides a circle, not removes it)."""
    graph = {module: {t for t in targets if t != module} for module, targets in MODULES.items()}
    assert not circles(graph), f"modules that import each other, directly or around a circle: {circles(graph)}"


def test_the_circle_finder_finds_circles() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_method_imports_the_training_loop() -> None:
    offenders = sorted(
        m for m, targets in MODULES.items() if room(m) == "methods" and any(room(t) == "train" for t in targets)
    )
    assert not offenders, f"modules under methods/ import kd_hydra.train: {offenders}"


def test_lazy_and_relative_imports_are_read() -> None:
    """The reader sees an import inside a function (app's lazy ones) and resolves a method's relative imports."""
    assert "kd_hydra.models.features" in MODULES["kd_hydra.run.app"] | MODULES["kd_hydra.run.context"]
    assert "kd_hydra.methods.base" in MODULES["kd_hydra.methods.kd"]
    assert FLOOR_OF[room("kd_hydra.methods.kd")] < FLOOR_OF[room("kd_hydra.train.trainer")]
