"""A table sweep (``python run.py -m table=<name>``) set beside its authors' numbers: every cell, like for like.

The sweep's ``multirun.yaml`` holds the ``table`` node (``conf/table/<name>.yaml`` with ``published``, from
``conf/published/``). Each cell (pair x row: the teacher, the labels-only student, each method) gathers the
completed runs of its experiment preset: their mean and 95% t-interval over seeds of the accuracy the source
reports (the best epoch's for the CIFAR sources), the published number and its source, the difference, whether
the published number lies inside the interval, and every way the comparison is not like for like (another
accuracy, dataset or epoch count, a teacher further than ``table.teacher_tolerance`` from the published one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kd_hydra.config.files import check_config_file
from kd_hydra.enums import Mode
from kd_hydra.records import schema
from kd_hydra.records.ledger import outcome_entries, read_estimate

from .load import BEST_TEST_ACC, DATASET, FINAL_TEST_ACC, LOSS, MODE, OVERRIDES, RUN_DIR, STATUS, TEACHER_TEST_ACC
from .stats import interval
from .text import csv_safe, escape_text, markdown_table

#: The sweep's composed primary config, which Hydra's sweeper saves (with ``table`` when the sweep is a table).
MULTIRUN_FILE = "multirun.yaml"
TEACHER_ROW, STUDENT_ROW = "teacher", "student"
EPOCHS = "epochs"
SUBSET = "dataset.subset"
#: Columns of reproduction.csv, one row per cell.
CELL_COLUMNS = (
    "pair", "row", "published", "source", "source_metric", "metric", "n", "mean", "ci95", "seed_min", "seed_max",
    "difference", "published_inside", "teacher_acc", "teacher_published", "teacher_off", "like_for_like",
    "not_like_for_like",
)  # fmt: skip
#: Columns results.csv gets on a table sweep: each run's cell and its comparison.
RESULT_COLUMNS = {
    "table_pair": "pair", "table_row": "row", "published_acc": "published", "published_source": "source",
    "cell_mean": "mean", "cell_ci95": "ci95", "cell_difference": "difference", "published_inside": "published_inside",
    "teacher_off": "teacher_off", "like_for_like": "like_for_like", "not_like_for_like": "not_like_for_like",
}  # fmt: skip
MARK_UNLIKE, MARK_TEACHER = "†", "‡"


@dataclass(frozen=True)
class PublishedTable:
    """A table node as the analysis reads it: cells, published numbers and their sources."""

    name: str
    title: str
    pairs: tuple[str, ...]
    methods: tuple[str, ...]
    preset_suffix: str
    columns: Mapping[str, str]
    teacher_tolerance: float
    dataset: str
    sources: Mapping[str, Mapping[str, Any]]
    source_of: Mapping[str, str]
    rows: Mapping[str, Mapping[str, float | None]]

    @property
    def row_names(self) -> tuple[str, ...]:
        """The table's rows, in the papers' order: the teacher, the student, then each method."""
        return (TEACHER_ROW, STUDENT_ROW, *self.methods)

    def column(self, row: str) -> str:
        """The published column of a row (the method's name unless ``table.columns`` maps it)."""
        return self.columns.get(row, row)

    def preset(self, pair: str) -> str:
        """The experiment preset the sweep ran ``pair`` with."""
        return pair + self.preset_suffix

    def published(self, pair: str, row: str) -> tuple[float | None, Mapping[str, Any]]:
        """The published number of a cell (None: not published) and its source's record."""
        column = self.column(row)
        value = (self.rows.get(pair) or {}).get(column)
        return (float(value) if value is not None else None), self.sources.get(self.source_of.get(column, ""), {})


def read_table(paths: Iterable[Path]) -> PublishedTable | None:
    """The table of the first of ``paths`` whose ``multirun.yaml`` names one, else None."""
    for path in paths:
        file = Path(path) / MULTIRUN_FILE
        if not file.is_file():
            continue
        check_config_file(file)
        node = OmegaConf.select(OmegaConf.load(file), "table", default=None)
        if isinstance(node, DictConfig):
            return table_of(OmegaConf.to_container(node, resolve=True))
    return None


def table_of(node: Mapping[str, Any]) -> PublishedTable:
    """:class:`PublishedTable` of a plain ``table`` mapping."""
    published = node.get("published") or {}
    return PublishedTable(
        name=str(node.get("name", "table")),
        title=str(node.get("title") or node.get("name", "table")),
        pairs=tuple(node["pairs"]),
        methods=tuple(node["methods"]),
        preset_suffix=str(node.get("preset_suffix") or ""),
        columns=dict(node.get("columns") or {}),
        teacher_tolerance=float(node.get("teacher_tolerance", 1.0)),
        dataset=str(published.get("dataset", "")),
        sources=dict(published.get("sources") or {}),
        source_of=dict(published.get("columns") or {}),
        rows=dict(published.get("rows") or {}),
    )


def experiment_of(overrides: object) -> str | None:
    """The ``experiment=`` choice of a run's overrides text."""
    for token in str(overrides or "").split():
        if token.lstrip("+").startswith("experiment="):
            return token.split("=", 1)[1]
    return None


def _runs_of_cell(runs: pd.DataFrame, table: PublishedTable, pair: str, row: str) -> pd.DataFrame:
    done = runs[(runs[STATUS] == schema.STATUS_COMPLETED) & (runs[OVERRIDES].map(experiment_of) == table.preset(pair))]
    mode = done[MODE].astype(object) if MODE in done.columns else pd.Series(None, index=done.index, dtype=object)
    if row == TEACHER_ROW:
        return done[mode == Mode.teacher.value]
    if row == STUDENT_ROW:
        return done[mode == Mode.student.value]
    method = done[LOSS].astype(object) if LOSS in done.columns else pd.Series(None, index=done.index, dtype=object)
    return done[(mode == Mode.distill.value) & (method == row)]


def _metric(cell: pd.DataFrame, wanted: str) -> str:
    """The metric compared: the one the source reports when every run has it, else the last epoch's."""
    if wanted in cell.columns and cell[wanted].notna().all():
        return wanted
    return FINAL_TEST_ACC


def _values(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").dropna().astype(float)


def _teacher_of(runs: pd.DataFrame, table: PublishedTable, pair: str, metric: str) -> float:
    """The pair's teacher accuracy: its teacher job's (the source's metric), else what its students report."""
    teachers = _values(_runs_of_cell(runs, table, pair, TEACHER_ROW), metric)
    if len(teachers):
        return float(teachers.mean())
    students = pd.concat([_runs_of_cell(runs, table, pair, m) for m in table.methods])
    reported = _values(students, TEACHER_TEST_ACC)
    return float(reported.mean()) if len(reported) else math.nan


def cells(runs: pd.DataFrame, table: PublishedTable) -> pd.DataFrame:
    """One row per cell (pair x row) with :data:`CELL_COLUMNS`, in the table's order (teacher rows first)."""
    records = []
    for row in table.row_names:
        for pair in table.pairs:
            records.append(_cell(runs, table, pair, row))
    return pd.DataFrame.from_records(records, columns=list(CELL_COLUMNS))


def _cell(runs: pd.DataFrame, table: PublishedTable, pair: str, row: str) -> dict[str, Any]:
    published, source = table.published(pair, row)
    wanted = str(source.get("metric") or BEST_TEST_ACC)
    members = _runs_of_cell(runs, table, pair, row)
    metric = _metric(members, wanted)
    values = _values(members, metric)
    stats = interval(values)
    reasons = []
    if len(members) and metric != wanted:
        reasons.append(f"{metric} against the source's {wanted}")
    if table.dataset and DATASET in members.columns:
        other = sorted({str(d) for d in members[DATASET].dropna()} - {table.dataset})
        reasons += [f"dataset {', '.join(other)}, the source {table.dataset}"] if other else []
    if SUBSET in members.columns and members[SUBSET].notna().any():
        reasons.append("a data subset (dataset.subset)")
    epochs = sorted({int(e) for e in _values(members, EPOCHS)})
    if source.get("epochs") and epochs and epochs != [int(source["epochs"])]:
        reasons.append(f"{'/'.join(map(str, epochs))} epochs, the source {int(source['epochs'])}")
    teacher_published, _ = table.published(pair, TEACHER_ROW)
    teacher = _teacher_of(runs, table, pair, wanted)
    teacher_off = None
    if row != STUDENT_ROW and teacher_published is not None and not math.isnan(teacher):
        teacher_off = abs(teacher - teacher_published) > table.teacher_tolerance
        if teacher_off and row != TEACHER_ROW:
            reasons.append(f"teacher {teacher:.2f}, published {teacher_published:.2f} (more than "
                           f"{table.teacher_tolerance:g} apart)")  # fmt: skip
    difference = stats.mean - published if published is not None and stats.n else math.nan
    inside = None
    if published is not None and stats.has_width:
        inside = bool(stats.low <= published <= stats.high)
    source_text = f"{source.get('citation', '?')}: {source.get('where', '?')}" if source else "—"
    return {
        "pair": pair, "row": row, "published": published, "source": source_text, "source_metric": wanted,
        "metric": metric, "n": stats.n, "mean": stats.mean, "ci95": stats.half_width,
        "seed_min": float(values.min()) if len(values) else math.nan,
        "seed_max": float(values.max()) if len(values) else math.nan, "difference": difference,
        "published_inside": inside, "teacher_acc": teacher, "teacher_published": teacher_published,
        "teacher_off": teacher_off, "like_for_like": (not reasons) if stats.n else None,
        "not_like_for_like": "; ".join(reasons),
    }  # fmt: skip


def annotate_results(results: pd.DataFrame, runs: pd.DataFrame, table: PublishedTable, table_cells: pd.DataFrame
                     ) -> pd.DataFrame:  # fmt: skip
    """``results`` (one row per run) with :data:`RESULT_COLUMNS`: the cell each run belongs to and its comparison."""
    out = results.copy()
    by_cell = {(c["pair"], c["row"]): c for c in table_cells.to_dict("records")}
    values: dict[str, list[Any]] = {column: [] for column in RESULT_COLUMNS}
    where: dict[str, tuple[str, str]] = {}
    for pair in table.pairs:
        for row in table.row_names:
            for run_dir in _runs_of_cell(runs, table, pair, row)[RUN_DIR]:
                where[str(run_dir)] = (pair, row)
    for run_dir in out[RUN_DIR]:
        cell = by_cell.get(where.get(str(run_dir), ("", "")))
        for column, key in RESULT_COLUMNS.items():
            values[column].append(cell[key] if cell is not None else None)
    for column, column_values in values.items():
        out[column] = pd.Series(column_values, index=out.index, dtype=object)
    return out


# -- cost -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostCheck:
    """The sweeper's estimate against the measured wall seconds of the same jobs."""

    device: str
    jobs: int
    estimated: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.estimated / self.measured if self.measured > 0 else math.nan


def cost_check(sweep_dir: Path) -> CostCheck | None:
    """Estimated and measured seconds of the jobs the sweep's last invocation estimated and completed, or None."""
    record = read_estimate(sweep_dir)
    if record is None:
        return None
    outcomes = outcome_entries(sweep_dir)
    estimated = measured = 0.0
    jobs = 0
    for name, job in record["jobs"].items():
        entry = outcomes.get(name) or {}
        seconds = entry.get("seconds")
        if entry.get("status") == schema.STATUS_COMPLETED and isinstance(seconds, (int, float)):
            estimated += float(job.get("seconds", 0.0))
            measured += float(seconds)
            jobs += 1
    return CostCheck(str(record.get("device", "")), jobs, estimated, measured) if jobs else None


def cost_lines(check: CostCheck | None) -> list[str]:
    """The report's lines comparing the estimate with the measured cost."""
    if check is None:
        return []
    return [f"Cost: estimated {check.estimated / 3600:.4f} device-hours before the sweep on {check.device or '?'}, "
            f"measured {check.measured / 3600:.4f} (wall seconds of the {check.jobs} jobs that ran and completed): "
            f"estimate / measured = {check.ratio:.2f}.", ""]  # fmt: skip


# -- rendering ------------------------------------------------------------------------------------------------


def pair_label(pair: str) -> str:
    """``wrn_40_2 → wrn_16_2`` style column header of a preset name (``cifar100_`` and the suffix dropped)."""
    return pair.split("_", 1)[-1] if pair.startswith("cifar") else pair


def cell_text(cell: Mapping[str, Any]) -> str:
    """``74.12 ± 0.31 (75.48, −1.36)†``: reproduced mean ± 95% half-width, then the published number and the
    difference; † not like for like, ‡ its teacher is off by more than the tolerance."""
    if not cell["n"]:
        reproduced = "—"
    elif cell["n"] >= 2 and math.isfinite(cell["ci95"]):
        reproduced = f"{cell['mean']:.2f} ± {cell['ci95']:.2f}"
    else:
        reproduced = f"{cell['mean']:.2f}"
    published = "—" if cell["published"] is None or pd.isna(cell["published"]) else f"{cell['published']:.2f}"
    difference = "" if pd.isna(cell["difference"]) else f", {cell['difference']:+.2f}".replace("-", "−")
    return f"{reproduced} ({published}{difference}){cell_marks(cell)}"


def cell_marks(cell: Mapping[str, Any]) -> str:
    """† when a cell is not like for like, ‡ when its teacher is off by more than the tolerance."""
    unlike = cell["like_for_like"] is not None and not pd.isna(cell["like_for_like"]) and not cell["like_for_like"]
    teacher = bool(cell["teacher_off"]) and not pd.isna(cell["teacher_off"]) and cell["row"] != TEACHER_ROW
    return (MARK_UNLIKE if unlike else "") + (MARK_TEACHER if teacher else "")


def layout(table: PublishedTable, table_cells: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The papers' layout: header (row, then one column per pair) and one row per teacher, student and method."""
    by_cell = {(c["pair"], c["row"]): c for c in table_cells.to_dict("records")}
    header = ["", *(pair_label(pair) for pair in table.pairs)]
    rows = []
    for row in table.row_names:
        name = {TEACHER_ROW: "Teacher", STUDENT_ROW: "Student"}.get(row, table.column(row))
        rows.append([name, *(cell_text(by_cell[(pair, row)]) for pair in table.pairs)])
    return header, rows


def legend(table: PublishedTable) -> str:
    sources = "; ".join(f"{s.get('citation', key)} ({s.get('where', '?')}, {s.get('metric', '?')}, "
                        f"{s.get('epochs', '?')} epochs)" for key, s in table.sources.items())  # fmt: skip
    return (
        f"{table.title}. Each cell: reproduced mean ± 95% t-interval half-width over seeds (published, "
        f"reproduced − published). {MARK_UNLIKE}: not like for like (see reproduction.md); {MARK_TEACHER}: its "
        f"teacher is more than {table.teacher_tolerance:g} points from the published teacher. Sources: {sources}."
    )


def markdown(table: PublishedTable, table_cells: pd.DataFrame, check: CostCheck | None,
             table_lines: Sequence[str]) -> str:  # fmt: skip
    """reproduction.md: the table in the papers' layout, every cell's comparison, the cost."""

    lines = [f"# Reproduction: {escape_text(table.title)}", "", escape_text(legend(table)), "", *table_lines]
    lines += cost_lines(check)
    off = table_cells[(table_cells["row"] == TEACHER_ROW) & (table_cells["teacher_off"] == True)]  # noqa: E712
    if len(off):
        pairs = ", ".join(pair_label(p) for p in off["pair"])
        lines += [f"Teachers more than {table.teacher_tolerance:g} points from the published ones: {pairs}; their "
                  f"students' cells are marked {MARK_TEACHER}.", ""]  # fmt: skip
    detail = []
    for cell in table_cells.to_dict("records"):
        inside = {True: "yes", False: "no"}.get(cell["published_inside"], "—")
        like = {True: "yes", False: "no: " + cell["not_like_for_like"]}.get(cell["like_for_like"], "no runs")
        detail.append([pair_label(cell["pair"]), table.column(cell["row"]), cell_text(cell), cell["metric"],
                       cell["source"], inside, like])  # fmt: skip
    lines += ["## Every cell", ""]
    lines += markdown_table(["pair", "row", "reproduced (published, difference)", "compared", "source",
                             "published inside the 95% interval", "like for like"], detail)  # fmt: skip
    return "\n".join(lines)


def latex(table: PublishedTable, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """reproduction.tex: a plain tabular in the papers' layout with the legend as its caption."""
    from .tables import latex_escape

    def _latex_marks(text: str) -> str:
        return text.replace(MARK_UNLIKE, r"$^\dagger$").replace(MARK_TEACHER, r"$^\ddagger$")

    lines = [
        r"\begin{table}[htbp]", r"\centering", r"\caption{" + _latex_marks(latex_escape(legend(table))) + "}",
        r"\label{tab:kd-hydra-" + table.name.replace("_", "-") + "}",
        r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\hline",
        " & ".join(latex_escape(h) for h in header) + r" \\", r"\hline",
        *(" & ".join(_latex_marks(latex_escape(c)) for c in row) + r" \\" for row in rows),
        r"\hline", r"\end{tabular}", r"\end{table}",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def figure(table: PublishedTable, table_cells: pd.DataFrame) -> Any:
    """A heat map of reproduced − published (rows: teacher, student, methods; columns: pairs), each cell
    annotated with the difference and its marks."""
    import numpy as np
    from matplotlib.figure import Figure

    by_cell = {(c["pair"], c["row"]): c for c in table_cells.to_dict("records")}
    rows, pairs = list(table.row_names), list(table.pairs)
    grid = np.array([[by_cell[(p, r)]["difference"] for p in pairs] for r in rows], dtype=float)
    fig = Figure(figsize=(1.2 + 1.1 * len(pairs), 0.8 + 0.4 * len(rows)), layout="constrained")
    axes = fig.subplots()
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    for i, row in enumerate(rows):
        for j, pair in enumerate(pairs):
            cell = by_cell[(pair, row)]
            text = "—" if math.isnan(grid[i, j]) else f"{grid[i, j]:+.2f}{cell_marks(cell)}"
            axes.text(j, i, text, ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(pairs)), [pair_label(p) for p in pairs], rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(rows)), [table.column(r) for r in rows], fontsize=8)
    axes.set_title(f"{table.name}: reproduced − published (points)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8)
    return fig


# -- files ----------------------------------------------------------------------------------------------------

REPRODUCTION_CSV, REPRODUCTION_MD, REPRODUCTION_TEX, REPRODUCTION_PNG = (
    "reproduction.csv", "reproduction.md", "reproduction.tex", "reproduction.png",
)  # fmt: skip


def write_reproduction(table: PublishedTable, table_cells: pd.DataFrame, out: Path, sources: Sequence[Path]
                       ) -> tuple[dict[str, Path], list[str]]:  # fmt: skip
    """Write reproduction.csv/.md/.tex/.png into ``out``; returns what was written and report.md's section."""
    from kd_hydra.records.files import atomic_write_text

    from .plots import save_figure

    header, rows = layout(table, table_cells)
    table_lines = markdown_table(header, rows)
    check = next((c for c in (cost_check(Path(s)) for s in sources) if c is not None), None)
    written = {"reproduction_csv": out / REPRODUCTION_CSV, "reproduction_md": out / REPRODUCTION_MD,
               "reproduction_tex": out / REPRODUCTION_TEX, "reproduction_png": out / REPRODUCTION_PNG}  # fmt: skip
    atomic_write_text(written["reproduction_csv"], csv_safe(table_cells).to_csv(index=False))
    atomic_write_text(written["reproduction_md"], markdown(table, table_cells, check, table_lines))
    atomic_write_text(written["reproduction_tex"], latex(table, header, rows))
    save_figure(figure(table, table_cells), written["reproduction_png"])
    section = [
        "## Reproduction of a published table",
        "",
        f"Every cell beside its published number: [{REPRODUCTION_MD}]({REPRODUCTION_MD}) (and "
        f"{REPRODUCTION_CSV}, {REPRODUCTION_TEX}, {REPRODUCTION_PNG}).",
        "",
        *table_lines,
        *cost_lines(check),
    ]
    return written, section  # fmt: skip
