"""The run-directory schema (``kd_hydra.records.schema``) as Markdown tables: metrics.json keys and history.csv columns.

The keys are the module's tuples at build time; each key's note is the comment beside it in the module's source.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence

from .reference_page import text

_ENTRY = re.compile(r'^\s*"(?P<key>[\w.]+)",\s*#\s*(?P<note>.*)$')
_CONSTANT = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")


def _with_values(note: str, module: object) -> str:
    """``note`` with the module's constants it names (``TOP5_MIN_CLASSES``) replaced by their values (``11``)."""

    def value(match: re.Match[str]) -> str:
        found = getattr(module, match[0], None)
        if isinstance(found, (tuple, list)):
            return " / ".join(map(str, found))
        return match[0] if found is None else str(found)

    return _CONSTANT.sub(value, note)


def _source_notes(module: object) -> dict[str, str]:
    """key -> the comment beside ``"key",`` in the module source (continuation comment lines appended)."""
    notes: dict[str, str] = {}
    last = None
    for line in inspect.getsource(module).splitlines():
        match = _ENTRY.match(line)
        if match:
            last = match["key"]
            notes.setdefault(last, match["note"].strip())
        elif last and re.match(r"^\s*#\s+", line) and last in notes:
            notes[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return {key: _with_values(note, module) for key, note in notes.items()}


def _table(keys: Sequence[str], notes: dict[str, str], header: str) -> list[str]:
    rows = [f"| {header} | meaning |", "| --- | --- |"]
    rows += [f"| `{key}` | {text(notes.get(key, ''))} |" for key in keys]
    return rows


def metrics_table() -> str:
    from kd_hydra.records import schema

    notes = _source_notes(schema)
    lines = [f"Schema version {schema.SCHEMA_VERSION} (`kd_hydra.records.schema.METRICS_KEYS`):", ""]
    return "\n".join(lines + _table(schema.METRICS_KEYS, notes, "key")) + "\n"


def settings_list() -> str:
    from kd_hydra.records import schema

    return ", ".join(f"`{key}`" for key in schema.SETTINGS_KEYS)


def history_table() -> str:
    from kd_hydra.records import schema

    notes = _source_notes(schema)
    keys = list(schema.HISTORY_LEADING_COLUMNS) + ["train_<part>"] + list(schema.HISTORY_TRAILING_COLUMNS)
    notes["train_<part>"] = "one column per loss part of the method, unweighted (see each method's page)"
    return "\n".join(_table(keys, notes, "column")) + "\n"
