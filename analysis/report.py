"""Write a sweep's analysis: results.csv, the figures, report.md, and the paper tables table.md and table.tex
(used by the CLI and callback).

Every file is written atomically. Text copied from configs is escaped: results.csv cells that a
spreadsheet would run as a formula get a leading quote (OWASP CSV injection), report.md text is
HTML-escaped (table cells also pipe-escaped) and table.tex text LaTeX-escaped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kd_hydra.enums import Mode
from kd_hydra.records import schema
from kd_hydra.records.files import atomic_write_text
from kd_hydra.records.run_directory import read_metrics

from .aggregate import (
    RANK_COLUMNS,
    TIE_TOLERANCE,
    Setup,
    across_setups_by,
    distill_methods,
    distill_setups,
    format_value,
    rank_settings,
    runs_of_method,
    runs_of_setup,
    safe_name,
    selection_metric,
    short_name,
)
from .load import (
    DATASET,
    FINAL_TEST_ACC,
    FINAL_VAL_ACC,
    MODE,
    REASON,
    RUN_DIR,
    STATUS,
    history_of,
    load_runs,
)
from .plots import (
    NotApplicable,
    plot_accuracy_vs_temperature,
    plot_heatmap,
    plot_kd_gain,
    plot_learning_curves,
    plot_method_comparison,
    plot_search_samples,
    save_figure,
)
from .reproduction import annotate_results, cells, cost_check, cost_lines, read_table, write_reproduction
from .stats import RULE_TEXT, Interval, compare_to_top, distinguishable, format_interval
from .tables import (
    PaperTable,
    claim_sentence,
    latex_document,
    metric_name,
    paper_tables,
    results_table,
    row_interval,
)
from .text import code, csv_safe, escape_text, markdown_table

RESULTS_FILE = "results.csv"
REPORT_FILE = "report.md"
TABLE_MARKDOWN_FILE = "table.md"
TABLE_LATEX_FILE = "table.tex"
MAX_LISTED_RUNS = 20
#: The metrics.json key of a run's warnings (kd_hydra.records.schema.METRICS_KEYS).
WARNINGS = "warnings"
#: At most this many settings in a ranking table (the rest are in results.csv).
MAX_RANKED_SETTINGS = 30

SELECTED_ON_VALIDATION = "selected on the validation split"
SELECTED_ON_TEST = "selected on the test split (no validation split: optimistic)"

#: Per-setup, per-method figures: output stem -> (caption, plotting function of the runs table).
SETUP_FIGURES: dict[str, tuple[str, Callable[[pd.DataFrame], Figure]]] = {
    "heatmap": ("test accuracy over the two swept loss keys", plot_heatmap),
    "accuracy_vs_temperature": ("accuracy vs temperature", plot_accuracy_vs_temperature),
    "kd_gain": ("gain over the baseline", plot_kd_gain),
    "search_samples": ("Optuna trials: the objective against each searched value", plot_search_samples),
}
METHOD_COMPARISON = "method_comparison"
LEARNING_CURVES = "learning_curves"


@dataclass
class FigureOutcome:
    """What happened to the figures: files written (key -> path, caption) and skips (file -> why)."""

    written: dict[str, tuple[Path, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # figures that do not apply to these runs


def write_report(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Analyse the runs under ``paths`` into ``out_dir`` (default: the first path).

    Returns what was written, key -> path ("results", "report", "table_md", "table_tex", figure stems, and after a
    table sweep "reproduction_csv", "reproduction_md", "reproduction_tex", "reproduction_png": its comparison with
    the published numbers, :mod:`analysis.reproduction`). Raises NoRunsError when
    no run is found; a figure that cannot be drawn is skipped and explained.
    """
    sources = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    runs = load_runs(*sources)
    out = Path(out_dir) if out_dir is not None else sources[0]
    out.mkdir(parents=True, exist_ok=True)
    written = {"results": out / RESULTS_FILE}
    results = results_table(runs)
    table = read_table(sources)
    table_cells = cells(runs, table) if table is not None else None
    if table is not None:
        results = annotate_results(results, runs, table, table_cells)
    atomic_write_text(written["results"], csv_safe(results).to_csv(index=False))
    tables = paper_tables(runs)
    written["table_md"], written["table_tex"] = out / TABLE_MARKDOWN_FILE, out / TABLE_LATEX_FILE
    atomic_write_text(written["table_md"], tables_markdown(tables))
    atomic_write_text(written["table_tex"], latex_document(tables))
    figures = draw_figures(runs, out)
    written.update({key: path for key, (path, _) in figures.written.items()})
    check = next((c for c in map(cost_check, sources) if c is not None), None)
    section = ["## Cost", "", *cost_lines(check)] if check is not None else []
    if table is not None:
        files, section = write_reproduction(table, table_cells, out, sources)
        written.update(files)
    written["report"] = out / REPORT_FILE
    atomic_write_text(written["report"], render_report(runs, figures, sources, out, tables, section))
    return written


def draw_figures(runs: pd.DataFrame, out_dir: Path) -> FigureOutcome:
    """Draw every figure the runs allow into ``out_dir``; leave out the ones that do not apply and record
    why the others could not be drawn.

    Per setup (dataset, teacher, student) and method: ``<stem>[_<method>][_<setup>].png`` (the
    suffixes only when the sweep has several); per setup ``method_comparison[_<setup>].png`` and
    ``learning_curves[_<setup>].png`` (the report's selected settings).
    """
    outcome = FigureOutcome()
    setups = distill_setups(runs)
    history = history_of(runs)
    for setup in setups:
        setup_suffix = "" if len(setups) == 1 else f"_{setup.slug()}"
        setup_title = "" if len(setups) == 1 else f", {setup.title()}"
        subset = runs_of_setup(runs, setup)
        methods = distill_methods(subset)
        for method in methods:
            method_suffix = "" if len(methods) == 1 else f"_{safe_name(method)}"
            method_runs = runs_of_method(subset, method)
            for stem, (caption, plot) in SETUP_FIGURES.items():
                title = f"{caption} ({method}){setup_title}"
                _draw(outcome, f"{stem}{method_suffix}{setup_suffix}", title, out_dir,
                      lambda plot=plot, subset=method_runs: plot(subset))  # fmt: skip
        _draw(outcome, f"{METHOD_COMPARISON}{setup_suffix}", f"methods compared{setup_title}", out_dir,
              lambda subset=subset: plot_method_comparison(subset))  # fmt: skip
        own_history = history[history[RUN_DIR].isin(set(subset[RUN_DIR]))]
        _draw(outcome, f"{LEARNING_CURVES}{setup_suffix}", f"learning curves of the selected settings{setup_title}",
              out_dir, lambda h=own_history, subset=subset: plot_learning_curves(h, runs=subset))  # fmt: skip
    if not setups:
        _draw(outcome, LEARNING_CURVES, "learning curves", out_dir, lambda: plot_learning_curves(history, runs=runs))
    return outcome


def _draw(outcome: FigureOutcome, key: str, caption: str, out_dir: Path, make: Callable[[], Figure]) -> None:
    """Save ``make()`` as ``<key>.png`` into ``outcome.written``; a figure that does not apply goes to
    ``outcome.left_out``, one that fails to ``outcome.skipped`` with its error (a stale ``<key>.png`` of
    an earlier analysis is removed in both cases)."""
    try:
        figure = make()
    except Exception as error:  # noqa: BLE001 - a figure that cannot be drawn must not stop the report
        (out_dir / f"{key}.png").unlink(missing_ok=True)
        if isinstance(error, NotApplicable):
            outcome.left_out.append(f"{key}.png")
            return
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        outcome.skipped[f"{key}.png"] = reason if isinstance(error, ValueError) else f"{type(error).__name__}: {reason}"
        return
    outcome.written[key] = (save_figure(figure, out_dir / f"{key}.png"), caption)


def render_report(runs: pd.DataFrame, figures: FigureOutcome, sources: Iterable[Path], out_dir: Path,
                  tables: Sequence[PaperTable] | None = None, extra: Sequence[str] = ()) -> str:  # fmt: skip
    """The markdown text of report.md (``tables``: :func:`analysis.tables.paper_tables` of ``runs``; ``extra``:
    the lines of the reproduction and cost section, after the comparisons)."""
    tables = paper_tables(runs) if tables is None else tables
    lines = ["# Knowledge-distillation sweep report", ""]
    lines += ["Runs loaded from: " + ", ".join(code(source) for source in sources), ""]
    lines += _status_section(runs)
    lines += warnings_section(runs)
    lines += _evaluations_section(runs)
    lines += _comparison_section(runs, tables)
    lines += list(extra)
    lines += _figures_section(figures, out_dir)
    lines += [f"The full table (one row per run, with each setting's statistics) is in [{RESULTS_FILE}]"
              f"({RESULTS_FILE}); the paper tables in [{TABLE_MARKDOWN_FILE}]({TABLE_MARKDOWN_FILE}) and "
              f"[{TABLE_LATEX_FILE}]({TABLE_LATEX_FILE}) (a plain LaTeX tabular).", ""]  # fmt: skip
    return "\n".join(lines)


def _status_section(runs: pd.DataFrame) -> list[str]:
    """Runs counted by mode and status, then the failed and unfinished runs with their reason."""
    lines = ["## Runs", "", f"{len(runs)} run directories."]
    modes = runs[MODE].fillna("?") if MODE in runs.columns else pd.Series("?", index=runs.index)
    counts = pd.crosstab(modes, runs[STATUS])
    statuses = [s for s in (schema.STATUS_COMPLETED, schema.STATUS_FAILED, schema.STATUS_UNFINISHED) if s in counts]
    statuses += [s for s in counts.columns if s not in statuses]
    total = runs[STATUS].value_counts()
    rows = [[mode, *(int(counts.at[mode, s]) for s in statuses)] for mode in counts.index]
    rows.append(["**all**", *(int(total.get(s, 0)) for s in statuses)])
    lines += ["", *markdown_table(["mode", *statuses], rows)]
    problems = runs[runs[STATUS] != schema.STATUS_COMPLETED]
    if not problems.empty:
        lines += ["Runs that did not complete:", ""]
        for run in problems.head(MAX_LISTED_RUNS).to_dict("records"):
            reason = run.get(REASON) if not pd.isna(run.get(REASON)) else "no reason given"
            lines.append(f"- {code(run[RUN_DIR])}: {escape_text(run[STATUS])} ({escape_text(reason)})")
        if len(problems) > MAX_LISTED_RUNS:
            lines.append(f"- ... and {len(problems) - MAX_LISTED_RUNS} more (see {RESULTS_FILE})")
        lines.append("")
    return lines


def warnings_section(runs: pd.DataFrame) -> list[str]:
    """Settings that did not fit their runs (metrics.json ``warnings``): each distinct line once, with its run count."""
    counts: dict[str, int] = {}
    for cell in runs[WARNINGS].dropna() if WARNINGS in runs.columns else ():
        try:
            lines = json.loads(cell) if isinstance(cell, str) else cell
        except ValueError:
            continue
        for line in dict.fromkeys(map(str, lines if isinstance(lines, list) else [])):
            counts[line] = counts.get(line, 0) + 1
    if not counts:
        return []
    lines = ["## Warnings", "", "Settings that did not fit their runs (each run's `metrics.json`, `warnings`):", ""]
    lines += [f"- {escape_text(line)} ({n} of {len(runs)} runs)" for line, n in counts.items()]
    return [*lines, ""]


def _evaluations_section(runs: pd.DataFrame) -> list[str]:
    """Evaluation-only runs (mode=eval), listed apart from the comparisons: run, dataset, checkpoint and
    every accuracy their metrics.json reports (top-1, top-5, ...)."""
    if MODE not in runs.columns:
        return []
    evals = runs[runs[MODE].astype(object) == Mode.eval.value]
    if evals.empty:
        return []
    lines = ["## Evaluations (mode=eval)", "", "Evaluation-only runs, not part of any comparison below:", ""]
    for run in evals.head(MAX_LISTED_RUNS).to_dict("records"):
        metrics = read_metrics(Path(run[RUN_DIR]))[0] or {}
        accuracies = [f"{key} {value:.2f}" for key, value in metrics.items()
                      if "acc" in key and isinstance(value, (int, float)) and not isinstance(value, bool)]  # fmt: skip
        checkpoint = run.get("teacher.checkpoint") or metrics.get("checkpoint")
        facts = [f"dataset {escape_text(run.get(DATASET, '?'))}"]
        facts += [f"checkpoint {code(checkpoint)}"] if isinstance(checkpoint, str) and checkpoint else []
        facts += [escape_text(", ".join(accuracies))] if accuracies else [escape_text(run[STATUS])]
        lines.append(f"- {code(run[RUN_DIR])}: " + "; ".join(facts))
    if len(evals) > MAX_LISTED_RUNS:
        lines.append(f"- ... and {len(evals) - MAX_LISTED_RUNS} more (see {RESULTS_FILE})")
    return [*lines, ""]


def _format_accuracy(mean: float, ci95: float, n: int) -> str:
    """``"88.40 ± 0.52 (n=3)"``; the ± part only when the CI exists (n ≥ 2)."""
    return format_interval(Interval(mean, math.nan, n, ci95))


def _format_gain(gain: float, ci95: float, n: int) -> str:
    """``"+6.25 ± 6.35 (n=2)"`` (paired by seed), or a dash saying that no baseline matched."""
    return format_interval(Interval(gain, math.nan, n, ci95), signed=True) if n else "— (no matched baseline)"


def _selected_on_text(metric: str) -> str:
    """Which split chose the best setting, for the report."""
    return SELECTED_ON_VALIDATION if metric == FINAL_VAL_ACC else SELECTED_ON_TEST


def _comparison_section(runs: pd.DataFrame, tables: Sequence[PaperTable]) -> list[str]:
    """The statistics rule; the highest mean setting and what the data say about it (a best setting only when its
    95% interval lies apart from every other's); then per setup its paper table (recipe caption, teacher, baseline,
    each method's selected setting, notes) and every setting ranked."""
    lines = ["## Distillation settings compared", "", RULE_TEXT, ""]
    setups = distill_setups(runs)
    if not setups:
        return [*lines, "No completed distill runs: nothing to rank.", ""]
    by = across_setups_by(runs)
    rankings = {setup: rank_settings(runs_of_setup(runs, setup), by=by) for setup in setups}
    rankings = {setup: table for setup, table in rankings.items() if not table.empty and table["n"].iloc[0] > 0}
    if not rankings:
        return [*lines, f"No completed distill run has a {FINAL_TEST_ACC}.", ""]
    lines += _headline(runs, rankings)
    lines += _teachers_line(runs, list(rankings))
    by_setup = {table.setup: table for table in tables}
    for number, (setup, ranked) in enumerate(rankings.items(), start=1):
        lines += [f"### {escape_text(setup.title())}", ""]
        if setup.teacher_keys:
            lines += [f"Teacher of these students: {code(setup.teacher_text())}.", ""]
        if setup in by_setup:
            several = len(distill_methods(runs_of_setup(runs, setup))) > 1
            lead = (f"Methods compared, each by its selected setting ({_selected_on_text(selection_metric(runs))}), "
                    "with the teacher and the baseline student. ") if several else ""  # fmt: skip
            lines += paper_table_markdown(by_setup[setup], number, lead)
        lines += _ranking_table(setup, ranked)
    return lines


def _headline(runs: pd.DataFrame, rankings: dict[Setup, pd.DataFrame]) -> list[str]:
    """The highest mean setting over every setup, and the claim the data support about it (or every tied one)."""
    selected_on = selection_metric(runs)
    prefix = "val_" if selected_on == FINAL_VAL_ACC else ""
    if prefix and all(pd.isna(v) for t in rankings.values() for v in t.get("val_mean", pd.Series(dtype=float))):
        prefix = ""  # no setup has a validation split after all
    several_setups = len(rankings) > 1
    items, rows = [], {}
    for setup, table in rankings.items():
        for row in table.to_dict("records"):
            label = row["setting"] + (f" ({setup.title()})" if several_setups else "")
            items.append((label, row_interval(row, prefix)))
            rows[label] = (setup, row)
    claim = compare_to_top(items, TIE_TOLERANCE)
    key = f"{prefix}mean"
    lines = []
    if len(claim.top) == 1:
        setup, top = rows[claim.top[0]]
        lines.append(
            f"Highest mean {selected_on} over seeds among the distill runs, {_selected_on_text(selected_on)}: "
            f"**{escape_text(top['setting'])}** ({escape_text(setup.title())}), {_accuracies_text(top, key)} "
            "(percent; mean ± 95% t-interval half-width over n seeds)."
        )
    else:
        lines += [
            f"{len(claim.top)} settings tie on the highest mean {selected_on} over seeds "
            f"({_selected_on_text(selected_on)}); the report picks none of them by test accuracy:",
            "",
        ]
        for label in claim.top:
            setup, row = rows[label]
            where = f" ({escape_text(setup.title())})" if several_setups else ""
            lines.append(f"- **{escape_text(row['setting'])}**{where}: {_accuracies_text(row, key)}")
        lines += ["", "(Percent; mean ± 95% t-interval half-width over n seeds.)"]
    lines += ["", escape_text(claim_sentence(claim, "setting", metric_name(prefix))), ""]
    return lines


def _accuracies_text(row: pd.Series | dict, key: str) -> str:
    """``test accuracy 78.00 ± 0.00 (n=2), validation accuracy 78.00 ± 12.71 (n=2)`` of a ranking row."""
    with_val = key == "val_mean" and not pd.isna(row.get("val_mean"))
    val_text = f", validation accuracy {_row_text(row, 'val_')}" if with_val else ""
    return f"test accuracy {_row_text(row, '')}{val_text}"


def _row_text(row: pd.Series | dict, prefix: str) -> str:
    return format_interval(row_interval(dict(row), prefix))


def _teachers_line(runs: pd.DataFrame, setups: Sequence[Setup]) -> list[str]:
    """One line saying that students are grouped by teacher, when several teachers of one architecture
    appear (a teacher-setting sweep, or runs of different teachers analysed together)."""
    apart = [setup for setup in setups if setup.teacher_keys]
    if not apart:
        return []
    return [f"Students of different teachers are never compared as one: {len(apart)} setups differ only in "
            "their teacher (named in brackets).", ""]  # fmt: skip


def paper_table_markdown(table: PaperTable, number: int | None = None, lead: str = "") -> list[str]:
    """A :class:`~analysis.tables.PaperTable` as report.md / table.md lines: ``lead`` and the caption, the table,
    the notes."""
    title = f"**Table {number}.** " if number is not None else ""
    lines = [title + escape_text(lead + table.caption), "", *markdown_table(table.header, table.rows)]
    for note in table.notes:
        lines += [escape_text(note), ""]
    return lines


def tables_markdown(tables: Sequence[PaperTable]) -> str:
    """table.md: one section per setup (its paper table)."""
    lines = ["# Distillation results", ""]
    if not tables:
        lines += ["No completed distill runs.", ""]
    for number, table in enumerate(tables, start=1):
        lines += [f"## {escape_text(table.setup.title())}", "", *paper_table_markdown(table, number)]
    return "\n".join(lines)


def _ranking_table(setup: Setup, ranked: pd.DataFrame) -> list[str]:
    """Every distill setting of ``setup``, best first (at most MAX_RANKED_SETTINGS rows), with whether the data
    tell each apart from the highest."""
    by = [c for c in ranked.columns if c not in RANK_COLUMNS]
    with_val, with_top5 = "val_mean" in ranked.columns, "top5_mean" in ranked.columns
    with_best = "best_mean" in ranked.columns
    with_gain = bool((ranked["gain_n"] > 0).any())
    prefix = "val_" if with_val else ""
    top = row_interval(ranked.iloc[0].to_dict(), prefix)
    header = [short_name(c) for c in by] or ["setting"]
    header += ["validation accuracy (%)"] * with_val + ["test accuracy, last epoch (%)"]
    header += ["test accuracy, best epoch (%)"] * with_best + ["top-5 test accuracy (%)"] * with_top5
    header += ["gain, paired (pp)"] * with_gain + ["vs highest (95% intervals)", "selected"]
    rows = []
    for row in ranked.head(MAX_RANKED_SETTINGS).to_dict("records"):
        cells = ["—" if pd.isna(row[c]) else format_value(row[c]) for c in by] or [row["setting"]]
        if with_val:
            cells.append(_row_text(row, "val_"))
        cells.append(_row_text(row, ""))
        if with_best:
            cells.append(_format_accuracy(row["best_mean"], row["best_ci95"], int(row["n"])))
        if with_top5:
            cells.append(_format_accuracy(row["top5_mean"], row["top5_ci95"], int(row["n"])))
        if with_gain:
            cells.append(_format_gain(row["gain"], row["gain_ci95"], int(row["gain_n"])))
        own = row_interval(row, prefix)
        cells.append("highest" if row["selected"] else "apart" if distinguishable(top, own) else "overlaps")
        cells.append("✓" if row["selected"] else "")
        rows.append(cells)
    order = "validation" if with_val else "test"
    intro = f"All distillation settings of {escape_text(setup.title())}, by mean {order} accuracy"
    lines = [f"{intro} (✓: the highest, ties included; apart / overlaps: whether its 95% interval is apart from the "
             "highest's):", ""]  # fmt: skip
    lines += markdown_table(header, rows)
    if len(ranked) > MAX_RANKED_SETTINGS:
        lines += [f"... and {len(ranked) - MAX_RANKED_SETTINGS} more settings (see {RESULTS_FILE}).", ""]
    return lines


def _figures_section(figures: FigureOutcome, out_dir: Path) -> list[str]:
    """Links to the written figures, then one line per skipped figure saying why."""
    lines = ["## Figures", ""]
    for path, caption in figures.written.values():
        alt = escape_text(caption).replace("[", "\\[").replace("]", "\\]")
        lines += [f"### {escape_text(caption)}", "", f"![{alt}]({path.relative_to(out_dir).as_posix()})", ""]
    if figures.skipped:
        lines += ["Figures not drawn:", ""]
        lines += [f"- {code(name)} skipped: {escape_text(reason)}" for name, reason in figures.skipped.items()]
        lines.append("")
    if figures.left_out:
        names = ", ".join(code(name) for name in figures.left_out)
        lines += [f"Left out as not applicable to these runs: {names}.", ""]
    return lines
