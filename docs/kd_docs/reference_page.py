"""The configuration reference and the preset list, rendered as Markdown from :mod:`kd_docs.configs`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .configs import (
    Composer,
    Group,
    KeyInfo,
    Option,
    callback_keys,
    conf_dir,
    preset_changes,
    root_keys,
)
from .yaml_notes import read_notes

#: Line that names the overrides a key table is valid for; tests/test_docs.py reads it back.
OPTIONS_PREFIX = "Valid with: "
_GROUP_ORDER = ("dataset", "teacher", "student", "loss", "optimizer", "scheduler", "trainer", "paths", "logger")


def text(value: str) -> str:
    """Prose for a table cell: Markdown and HTML specials escaped, pipes kept inside the cell."""
    value = value.replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([*_\[\]|`])", r"\\\1", value)


def code(value: str) -> str:
    """A code span for a table cell (a value that holds a pipe or a backtick is shown as escaped text)."""
    if "|" in value or "`" in value:
        return text(value)
    return f"`{value}`" if value else ""


def key_table(keys: Iterable[KeyInfo], with_default: bool = True) -> list[str]:
    rows = ["| key | type | default | allowed | note |", "| --- | --- | --- | --- | --- |"]
    for info in keys:
        default = code(info.default) if with_default else "per option (below)"
        rows.append(f"| {code(info.key)} | {text(info.type)} | {default} | {text(info.allowed)} | {text(info.note)} |")
    return rows


def families(options: Sequence[Option]) -> list[list[Option]]:
    """Options grouped by the exact set of keys they give (architectures share one set, datasets differ)."""
    grouped: dict[tuple[str, ...], list[Option]] = {}
    for option in options:
        grouped.setdefault(tuple(info.key for info in option.keys), []).append(option)
    return list(grouped.values())


def family_section(group: Group, family: list[Option]) -> list[str]:
    names = ", ".join(f"`{option.name}`" for option in family)
    lines = [f"### {group.name}: {names}", ""]
    for option in family:
        if option.summary:
            lines.append(f"- `{option.override}`: {text(option.summary)}")
    lines += ["", OPTIONS_PREFIX + ", ".join(f"`{option.override}`" for option in family), ""]
    first = family[0]
    varying = [
        index for index, info in enumerate(first.keys) if len({option.keys[index].default for option in family}) > 1
    ]
    notes = {}
    for option in family:
        for info in option.keys:
            notes.setdefault(info.key, info.note or "")
            notes[info.key] = notes[info.key] or info.note
    merged = [KeyInfo(info.key, info.type, info.default, info.allowed, notes[info.key]) for info in first.keys]
    common = [info for index, info in enumerate(merged) if index not in varying]
    lines += key_table(common)
    if varying:
        header = "| option | " + " | ".join(code(first.keys[index].key) for index in varying) + " |"
        lines += ["", "Per option:", "", header, "| --- |" + " --- |" * len(varying)]
        for option in family:
            cells = " | ".join(code(option.keys[index].default) for index in varying)
            lines.append(f"| `{option.name}` | {cells} |")
    lines.append("")
    return lines


def _ordered(groups: Sequence[Group]) -> list[Group]:
    rank = {name: index for index, name in enumerate(_GROUP_ORDER)}
    return sorted(groups, key=lambda group: (group.name.startswith("hydra/"), rank.get(group.name, len(rank))))


def reference_page(comp: Composer, groups: Sequence[Group]) -> str:
    """The whole configuration reference: groups, top-level keys, then every group's keys per option."""
    groups = _ordered(groups)
    keyed = [group for group in groups if not all(option.is_preset for option in group.options)]
    presets = [group for group in groups if group not in keyed]
    lines = [
        "# Configuration reference",
        "",
        "Generated when this site is built, from the composed configuration: the structured configs of",
        "`kd_hydra/config/structured.py` (types; enums in `kd_hydra/enums.py`) and the YAML groups under `conf/`",
        "(options, defaults, the notes next to each key). Any key can be overridden on the command line",
        "(`key=value`); `group=option` picks an option. Types are checked when Hydra composes the config;",
        "ranges and combinations by",
        "`kd_hydra.config.checks.validate` before any data is read. `???` marks a value you must give; `${...}` is an",
        "interpolation (the value of another key).",
        "",
        "## Groups",
        "",
        "| group | default | options |",
        "| --- | --- | --- |",
    ]
    for group in groups:
        options = ", ".join(f"`{option.name}`" for option in group.options)
        lines.append(f"| `{group.choice_key}` | {code(group.default or 'null')} | {options} |")
    listed = ", ".join(f"`{group.choice_key}`" for group in presets)
    lines += ["", f"Presets ({listed}) set keys of several groups at once: see [Presets](presets.md)."]
    lines += ["", "## Top-level keys", "", OPTIONS_PREFIX + "(the default config)", ""]
    lines += key_table(root_keys(comp, groups))
    for group in keyed:
        lines += ["", f"## {group.choice_key}", ""]
        lines.append(f"`{group.choice_key}=<option>` puts the option's keys under `{group.package}`.")
        lines.append("")
        for family in families(group.options):
            lines += family_section(group, family)
    callbacks = callback_keys(comp)
    if callbacks:
        lines += ["## hydra/callbacks", "", OPTIONS_PREFIX + "(the default config)", ""]
        lines += key_table(callbacks)
    return "\n".join(lines) + "\n"


def presets_page(comp: Composer, groups: Sequence[Group]) -> str:
    """Every preset (experiment, hparams_search) with its description and what it changes."""
    groups = _ordered(groups)
    choice_keys = {group.choice_key for group in groups}
    lines = [
        "# Presets",
        "",
        "Generated when this site is built from the preset files (`# @package _global_`) and what each",
        "one changes in the composed config (group choices, then every key whose value differs from those",
        "options' defaults; `hydra.mode: MULTIRUN` means the preset is a sweep, `hydra.sweeper.params` what",
        "it sweeps). Add `key=value` overrides after the preset to change any of it.",
        "",
    ]
    for group in groups:
        if not group.options or not all(option.is_preset for option in group.options):
            continue
        lines += [f"## {group.choice_key}", ""]
        for option in group.options:
            lines += [f"### {option.name}", "", OPTIONS_PREFIX + f"`{option.override}`", ""]
            notes = read_notes(conf_dir() / option.group / f"{option.name}.yaml")
            if notes.summary:
                lines += [text(notes.summary), ""]
            if notes.commands:
                lines += ["```bash", *notes.commands, "```", ""]
            changes = preset_changes(comp, option.override, groups)
            picks = [f"`{key}={value}`" for key, value in changes if key in choice_keys]
            if picks:
                lines += ["Picks " + ", ".join(picks) + ", and sets:", ""]
            lines += ["| key | value |", "| --- | --- |"]
            lines += [f"| {code(key)} | {code(value)} |" for key, value in changes if key not in choice_keys]
            lines.append("")
    return "\n".join(lines) + "\n"
