"""Every YAML file of the config search path checked before Hydra reads it: one line naming the file.

Checked: YAML syntax, tags other than YAML's plain ones (``!!python/object`` and friends, which the safe
loader refuses anyway: nothing runs), and the size a file expands to through anchors and aliases, so a
small "billion laughs" file is refused instead of hanging the composition. Imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml
from omegaconf._utils import get_yaml_loader

from kd_hydra.errors import ConfigError

#: Most nodes (mappings, lists, scalars) a config file may hold once its aliases are expanded.
MAX_CONFIG_NODES = 100_000
#: Tags a config file may use: YAML's own plain types.
PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
)
CONFIG_SUFFIXES = (".yaml", ".yml")


def config_files(directories: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every YAML file below the given directories (hidden folders skipped), in a stable order."""
    for directory in directories:
        for parent, folders, names in os.walk(directory):
            folders[:] = sorted(f for f in folders if not f.startswith((".", "__")))
            for name in sorted(names):
                if name.endswith(CONFIG_SUFFIXES):
                    yield Path(parent) / name


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in ``root`` with every alias expanded, counted up to just past ``limit`` (aliases share nodes)."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:  # a recursive alias expands without end
            return limit + 1
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total = min(limit + 1, total + size(child))
            if total > limit:
                break
        in_progress.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _foreign_tag(root: yaml.Node) -> yaml.Node | None:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in PLAIN_TAGS:
            return node
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
    return None


def check_config_file(path: Path, max_nodes: int = MAX_CONFIG_NODES) -> None:
    """Raise a :class:`ConfigError` naming ``path`` if it is not plain, bounded YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(str(path), f"cannot read config file ({error}); expected UTF-8 YAML") from None
    try:
        root = yaml.compose(text, Loader=get_yaml_loader())
    except yaml.YAMLError as error:
        raise ConfigError(str(path), f"YAML syntax error: {_yaml_reason(error)}") from None
    if root is None:
        return
    foreign = _foreign_tag(root)
    if foreign is not None:
        raise ConfigError(
            str(path),
            f"line {foreign.start_mark.line + 1}: tag {foreign.tag!r} is not allowed; "
            "config files hold plain YAML values (no Python objects)",
        )
    if expanded_size(root, max_nodes) > max_nodes:
        raise ConfigError(
            str(path),
            f"expands to more than {max_nodes} values through YAML anchors/aliases; refused "
            "(a config this large is almost certainly an alias bomb)",
        )


def _yaml_reason(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def check_config_files(directories: Iterable[str | os.PathLike]) -> None:
    """:func:`check_config_file` on every YAML file below ``directories``."""
    for path in config_files(directories):
        check_config_file(path)
