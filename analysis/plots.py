"""Seaborn figures of a sweep; each function returns a matplotlib Figure and raises ValueError
(one readable line) when the runs cannot make that figure.

Figures are built without pyplot, so no backend or global figure state is involved; in a
notebook a returned Figure displays itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kd_hydra import schema

from .aggregate import (
    Setup,
    as_float,
    baseline_accuracy,
    completed_runs,
    distill_setups,
    kd_gain,
    teacher_accuracy,
)
from .load import (
    ALPHA,
    EPOCH,
    FINAL_TEST_ACC,
    MODE,
    OVERRIDES,
    RUN_DIR,
    TEMPERATURE,
    TEST_ACC,
    TRAIN_LOSS,
)

FIGSIZE = (7.0, 4.5)
WIDE_FIGSIZE = (11.0, 4.5)
DPI = 120
MAX_DEFAULT_CURVES = 8

TEMPERATURE_LABEL = "temperature T"
ALPHA_LABEL = "α (weight of the KD term)"
ACCURACY_LABEL = "student test accuracy (%)"
GAIN_LABEL = "KD gain over baseline (percentage points)"


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as a PNG at 120 dpi (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _new_figure(figsize: tuple[float, float] = FIGSIZE, ncols: int = 1) -> tuple[Figure, list]:
    """A pyplot-free constrained-layout Figure with ``ncols`` axes side by side."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _distill_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, Setup]:
    """Completed distill runs of ``df`` with numeric T, alpha and accuracy, and their one setup."""
    setups = distill_setups(df)
    if not setups:
        raise ValueError("no completed distill runs to plot")
    if len(setups) > 1:
        listed = "; ".join(setup.title() for setup in setups)
        raise ValueError(f"runs of {len(setups)} setups ({listed}): plot one at a time (analysis.runs_of_setup)")
    runs = completed_runs(df, schema.MODE_DISTILL).copy()
    for column in (TEMPERATURE, ALPHA, FINAL_TEST_ACC):
        if column not in runs.columns:
            raise ValueError(f"the distill runs have no {column!r} column")
        runs[column] = as_float(runs[column])
    runs = runs.dropna(subset=[TEMPERATURE, ALPHA, FINAL_TEST_ACC])
    if runs.empty:
        raise ValueError(f"no completed distill run has {TEMPERATURE}, {ALPHA} and {FINAL_TEST_ACC}")
    return runs, setups[0]


def _require_temperatures(runs: pd.DataFrame) -> None:
    """Raise ValueError unless ``runs`` span at least two temperatures (a line needs two points)."""
    temperatures = sorted(runs[TEMPERATURE].unique())
    if len(temperatures) < 2:
        found = ", ".join(f"T={t:g}" for t in temperatures)
        raise ValueError(f"needs at least two temperatures (found {len(temperatures)}: {found})")


def _alpha_hue(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``runs`` with a categorical "α" column ("0.5", ...) and its numeric order, for hue."""
    alphas = sorted(runs[ALPHA].unique())
    labels = [f"{alpha:g}" for alpha in alphas]
    return runs.assign(**{"α": runs[ALPHA].map(lambda a: f"{a:g}")}), labels


def _seed_count_text(counts: pd.Series) -> str:
    """``"n = 3 seeds"`` or ``"n = 1–3 seeds"`` from per-cell run counts."""
    low, high = int(counts.min()), int(counts.max())
    return f"n = {low} seed{'s' if high > 1 else ''}" if low == high else f"n = {low}–{high} seeds"


def plot_heatmap(df: pd.DataFrame) -> Figure:
    """Heatmap of the mean (over seeds) final test accuracy of the KD student, T (x) × α (y)."""
    runs, setup = _distill_runs(df)
    cells = runs.groupby([ALPHA, TEMPERATURE])[FINAL_TEST_ACC]
    grid = cells.mean().unstack(TEMPERATURE).sort_index(ascending=False)
    grid.index = [f"{alpha:g}" for alpha in grid.index]
    grid.columns = [f"{temperature:g}" for temperature in grid.columns]
    fig, (ax,) = _new_figure()
    sns.heatmap(
        grid, ax=ax, annot=True, fmt=".1f", cmap="viridis", linewidths=0.5,
        cbar_kws={"label": "test accuracy (%)"},
    )  # fmt: skip
    ax.set_xlabel(TEMPERATURE_LABEL)
    ax.set_ylabel(ALPHA_LABEL)
    ax.set_title(
        f"KD student test accuracy, mean over seeds ({_seed_count_text(cells.count())})\n{setup.title()}"
    )
    return fig


def plot_accuracy_vs_temperature(df: pd.DataFrame) -> Figure:
    """KD student accuracy vs T, one line per α with a 95% CI band over seeds, plus the
    baseline-student and teacher accuracies as horizontal reference lines."""
    runs, setup = _distill_runs(df)
    _require_temperatures(runs)
    runs, alpha_order = _alpha_hue(runs)
    fig, (ax,) = _new_figure()
    sns.lineplot(
        data=runs, x=TEMPERATURE, y=FINAL_TEST_ACC, hue="α", hue_order=alpha_order,
        errorbar=("ci", 95), seed=0, marker="o", ax=ax,
    )  # fmt: skip
    baseline = baseline_accuracy(df, setup)
    if not pd.isna(baseline):
        ax.axhline(baseline, color="0.35", linestyle="--", label=f"baseline student {setup.student} ({baseline:.1f})")
    teacher = teacher_accuracy(df, setup)
    if not pd.isna(teacher):
        ax.axhline(teacher, color="black", linestyle=":", label=f"teacher {setup.teacher} ({teacher:.1f})")
    ax.set_xticks(sorted(runs[TEMPERATURE].unique()))
    ax.set_xlabel(TEMPERATURE_LABEL)
    ax.set_ylabel(ACCURACY_LABEL)
    fig.suptitle(f"KD student accuracy vs temperature (bands: 95% CI over seeds)\n{setup.title()}")
    ax.legend(title=ALPHA_LABEL, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return fig


def plot_kd_gain(df: pd.DataFrame) -> Figure:
    """KD gain (distill minus matched baseline accuracy, see ``kd_gain``) vs T, one line per α,
    with a zero line; ValueError when no distill run has a matched baseline."""
    _, setup = _distill_runs(df)
    gains = kd_gain(df)
    gains = gains.assign(**{c: as_float(gains[c]) for c in (TEMPERATURE, ALPHA)})
    gains = gains.dropna(subset=["gain", TEMPERATURE, ALPHA])
    if gains.empty:
        raise ValueError(
            "no distill run has a matched baseline (a completed mode=student run with the same "
            "dataset, student, trainer/optimizer/scheduler settings and seed)"
        )
    _require_temperatures(gains)
    gains, alpha_order = _alpha_hue(gains)
    fig, (ax,) = _new_figure()
    ax.axhline(0.0, color="0.35", linestyle="--", label="no gain (baseline student)")
    sns.lineplot(
        data=gains, x=TEMPERATURE, y="gain", hue="α", hue_order=alpha_order,
        errorbar=("ci", 95), seed=0, marker="o", ax=ax,
    )  # fmt: skip
    ax.set_xticks(sorted(gains[TEMPERATURE].unique()))
    ax.set_xlabel(TEMPERATURE_LABEL)
    ax.set_ylabel(GAIN_LABEL)
    fig.suptitle(f"KD gain over the same-seed baseline student (bands: 95% CI over seeds)\n{setup.title()}")
    ax.legend(title=ALPHA_LABEL, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return fig


def default_curve_runs(history: pd.DataFrame) -> list[str]:
    """The run of each mode with the highest last test accuracy (runs without one are skipped)."""
    test = history[history["metric"] == TEST_ACC].sort_values([RUN_DIR, EPOCH])
    if test.empty:
        return list(history[RUN_DIR].drop_duplicates())[:MAX_DEFAULT_CURVES]
    last = test.groupby(RUN_DIR, sort=True).tail(1)
    group = last[MODE] if MODE in last.columns else pd.Series("run", index=last.index)
    best = last.loc[last.groupby(group.fillna("?"))["value"].idxmax()]
    return list(best.sort_values([MODE] if MODE in best.columns else [RUN_DIR])[RUN_DIR])


def curve_labels(history: pd.DataFrame, run_dirs: Sequence[str]) -> dict[str, str]:
    """A legend label per run: its mode and the overrides that differ between the chosen runs
    (loss.* left out for teacher and student runs, which train on CE only)."""
    firsts = history.drop_duplicates(RUN_DIR).set_index(RUN_DIR)
    overrides = firsts[OVERRIDES] if OVERRIDES in firsts.columns else pd.Series("", index=firsts.index)
    tokens = {run: ("" if pd.isna(overrides[run]) else str(overrides[run])).split() for run in run_dirs}
    shared = set.intersection(*(set(t) for t in tokens.values())) if len(run_dirs) > 1 else set()
    labels = {}
    for run in run_dirs:
        mode = str(firsts.at[run, MODE]) if MODE in firsts.columns else ""
        irrelevant = ("mode=",) if mode == schema.MODE_DISTILL else ("mode=", "loss.")  # CE-only runs ignore loss.*
        distinct = [token for token in tokens[run] if token not in shared and not token.startswith(irrelevant)]
        labels[run] = f"{mode}: {' '.join(distinct)}".strip(": ") or Path(run).name
    return labels


def plot_learning_curves(history_long_df: pd.DataFrame, run_dirs: Sequence[str] | None = None) -> Figure:
    """Test accuracy and training loss per epoch (two panels), one line per run of ``run_dirs``.

    ``history_long_df`` is a ``load_history`` table; ``run_dirs`` defaults to ``default_curve_runs``.
    """
    history = history_long_df
    if history.empty:
        raise ValueError("no history rows: no run has a readable history.csv")
    chosen = [str(run) for run in (run_dirs if run_dirs is not None else default_curve_runs(history))]
    unknown = [run for run in chosen if run not in set(history[RUN_DIR])]
    if unknown:
        raise ValueError(f"no history for run(s): {', '.join(unknown)}")
    if not chosen:
        raise ValueError("no run chosen for the learning curves")
    labels = curve_labels(history, chosen)
    fig, (acc_ax, loss_ax) = _new_figure(WIDE_FIGSIZE, ncols=2)
    palette = sns.color_palette(n_colors=len(chosen))
    for color, run in zip(palette, chosen, strict=True):
        own = history[history[RUN_DIR] == run].sort_values(EPOCH)
        for ax, metric in ((acc_ax, TEST_ACC), (loss_ax, TRAIN_LOSS)):
            points = own[own["metric"] == metric]
            ax.plot(points[EPOCH], points["value"], marker="o", markersize=3, color=color, label=labels[run])
    acc_ax.set_title("test accuracy per epoch")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    loss_ax.set_title("training loss per epoch (the optimised objective)")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("mean training loss (nats)")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = acc_ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=1, fontsize="small", title="run (overrides)")
    fig.suptitle("Learning curves")
    return fig
