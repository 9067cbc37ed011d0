"""The package's layout: a module imports only from its own folder or the floors below; no two folders import
each other.

Read from the source (imports inside functions included), so a lazy import cannot hide an arrow running back up.
Also: records/ and the analysis load without torch, and the module maps of docs/development.md and the README
name every folder (and every module of the folders they map module by module) and only what exists.
"""

from __future__ import annotations

import ast
import re
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


def module_level_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it is imported (not those inside functions and classes, nor under
    ``TYPE_CHECKING``), absolute; for ``from a import b`` also ``a.b`` where ``a`` is kd_hydra's (b: maybe a module)."""
    name = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level and not path.is_relative_to(PACKAGE):
                continue  # a sibling outside kd_hydra: checked as a file of its own
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            if target.split(".")[0] == "kd_hydra":  # from kd_hydra.records import schema: maybe a submodule
                found |= {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def package_file(module: str) -> Path | None:
    """The file of ``kd_hydra`` module ``module`` (a package's ``__init__.py``); None for a name inside a module."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_on_load(path: Path) -> set[str]:
    """Every top-level package that importing ``path`` imports, following kd_hydra's own modules (their parent
    packages' ``__init__`` included)."""
    seen: set[Path] = set()
    outside: set[str] = set()
    pending = [path]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for target in module_level_imports(current):
            if not target.startswith("kd_hydra"):
                outside.add(target.split(".")[0])
                continue
            parts = target.split(".")
            pending += [file for i in range(1, len(parts) + 1) if (file := package_file(".".join(parts[:i])))]
    return outside


TORCH_FREE = sorted(
    [*(PACKAGE / "records").glob("*.py"), *(PACKAGE.parent / "analysis").glob("*.py"), PACKAGE / "__init__.py"]
)


@pytest.mark.parametrize("path", TORCH_FREE, ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_records_and_the_analysis_load_without_torch(path: Path) -> None:
    """records/ is pure Python and the analysis reads files: importing them imports no torch."""
    assert "torch" not in imported_on_load(path)


def test_the_torch_check_sees_an_import_through_kd_hydra(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from kd_hydra.records import schema\n\ndef later():\n    import torch\n")
    assert "torch" not in imported_on_load(probe)
    probe.write_text("from kd_hydra.train.runtime import Runtime\n")
    assert "torch" in imported_on_load(probe)
    probe.write_text("from kd_hydra.train import runtime\n")
    assert "torch" in imported_on_load(probe)


DEVELOPMENT = PACKAGE.parent / "docs" / "development.md"
README = PACKAGE.parent / "README.md"
#: Folders whose every module the module map names (the others it describes by kind: the zoo's families, the
#: methods, the data loaders).
MAPPED_MODULE_BY_MODULE = ("config", "records", "run", "stores", "sweeps", "train", "trackers")


def module_map() -> list[tuple[list[str], str]]:
    """docs/development.md's module map, a row a floor from the top: the folders (``run/``) and modules it names,
    and the text of the row."""
    table = DEVELOPMENT.read_text(encoding="utf-8").split("| floor | folder / module |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        _, names, holds = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows.append((re.findall(r"`([\w.]+/?)`", names), holds))
    return rows


def test_the_module_map_names_every_folder_and_module_and_nothing_else() -> None:
    rows = module_map()
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    top = {path.name for path in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert sorted(name for names, _ in rows for name in names) == sorted({f"{folder}/" for folder in folders} | top)
    for names, holds in rows:
        row_folders = [name.removesuffix("/") for name in names if name.endswith("/")]
        modules = {path.name for folder in row_folders for path in (PACKAGE / folder).glob("*.py")} - {"__init__.py"}
        named = set(re.findall(r"`(\w+\.py)`", holds))
        assert not row_folders or named <= modules, (
            f"docs/development.md names modules {names} do not have: {named - modules}"
        )
        for folder in set(row_folders) & set(MAPPED_MODULE_BY_MODULE):
            unnamed = sorted(path.name for path in (PACKAGE / folder).glob("*.py") if path.name not in named)
            assert unnamed == ["__init__.py"], f"docs/development.md's module map lacks {folder}/{unnamed[1:]}"
    layout = README.read_text(encoding="utf-8").split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    for name in [*(f"{folder}/" for folder in folders), *top]:
        assert re.search(rf"(^|[ ,]){re.escape(name)}", layout, re.M), f"the README's module map lacks {name}"


def test_the_map_lists_the_floors_of_this_file_from_the_top() -> None:
    floors = [FLOOR_OF[names[0].removesuffix("/").removesuffix(".py")] for names, _ in module_map()]
    assert floors == sorted(floors, reverse=True), "docs/development.md lists the floors from the top down"
