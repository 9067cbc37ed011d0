"""Sections of README.md that a page shows as they are written there (one source, no copy to drift)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _heading_level(line: str) -> int:
    """The level of a Markdown heading line (``### x`` -> 3), 0 for any other line."""
    level = len(line) - len(line.lstrip("#"))
    return level if level and line[level : level + 1] == " " else 0


def readme_section(heading: str) -> str:
    """The body of the README section titled ``heading`` (any level), up to the next heading of its level or above."""
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [n for n, line in enumerate(lines) if _heading_level(line) and line.lstrip("#").strip() == heading]
    if not starts:
        raise KeyError(f"README.md has no section '{heading}'")
    level, body, in_fence = _heading_level(lines[starts[0]]), [], False
    for line in lines[starts[0] + 1 :]:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if not in_fence and 0 < _heading_level(line) <= level:
            break
        body.append(line)
    return "\n".join(body).strip() + "\n"


def own_method_section() -> str:
    """README's "Add your own method" (tests/test_method_user.py runs its code as written there)."""
    return readme_section("Add your own method")
