"""Text helpers of the report files: Markdown tables and escaping, spreadsheet-safe CSV cells."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import pandas as pd

#: First characters that make a spreadsheet evaluate a cell (OWASP CSV injection).
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_ESCAPE = "'"


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell (and column name) that starts with ``= + - @``, tab or CR prefixed
    by a single quote, so that spreadsheets show it instead of evaluating it; numbers are kept."""

    def escape(value: object) -> object:
        if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
            return CSV_ESCAPE + value
        return value

    safe = df.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column].dtype):
            safe[column] = safe[column].astype(object).map(escape)
    safe.columns = [escape(str(column)) for column in safe.columns]
    return safe


def escape_text(value: object) -> str:
    """``value`` as one line of report.md text: HTML-escaped, line breaks as spaces."""
    return html.escape(str(value), quote=True).replace("\r", " ").replace("\n", " ")


def code(value: object) -> str:
    """``value`` as inline code (an HTML ``<code>`` element, so that backticks in it are harmless)."""
    return f"<code>{escape_text(value)}</code>"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Lines of a GitHub markdown table (cells converted with str, HTML-escaped, pipes escaped)."""

    def cells(values: Sequence[object]) -> str:
        return "| " + " | ".join(escape_text(v).replace("|", "\\|") for v in values) + " |"

    return [cells(header), cells(["---"] * len(header)), *(cells(row) for row in rows), ""]
