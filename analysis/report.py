"""Write a sweep's analysis: results.csv, the figures and report.md (used by the CLI and callback)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kd_hydra import schema

from .aggregate import (
    Setup,
    as_float,
    aggregate,
    completed_runs,
    distill_setups,
    kd_gain,
    runs_of_setup,
    teacher_accuracy,
)
from .load import (
    ALPHA,
    FINAL_TEST_ACC,
    MODE,
    MODEL_PARAMS,
    REASON,
    RUN_DIR,
    STATUS,
    TEACHER_PARAMS,
    TEMPERATURE,
    history_of,
    load_runs,
)
from .plots import plot_accuracy_vs_temperature, plot_heatmap, plot_kd_gain, plot_learning_curves, save_figure

RESULTS_FILE = "results.csv"
REPORT_FILE = "report.md"
MAX_LISTED_RUNS = 20

#: Per-setup figures: output stem -> (caption, plotting function of the runs table).
SETUP_FIGURES: dict[str, tuple[str, Callable[[pd.DataFrame], Figure]]] = {
    "heatmap": ("test accuracy over T × α", plot_heatmap),
    "accuracy_vs_temperature": ("accuracy vs temperature", plot_accuracy_vs_temperature),
    "kd_gain": ("KD gain over the baseline", plot_kd_gain),
}
LEARNING_CURVES = "learning_curves"


@dataclass
class FigureOutcome:
    """What happened to the figures: files written (key -> path, caption) and skips (file -> why)."""

    written: dict[str, tuple[Path, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def write_report(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Analyse the runs under ``paths`` into ``out_dir`` (default: the first path).

    Returns what was written, key -> path ("results", "report", figure stems). Raises
    NoRunsError when no run is found; a figure that cannot be drawn is skipped and explained.
    """
    sources = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    runs = load_runs(*sources)
    out = Path(out_dir) if out_dir is not None else sources[0]
    out.mkdir(parents=True, exist_ok=True)
    written = {"results": out / RESULTS_FILE}
    runs.to_csv(written["results"], index=False)
    figures = draw_figures(runs, out)
    written.update({key: path for key, (path, _) in figures.written.items()})
    written["report"] = out / REPORT_FILE
    written["report"].write_text(render_report(runs, figures, sources, out), encoding="utf-8")
    return written


def draw_figures(runs: pd.DataFrame, out_dir: Path) -> FigureOutcome:
    """Draw every figure the runs allow into ``out_dir``; record why the others were skipped.

    With several setups (dataset, teacher, student) each gets its own ``<stem>_<setup>.png``.
    """
    outcome = FigureOutcome()
    setups = distill_setups(runs)
    if not setups:
        for stem in SETUP_FIGURES:
            outcome.skipped[f"{stem}.png"] = "no completed distill runs"
    for setup in setups:
        suffix = "" if len(setups) == 1 else f"_{setup.slug()}"
        subset = runs_of_setup(runs, setup)
        for stem, (caption, plot) in SETUP_FIGURES.items():
            title = caption if len(setups) == 1 else f"{caption}, {setup.title()}"
            _draw(outcome, f"{stem}{suffix}", title, out_dir, lambda plot=plot, subset=subset: plot(subset))
    _draw(outcome, LEARNING_CURVES, "learning curves", out_dir, lambda: plot_learning_curves(history_of(runs)))
    return outcome


def _draw(outcome: FigureOutcome, key: str, caption: str, out_dir: Path, make: Callable[[], Figure]) -> None:
    """Save ``make()`` as ``<key>.png`` into ``outcome.written``, or its error into ``outcome.skipped``
    (removing a stale ``<key>.png`` of an earlier analysis)."""
    try:
        figure = make()
    except Exception as error:  # noqa: BLE001 - a figure that cannot be drawn must not stop the report
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        outcome.skipped[f"{key}.png"] = reason if isinstance(error, ValueError) else f"{type(error).__name__}: {reason}"
        (out_dir / f"{key}.png").unlink(missing_ok=True)
        return
    outcome.written[key] = (save_figure(figure, out_dir / f"{key}.png"), caption)


def render_report(runs: pd.DataFrame, figures: FigureOutcome, sources: Iterable[Path], out_dir: Path) -> str:
    """The markdown text of report.md."""
    lines = ["# Knowledge-distillation sweep report", ""]
    lines += ["Runs loaded from: " + ", ".join(f"`{source}`" for source in sources), ""]
    lines += _status_section(runs)
    lines += _best_section(runs)
    lines += _figures_section(figures, out_dir)
    lines += [f"The full table (one row per run) is in [{RESULTS_FILE}]({RESULTS_FILE}).", ""]
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Lines of a GitHub markdown table (cells converted with str, pipes escaped)."""

    def cells(values: Sequence[object]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return [cells(header), cells(["---"] * len(header)), *(cells(row) for row in rows), ""]


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
            lines.append(f"- `{run[RUN_DIR]}`: {run[STATUS]} ({run.get(REASON) or 'no reason given'})")
        if len(problems) > MAX_LISTED_RUNS:
            lines.append(f"- ... and {len(problems) - MAX_LISTED_RUNS} more (see {RESULTS_FILE})")
        lines.append("")
    return lines


def _format_accuracy(mean: float, ci95: float, n: int) -> str:
    """``"88.40 ± 0.52 (n=3)"``; the ± part only when the CI exists (n ≥ 2)."""
    if pd.isna(mean):
        return "—"
    spread = "" if pd.isna(ci95) else f" ± {ci95:.2f}"
    return f"{mean:.2f}{spread} (n={n})"


def _format_count(values: pd.Series) -> str:
    """The (median) parameter count of ``values`` with thousands separators, or an em dash."""
    numbers = as_float(values).dropna()
    return f"{int(numbers.median()):,}" if len(numbers) else "—"


def _summary(runs: pd.DataFrame) -> tuple[float, float, int]:
    """Mean, 95% CI half-width and count of final_test_acc over ``runs`` (completed ones)."""
    table = aggregate(runs.assign(_all=0), by="_all")
    if table.empty:
        return float("nan"), float("nan"), 0
    row = table.iloc[0]
    return float(row["mean"]), float(row["ci95"]), int(row["n"])


def _best_section(runs: pd.DataFrame) -> list[str]:
    """The best distill setting (mean over seeds), the teacher / baseline / KD table and all settings."""
    lines = ["## Best KD setting", ""]
    setups = distill_setups(runs)
    distill = completed_runs(runs, schema.MODE_DISTILL)
    if not setups or TEMPERATURE not in runs.columns or ALPHA not in runs.columns:
        return [*lines, "No completed distill runs: nothing to rank.", ""]
    best = None
    for setup in setups:
        settings = aggregate(runs_of_setup(distill, setup), by=[TEMPERATURE, ALPHA])
        if settings.empty:
            continue
        top = settings.loc[settings["mean"].idxmax()]
        if best is None or top["mean"] > best[1]["mean"]:
            best = (setup, top, settings)
    if best is None:
        return [*lines, f"No completed distill run has a {FINAL_TEST_ACC}.", ""]
    setup, top, settings = best
    t, alpha = top[TEMPERATURE], top[ALPHA]
    lines.append(
        f"Highest mean {FINAL_TEST_ACC} over seeds among the distill runs: **T = {t:g}, α = {alpha:g}** "
        f"({setup.title()}), test accuracy {_format_accuracy(top['mean'], top['ci95'], int(top['n']))} "
        "(percent; mean ± 95% CI half-width over n seeds)."
    )
    lines += ["", *_comparison_table(runs, setup, t, alpha)]
    lines += [f"All KD settings of {setup.title()}, best first:", ""]
    ranked = settings.sort_values("mean", ascending=False)
    rows = [[f"{r[TEMPERATURE]:g}", f"{r[ALPHA]:g}", _format_accuracy(r["mean"], r["ci95"], int(r["n"]))]
            for r in ranked.to_dict("records")]  # fmt: skip
    lines += markdown_table(["T", "α", "test accuracy (%)"], rows)
    return lines


def _comparison_table(runs: pd.DataFrame, setup: Setup, temperature: float, alpha: float) -> list[str]:
    """Teacher, baseline student and best KD student: architecture, parameters, accuracy, gain."""
    subset = runs_of_setup(runs, setup)
    distill = completed_runs(subset, schema.MODE_DISTILL)
    best_runs = distill[
        (as_float(distill[TEMPERATURE]) == temperature)
        & (as_float(distill[ALPHA]) == alpha)
    ]
    baselines = completed_runs(subset, schema.MODE_STUDENT)
    teachers = completed_runs(subset, schema.MODE_TEACHER)
    teacher_params = distill[TEACHER_PARAMS] if TEACHER_PARAMS in distill.columns else pd.Series(dtype=float)
    if as_float(teacher_params).isna().all():
        teacher_params = teachers[MODEL_PARAMS] if MODEL_PARAMS in teachers.columns else teacher_params
    teacher_acc = teacher_accuracy(runs, setup)
    baseline = _summary(baselines)
    best = _summary(best_runs)
    gains = kd_gain(subset)
    gains = gains.loc[gains[RUN_DIR].isin(best_runs[RUN_DIR]), "gain"]
    gain_text = f"{gains.mean():+.2f} (n={gains.count()})" if gains.count() else "— (no matched baseline)"
    params = (lambda frame: frame[MODEL_PARAMS] if MODEL_PARAMS in frame.columns else pd.Series(dtype=float))
    rows = [
        ["teacher", setup.teacher, _format_count(teacher_params),
         "—" if pd.isna(teacher_acc) else f"{teacher_acc:.2f}", ""],
        ["baseline student (CE only)", setup.student, _format_count(params(baselines)),
         _format_accuracy(*baseline) if baseline[2] else "— (no baseline runs)", ""],
        [f"best KD student (T={temperature:g}, α={alpha:g})", setup.student, _format_count(params(best_runs)),
         _format_accuracy(*best), gain_text],
    ]  # fmt: skip
    header = ["model", "architecture", "parameters", "test accuracy (%)", "KD gain (pp, same-seed baseline)"]
    note = "Accuracies: mean over seeds ± 95% CI half-width (Student t); n = runs."
    return [*markdown_table(header, rows), note, ""]


def _figures_section(figures: FigureOutcome, out_dir: Path) -> list[str]:
    """Links to the written figures, then one line per skipped figure saying why."""
    lines = ["## Figures", ""]
    for path, caption in figures.written.values():
        lines += [f"### {caption}", "", f"![{caption}]({path.relative_to(out_dir).as_posix()})", ""]
    if figures.skipped:
        lines += ["Figures not drawn:", ""]
        lines += [f"- `{name}` skipped: {reason}" for name, reason in figures.skipped.items()]
        lines.append("")
    return lines
