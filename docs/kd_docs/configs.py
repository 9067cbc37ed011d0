"""kd-hydra's config as the code composes it: groups, their options, and every key with its type and default.

Everything is read from a live composition (``kd_hydra.config.compose``), so the description follows the
structured configs (``kd_hydra/config/structured.py``) and the YAML groups (``conf/``) as they are at build time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import AnyNode, BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

from kd_hydra.config.compose import compose, hydra_session
from kd_hydra.config.sources import CLONE_CONFIGS
from kd_hydra.data.config import LOADER_KEYS, loader_takes

from .yaml_notes import YamlNotes, option_notes, read_notes

#: Groups whose options are set at the top level (``# @package _global_``): presets, not key tables.
GLOBAL_PACKAGE = "@package _global_"
#: Hydra groups documented with kd-hydra's own options (the rest are Hydra's internals).
HYDRA_GROUPS = ("hydra/sweeper", "hydra/launcher")

_TYPE_NAMES = {IntegerNode: "int", FloatNode: "float", BooleanNode: "bool", StringNode: "str"}
_MISSING = object()
_FIELD_LINE = re.compile(r"^\s+(?P<name>\w+)\s*:[^#]*#\s*(?P<note>.+)$")


@dataclass(frozen=True)
class KeyInfo:
    """One leaf key: dotted path from the root, type, default as YAML text, allowed values, the YAML note."""

    key: str
    type: str
    default: str
    allowed: str
    note: str


@dataclass(frozen=True)
class Option:
    """One option of a group: its override (``dataset=digits``), summary and the keys it gives the config."""

    group: str
    name: str
    override: str
    summary: str
    keys: tuple[KeyInfo, ...]
    is_preset: bool
    node: Any = field(default=None, compare=False, repr=False)  # the composed node (None for presets)


@dataclass(frozen=True)
class Group:
    """A config group: where it lands in the config (``package``), its default option and its options."""

    name: str
    choice_key: str
    package: str
    default: str | None
    options: tuple[Option, ...]


class Composer:
    """Composes configs from overrides inside one Hydra session (about 0.1 s each)."""

    def __init__(self, hydra: Any) -> None:
        self.hydra = hydra
        self._cache: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, overrides: Sequence[str] = ()) -> DictConfig:
        key = tuple(overrides)
        if key not in self._cache:
            self._cache[key] = compose(self.hydra, list(overrides))
        return self._cache[key]

    def options(self, group: str) -> list[str]:
        """The options a user can pick: never a ``*_schema`` node; for Hydra's groups, kd-hydra's own files."""
        found = self.hydra.config_loader.get_group_options(group)
        if group.startswith("hydra/"):
            return [name for name in found if (CLONE_CONFIGS / group / f"{name}.yaml").is_file()]
        return [name for name in found if not name.endswith("_schema")]


@contextlib.contextmanager
def composer() -> Iterator[Composer]:
    """A :class:`Composer` over kd-hydra's own configs; Hydra's global state is restored afterwards."""
    with hydra_session() as hydra:
        yield Composer(hydra)


def yaml_text(value: Any) -> str:
    """A value as it would be written on the command line or in YAML."""
    if isinstance(value, Enum):
        return value.name
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str).replace('"', "")
    return str(value)


def _type_name(node: Any) -> str:
    if isinstance(node, DictConfig):
        name = "dict"
    elif isinstance(node, ListConfig):
        name = "list"
    elif isinstance(node, EnumNode):
        name = node._metadata.ref_type.__name__
    elif type(node) in _TYPE_NAMES:
        name = _TYPE_NAMES[type(node)]
    elif isinstance(node, AnyNode):
        value = node._value()
        if value is None or (isinstance(value, str) and value.startswith("${")):
            return "any"
        return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)
    else:
        name = type(node).__name__.removesuffix("Node").lower()
    if node._is_optional() and not isinstance(node, AnyNode):
        name += " | null"
    return name


def _allowed(node: Any) -> str:
    if isinstance(node, EnumNode):
        return ", ".join(member.name for member in node._metadata.ref_type)
    return ""


def _default(node: Any) -> str:
    if isinstance(node, (DictConfig, ListConfig)):
        if node._is_none():
            return "null"
        if node._is_interpolation():
            return str(node._value())
        return yaml_text(OmegaConf.to_container(node, resolve=False))
    value = node._value()
    return "???" if value == "???" else yaml_text(value)


def field_notes(node: DictConfig) -> dict[str, str]:
    """The comment beside each field of the structured config (dataclass) behind ``node``, if any."""
    kind = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(kind):
        return {}
    try:
        source = inspect.getsource(kind)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            found[match["name"]] = match["note"].strip()
    return found


def leaf_keys(node: DictConfig, prefix: str, notes: YamlNotes | None = None, note_prefix: str = "") -> list[KeyInfo]:
    """Every leaf under ``node`` (dicts are walked; lists, empty and null dicts are leaves), as :class:`KeyInfo`.

    A key's note is its YAML comment, else the comment beside its field in the structured config.
    """
    found: list[KeyInfo] = []
    from_code = field_notes(node)
    for key in node.keys():
        child = node._get_node(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        relative = f"{note_prefix}.{key}" if note_prefix else str(key)
        walk = isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation() and len(child)
        if walk:
            found.extend(leaf_keys(child, dotted, notes, relative))
            continue
        note = (notes.keys.get(relative, "") if notes else "") or from_code.get(str(key), "")
        found.append(KeyInfo(dotted, _type_name(child), _default(child), _allowed(child), note))
    return found


def choices(cfg: DictConfig) -> dict[str, str | None]:
    """The composed config's group choices (``hydra.runtime.choices``)."""
    return dict(OmegaConf.to_container(cfg.hydra.runtime.choices))


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation() and len(node):
        flat: dict[str, str] = {}
        for key in node.keys():
            flat.update(_flat(node._get_node(key), f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: _default(node)}


def preset_changes(comp: Composer, preset_override: str, groups: Sequence[Group]) -> list[tuple[str, str]]:
    """What a preset changes: group choices (``dataset: digits``), then every key that differs from those options.

    Hydra's own settings are left out except the run mode and the sweeper (what a preset sweeps).
    """
    base, preset = comp(), comp([preset_override])
    base_choices, preset_choices = choices(base), choices(preset)
    by_key = {group.choice_key: group for group in groups}
    picked = [
        (group, option)
        for group, option in preset_choices.items()
        if group in by_key and not all(o.is_preset for o in by_key[group].options)
        if option != base_choices.get(group)
    ]
    changes = [(group, yaml_text(option)) for group, option in picked]
    before = _flat(base)
    for choice_key, option in picked:
        package = by_key[choice_key].package
        before = {key: value for key, value in before.items() if not _under(key, package)}
        node = next((o.node for o in by_key[choice_key].options if o.name == option), None)
        before.update(_flat(node, package) if node is not None else {})
    for key, value in _flat(preset).items():
        if key.startswith("hydra.") and not (key == "hydra.mode" or key.startswith("hydra.sweeper.")):
            continue
        if before.get(key, _MISSING) != value:
            changes.append((key, value))
    return changes


def _under(key: str, package: str) -> bool:
    return key == package or key.startswith(package + ".")


def _package_node(cfg: DictConfig, package: str) -> Any:
    return OmegaConf.select(cfg, package, default=None, throw_on_missing=False)


def describe_groups(comp: Composer) -> list[Group]:
    """Every group of the default composition (plus kd-hydra's sweeper and launchers) with all its options."""
    base = comp()
    plans = []
    for choice_key, default in choices(base).items():
        if choice_key == "hydra" or (choice_key.startswith("hydra/") and choice_key not in HYDRA_GROUPS):
            continue
        group, _, package = choice_key.partition("@")
        package = package or group.replace("/", ".")
        entries = []
        for name in comp.options(group):
            notes = option_notes(CLONE_CONFIGS, group, name)
            is_preset = any(line.startswith(GLOBAL_PACKAGE) for line in notes.header)
            entries.append((name, notes, is_preset))
        plans.append((choice_key, group, package, default, entries))
    nodes = _option_nodes(comp, plans)
    groups: list[Group] = []
    for choice_key, group, package, default, entries in plans:
        options = []
        for name, notes, is_preset in entries:
            override = f"{choice_key}={name}"
            node = nodes.get(override)
            keys = tuple(read_keys(group, node, leaf_keys(node, package, notes))) if node is not None else ()
            options.append(Option(group, name, override, notes.summary, keys, is_preset, node))
        groups.append(Group(group, choice_key, package, default, tuple(options)))
    return groups


def read_keys(group: str, node: DictConfig, keys: list[KeyInfo]) -> list[KeyInfo]:
    """The keys an option reads: a dataset's loader-only keys (``dataset.in_memory`` of ``arrays``) that its
    loader does not take are refused when set, so they are not listed for it."""
    if group != "dataset":
        return keys
    unused = {f"dataset.{key}" for key in LOADER_KEYS if not loader_takes(node, key)}
    return [info for info in keys if info.key not in unused]


def _option_nodes(comp: Composer, plans: list) -> dict[str, DictConfig]:
    """override -> the option's composed node; the k-th option of every group is composed in one go."""
    base = comp()
    queues: dict[str, list[str]] = {}
    packages: dict[str, str] = {}
    nodes: dict[str, DictConfig] = {}
    for choice_key, _, package, default, entries in plans:
        packages[choice_key] = package
        for name, _, is_preset in entries:
            if is_preset:
                continue
            if name == default:
                nodes[f"{choice_key}={name}"] = _package_node(base, package)
            else:
                queues.setdefault(choice_key, []).append(name)
    for index in range(max((len(names) for names in queues.values()), default=0)):
        batch = {key: names[index] for key, names in queues.items() if index < len(names)}
        cfg = comp([f"{key}={name}" for key, name in batch.items()])
        picked = choices(cfg)
        for key, name in batch.items():
            own = cfg if picked.get(key) == name else comp([f"{key}={name}"])  # options that interact: alone
            nodes[f"{key}={name}"] = _package_node(own, packages[key])
    return {key: node for key, node in nodes.items() if isinstance(node, DictConfig) and not node._is_none()}


def root_keys(comp: Composer, groups: Sequence[Group]) -> list[KeyInfo]:
    """Top-level keys that no group sets (``mode``, ``teacher_training.*``, ``soft_label_cache.*``, ...)."""
    base = comp()
    packages = {group.package for group in groups} | {"hydra"}
    nested = tuple(p + "." for p in packages if "." in p)  # e.g. teacher_training.optimizer: set by a group
    notes = read_notes(CLONE_CONFIGS / "config.yaml")
    from_code = field_notes(base)
    found = []
    for key in base.keys():
        child = base._get_node(key)
        if key in packages and not child._is_none():  # a group that is off by default (table) is a key of its own
            continue
        if isinstance(child, DictConfig) and not child._is_none() and len(child):
            leaves = leaf_keys(child, str(key), notes, str(key))
            found.extend(info for info in leaves if not info.key.startswith(nested))
        else:
            note = notes.keys.get(str(key), "") or from_code.get(str(key), "")
            found.append(KeyInfo(str(key), _type_name(child), _default(child), _allowed(child), note))
    return found


def callback_keys(comp: Composer) -> list[KeyInfo]:
    """The end-of-job and end-of-sweep callbacks' keys (``hydra.callbacks.*``)."""
    node = _package_node(comp(), "hydra.callbacks")
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for name in node.keys():
        notes = read_notes(CLONE_CONFIGS / "hydra" / "callbacks" / f"{name}.yaml")
        keys.extend(leaf_keys(node[name], f"hydra.callbacks.{name}", notes, str(name)))
    return keys


def conf_dir() -> Path:
    """The config directory the docs describe (the clone's ``conf/``)."""
    return CLONE_CONFIGS
