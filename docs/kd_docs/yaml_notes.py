"""The comments of kd-hydra's YAML configs: a file's header and the note next to each key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.@/-]*)\s*:(?P<rest>.*)$")
_DEFAULTS_ENTRY = re.compile(r"^\s*-\s*(?:override\s+)?(?P<entry>[^\s:#]+)\s*(?::\s*(?P<option>[^\s#]+))?")


@dataclass
class YamlNotes:
    """``header``: the file's leading comment lines; ``keys``: dotted key -> its comment; ``defaults``: entries."""

    header: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    defaults: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """The header as one paragraph (what the file is), without the ``@package`` line and example commands."""
        prose = [_without_command(line) for line in self.header if line and not line.startswith("@package")]
        return " ".join(line for line in prose if line)

    @property
    def commands(self) -> list[str]:
        """Example commands in the header (``python run.py ...`` / ``kd-hydra ...``)."""
        return [command for command in map(command_in, self.header) if command]


def command_in(line: str) -> str | None:
    """The ``python run.py ...`` or ``kd-hydra ...`` command a comment line shows, if any."""
    match = re.search(r"(python run\.py|kd-hydra)\s.*$", line)
    return match.group(0).strip() if match else None


def _without_command(line: str) -> str:
    """A comment line without the example command it shows (the prose before it stays)."""
    command = command_in(line)
    return line[: line.index(command)].strip() if command else line.strip()


def _comment_of(text: str) -> str | None:
    """The trailing ``# comment`` of a YAML value, or None (a ``#`` inside quotes is not a comment)."""
    quote = None
    for index, char in enumerate(text):
        if char in "'\"":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (index == 0 or text[index - 1].isspace()):
            return text[index + 1 :].strip()
    return None


def read_notes(path: Path) -> YamlNotes:
    """Comments of one YAML file: its header, each key's trailing note (or the comment block just above it)."""
    notes = YamlNotes()
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    in_header, in_defaults = True, False
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            (notes.header if in_header else pending).append(text)
            continue
        if not stripped:
            pending = []
            continue
        in_header = False
        if in_defaults and stripped.startswith("-"):
            match = _DEFAULTS_ENTRY.match(raw)
            if match:
                notes.defaults.append((match["entry"], match["option"]))
            continue
        match = _KEY_LINE.match(raw)
        if not match:
            pending = []
            continue
        indent, key = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        in_defaults = dotted == "defaults"
        comment = _comment_of(match["rest"])
        if comment:
            notes.keys[dotted] = comment
        elif pending:
            notes.keys[dotted] = " ".join(pending)
        pending = []
        stack.append((indent, key))
    return notes


def option_notes(conf_dir: Path, group: str, option: str) -> YamlNotes:
    """Notes of ``<group>/<option>.yaml``, with the notes of the files its defaults list pulls in underneath."""
    path = conf_dir / group / f"{option}.yaml"
    if not path.is_file():
        return YamlNotes()
    notes = read_notes(path)
    for entry, choice in notes.defaults:
        if choice is not None:  # a nested group (``loader: image_files``): its notes under ``loader.``
            nested = conf_dir / group / entry / f"{choice}.yaml"
            if nested.is_file():
                for key, note in read_notes(nested).keys.items():
                    notes.keys.setdefault(f"{entry}.{key}", note)
            continue
        if entry == "_self_":
            continue
        name = entry.split("@", 1)[0]  # a package (``model/x@teacher``) does not change the file
        target = conf_dir / f"{name.lstrip('/')}.yaml" if name.startswith("/") else path.parent / f"{name}.yaml"
        if target.is_file() and target != path:
            inner = read_notes(target)
            notes.keys = {**inner.keys, **notes.keys}
            notes.header = notes.header or inner.header
    return notes
