"""Seaborn figures of a sweep; each function returns a matplotlib Figure and raises ValueError
(one readable line) when the runs cannot make that figure.

Figures are built without pyplot, so no backend or global figure state is involved; in a
notebook a returned Figure displays itself.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kd_hydra.enums import Mode
from kd_hydra.records import schema
from kd_hydra.records.files import atomic_write_bytes

from .aggregate import (
    METHOD,
    Setup,
    aggregate,
    as_float,
    baseline_levels,
    compare_methods,
    completed_runs,
    distill_methods,
    distill_setups,
    format_value,
    kd_gain,
    runs_of_setup,
    selection_metric,
    setting_label,
    short_name,
    swept_loss_keys,
    teacher_accuracy,
    varying_columns,
)
from .load import (
    ALPHA,
    EPOCH,
    FINAL_TEST_ACC,
    FINAL_VAL_ACC,
    MODE,
    OVERRIDES,
    RUN_DIR,
    TEMPERATURE,
    TEST_ACC,
    TRAIN_LOSS,
    is_search,
    load_runs,
)
from .stats import interval

FIGSIZE = (7.0, 4.5)
WIDE_FIGSIZE = (11.0, 4.5)
DPI = 120
MAX_DEFAULT_CURVES = 12
#: Learning curves of at most this many epochs get a tick per epoch.
MAX_EPOCH_TICKS = 12
#: A heatmap axis with more distinct values than this is a continuous search, not a grid.
MAX_HEATMAP_LEVELS = 15
#: At most this many lines (combinations of the other varying settings) in a line plot.
MAX_HUE_LEVELS = 10
#: At most this many panels (combinations of the other varying settings) in a heatmap.
MAX_FACETS = 6

TEMPERATURE_LABEL = "temperature T"
ALPHA_LABEL = "α (weight of the KD term)"
ACCURACY_LABEL = "student test accuracy (%)"
GAIN_LABEL = "KD gain over baseline (percentage points)"
AXIS_LABELS = {TEMPERATURE: TEMPERATURE_LABEL, ALPHA: ALPHA_LABEL}
#: History columns with the loss-part prefix that are not loss terms.
NOT_LOSS_TERMS = ("train_acc",)
#: The teacher's own panel of the learning curves (its epochs are not the students').
TEACHER_PANEL = "teacher"
METRIC_TITLES = {TEST_ACC: "test accuracy per epoch", TRAIN_LOSS: "training loss (the optimised objective)",
                 TEACHER_PANEL: "teacher: test accuracy per epoch"}  # fmt: skip
#: Units of the loss terms whose meaning is the same in every method (others: "its own units").
TERM_UNITS = {"train_ce": "cross-entropy (nats)", "train_kd": "T²-scaled KL(teacher‖student) (nats)"}


class NotApplicable(ValueError):
    """The runs cannot make this kind of figure at all (no temperature, one method, no baseline, ...):
    the report leaves such figures out instead of explaining each."""


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as a PNG at 120 dpi (parent folders created); returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _new_figure(figsize: tuple[float, float] = FIGSIZE, ncols: int = 1) -> tuple[Figure, list]:
    """A pyplot-free constrained-layout Figure with ``ncols`` axes side by side."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _one_setup(df: pd.DataFrame) -> Setup:
    """The one setup of the completed distill runs of ``df``; ValueError for none or several."""
    setups = distill_setups(df)
    if not setups:
        raise NotApplicable("no completed distill runs to plot")
    if len(setups) > 1:
        listed = "; ".join(setup.title() for setup in setups)
        raise ValueError(f"runs of {len(setups)} setups ({listed}): plot one at a time (analysis.runs_of_setup)")
    return setups[0]


def _distill_runs(df: pd.DataFrame, numeric: Sequence[str] = ()) -> tuple[pd.DataFrame, Setup, str]:
    """Completed distill runs of ``df`` with numeric accuracy (and ``numeric`` columns), their one
    setup and their one method; ValueError when there are none, or several setups or methods."""
    setup = _one_setup(df)
    methods = distill_methods(df)
    if len(methods) > 1:
        raise ValueError(f"runs of {len(methods)} methods ({', '.join(methods)}): plot one at a time "
                         "(analysis.runs_of_method)")  # fmt: skip
    runs = completed_runs(df, Mode.distill.value).copy()
    for column in (*numeric, FINAL_TEST_ACC):
        if column not in runs.columns:
            raise NotApplicable(f"the distill runs have no {column!r} column")
        runs[column] = as_float(runs[column])
    runs = runs.dropna(subset=[*numeric, FINAL_TEST_ACC])
    if runs.empty:
        raise NotApplicable(f"no completed distill run has {', '.join([*numeric, FINAL_TEST_ACC])}")
    return runs, setup, methods[0]


def _require_temperatures(runs: pd.DataFrame) -> None:
    """Raise ValueError unless ``runs`` span at least two temperatures (a line needs two points)."""
    temperatures = sorted(runs[TEMPERATURE].unique())
    if len(temperatures) < 2:
        found = ", ".join(f"T={t:g}" for t in temperatures)
        raise NotApplicable(f"needs at least two temperatures (found {len(temperatures)}: {found})")


def _hue(runs: pd.DataFrame, x: str) -> tuple[pd.DataFrame, str | None, list[str], str]:
    """``runs`` with a categorical "setting" column naming the other varying settings (besides ``x``),
    its order and legend title; (runs, None, [], "") when nothing else varies. The α values alone
    when only alpha varies. ValueError for more than MAX_HUE_LEVELS lines."""
    others = [c for c in varying_columns(runs) if c != x]
    if not others:
        return runs, None, [], ""
    if others == [ALPHA]:
        labels = runs[ALPHA].map(format_value)
        order = [format_value(value) for value in _sorted_levels(runs[ALPHA])]
    else:
        labels = runs.apply(lambda run: setting_label(run, others), axis=1)
        order = sorted(set(labels))
    if len(order) > MAX_HUE_LEVELS:
        raise ValueError(f"{len(order)} combinations of other settings ({', '.join(others)}) would be "
                         f"{len(order)} lines (at most {MAX_HUE_LEVELS}): plot a subset")  # fmt: skip
    title = ALPHA_LABEL if others == [ALPHA] else ", ".join(short_name(c) for c in others)
    return runs.assign(setting=labels), "setting", order, title


def _seed_count_text(counts: pd.Series) -> str:
    """``"n = 3 seeds"`` or ``"n = 1–3 seeds"`` from per-cell run counts."""
    low, high = int(counts.min()), int(counts.max())
    return f"n = {low} seed{'s' if high > 1 else ''}" if low == high else f"n = {low}–{high} seeds"


def heatmap_axes(df: pd.DataFrame) -> tuple[str, str]:
    """The (x, y) loss keys of the default heatmap: T × α when both are swept, else the first two
    swept loss keys; ValueError when fewer than two loss keys vary or one is not a grid."""
    swept = swept_loss_keys(df)
    if len(swept) < 2:
        found = ", ".join(swept) or "none"
        raise NotApplicable(f"needs two swept loss keys (found {len(swept)}: {found})")
    x, y = (TEMPERATURE, ALPHA) if {TEMPERATURE, ALPHA} <= set(swept) else (swept[0], swept[1])
    return x, y


def _axis_label(column: str) -> str:
    """Axis label of a setting column: the T and α labels, otherwise the dotted key."""
    return AXIS_LABELS.get(column, column)


def _sorted_levels(values: pd.Series) -> list:
    """Distinct present values, numerically sorted when they are all numbers."""
    distinct = list(dict.fromkeys(values.dropna()))
    numeric = as_float(pd.Series(distinct, dtype=object))
    if numeric.notna().all():
        return [v for _, v in sorted(zip(numeric, distinct, strict=True), key=lambda pair: pair[0])]
    return sorted(distinct, key=str)


def _refuse_search(df: pd.DataFrame) -> None:
    """NotApplicable for the distill runs of an Optuna search: continuous samples are drawn as samples."""
    distill = completed_runs(df, Mode.distill.value)
    if len(distill) and is_search(distill).all():
        raise NotApplicable("an Optuna search: its trials are drawn as samples (search_samples)")


def plot_search_samples(df: pd.DataFrame) -> Figure:
    """The trials of an Optuna search as samples: the objective (validation accuracy when present, else test)
    of each trial against each searched value, one panel per value that varies; the best trial ringed.
    Runs of one setup and one method; NotApplicable for runs no Optuna sweeper started."""
    distill = completed_runs(df, Mode.distill.value)
    if distill.empty or not is_search(distill).all():
        raise NotApplicable("not an Optuna search (hydra.sweeper in .hydra/hydra.yaml)")
    metric = selection_metric(df)
    runs, setup, method = _distill_runs(df, numeric=(metric,) if metric != FINAL_TEST_ACC else ())
    keys = [c for c in varying_columns(runs) if as_float(runs[c]).notna().all()]
    if not keys:
        raise NotApplicable("no numeric searched value varies among the trials")
    shown = keys[:MAX_FACETS]
    fig, axes = _new_figure((min(4.2 * len(shown), 18.0), FIGSIZE[1]), ncols=len(shown))
    objective = as_float(runs[metric])
    best = objective.idxmax()
    for ax, key in zip(axes, shown, strict=True):
        values = as_float(runs[key])
        ax.scatter(values, objective, s=22, alpha=0.75, color=sns.color_palette()[0], label="trial")
        ax.scatter([values[best]], [objective[best]], s=110, facecolors="none", edgecolors="black",
                   label=f"best trial ({objective[best]:.2f})")  # fmt: skip
        if (values > 0).all() and values.max() >= 100 * values.min():
            ax.set_xscale("log")
        ax.set_xlabel(_axis_label(key))
        ax.set_ylabel("validation accuracy (%)" if metric == FINAL_VAL_ACC else ACCURACY_LABEL)
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    more = f"; {len(keys) - len(shown)} more searched values not shown" if len(keys) > len(shown) else ""
    fig.suptitle(f"{method}: Optuna search, {len(runs)} trials, objective against each searched value{more}\n"
                 f"{setup.title()}")  # fmt: skip
    return fig


def plot_heatmap(df: pd.DataFrame, x: str | None = None, y: str | None = None) -> Figure:
    """Heatmap of the mean (over seeds) final test accuracy of the distilled student over two setting
    columns ``x`` × ``y`` (default :func:`heatmap_axes`: T × α for a Hinton-KD grid).

    Runs of one setup and one method. When other settings vary too, one panel per combination of them
    (at most MAX_FACETS): a cell only ever averages runs equal in every setting but the seed.
    ValueError when the runs cannot make the figure; NotApplicable for an Optuna search (:func:`plot_search_samples`).
    """
    _refuse_search(df)
    if (x is None) != (y is None):
        raise ValueError("give both x and y, or neither")
    runs, setup, method = _distill_runs(df)
    x, y = heatmap_axes(runs) if x is None else (x, y)
    for column in (x, y):
        if column not in runs.columns:
            raise ValueError(f"the distill runs have no {column!r} column")
        levels = runs[column].dropna().map(format_value).nunique()
        if levels > MAX_HEATMAP_LEVELS:
            raise NotApplicable(f"{column} has {levels} distinct values (at most {MAX_HEATMAP_LEVELS}): not a grid")
    runs = runs.dropna(subset=[x, y])
    others = [c for c in varying_columns(runs) if c not in (x, y)]
    labels = runs.apply(lambda run: setting_label(run, others), axis=1) if others else pd.Series("", index=runs.index)
    panels = sorted(set(labels))
    if len(panels) > MAX_FACETS:
        raise ValueError(f"{len(panels)} combinations of other settings ({', '.join(others)}) would be "
                         f"{len(panels)} panels (at most {MAX_FACETS}): plot a subset")  # fmt: skip
    width = FIGSIZE[0] if len(panels) == 1 else min(5.5 * len(panels), 18.0)
    fig, axes = _new_figure((width, FIGSIZE[1]), ncols=len(panels))
    counts = []
    for ax, panel in zip(axes, panels, strict=True):
        cells = aggregate(runs[labels == panel], by=[y, x, *others])
        counts.append(cells["n"])
        grid = cells.pivot_table(index=y, columns=x, values="mean", aggfunc="first", dropna=False)
        grid = grid.reindex(index=_sorted_levels(cells[y])[::-1], columns=_sorted_levels(cells[x]))
        grid.index = [format_value(v) for v in grid.index]
        grid.columns = [format_value(v) for v in grid.columns]
        sns.heatmap(
            grid, ax=ax, annot=True, fmt=".1f", cmap="viridis", linewidths=0.5,
            cbar_kws={"label": "test accuracy (%)"},
        )  # fmt: skip
        ax.set_xlabel(_axis_label(x))
        ax.set_ylabel(_axis_label(y))
        if panel:
            ax.set_title(panel, fontsize="small")
    seeds = _seed_count_text(pd.concat(counts))
    fig.suptitle(f"{method} student test accuracy, mean over seeds ({seeds})\n{setup.title()}")
    return fig


def _reference_lines(ax: Any, df: pd.DataFrame, setup: Setup) -> None:
    """Horizontal lines: the baseline student, one per baseline setting (seeds averaged, settings never;
    at most MAX_HUE_LEVELS), and the teacher."""
    levels = baseline_levels(df, setup)[:MAX_HUE_LEVELS]
    shades = [str(round(0.2 + 0.5 * i / max(len(levels) - 1, 1), 2)) for i in range(len(levels))]
    for shade, (label, mean, _) in zip(shades, levels, strict=True):
        named = f", {label}" if label else ""
        ax.axhline(mean, color=shade, linestyle="--", label=f"baseline student {setup.student}{named} ({mean:.1f})")
    teacher = teacher_accuracy(df, setup)
    if not pd.isna(teacher):
        ax.axhline(teacher, color="black", linestyle=":", label=f"teacher {setup.teacher} ({teacher:.1f})")


def _mean_lines(ax: Any, data: pd.DataFrame, x: str, y: str, hue: str | None, order: Sequence[str],
                label: str) -> None:  # fmt: skip
    """One line per ``hue`` level (``label`` without hue): the mean of ``y`` over seeds at each ``x``, with its 95%
    Student-t interval as a band (the report's statistics; no band where a point has one seed)."""
    levels = order if hue else [None]
    palette = sns.color_palette(n_colors=len(levels))
    for color, level in zip(palette, levels, strict=True):
        part = data if level is None else data[data[hue] == level]
        points = sorted(part[x].dropna().unique())
        values = [interval(part.loc[part[x] == point, y]) for point in points]
        means = [v.mean for v in values]
        ax.plot(points, means, marker="o", color=color, label=label if level is None else level)
        low = [v.low if v.has_width else v.mean for v in values]
        high = [v.high if v.has_width else v.mean for v in values]
        ax.fill_between(points, low, high, color=color, alpha=0.2, linewidth=0)


def plot_accuracy_vs_temperature(df: pd.DataFrame) -> Figure:
    """Distilled-student accuracy vs T with a 95% CI band over seeds, one line per combination of the
    other varying settings (per α for a Hinton-KD grid), plus the baseline-student and teacher
    accuracies as horizontal reference lines. Runs of one setup and one method."""
    _refuse_search(df)
    runs, setup, method = _distill_runs(df, numeric=(TEMPERATURE,))
    _require_temperatures(runs)
    runs, hue, hue_order, hue_title = _hue(runs, TEMPERATURE)
    fig, (ax,) = _new_figure()
    _mean_lines(ax, runs, TEMPERATURE, FINAL_TEST_ACC, hue, hue_order, method)
    _reference_lines(ax, df, setup)
    ax.set_xticks(sorted(runs[TEMPERATURE].unique()))
    ax.set_xlabel(TEMPERATURE_LABEL)
    ax.set_ylabel(ACCURACY_LABEL)
    fig.suptitle(f"{method} student accuracy vs temperature (bands: 95% t-interval over seeds)\n{setup.title()}")
    ax.legend(title=hue_title or None, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return fig


def plot_kd_gain(df: pd.DataFrame) -> Figure:
    """Gain (distilled minus matched baseline accuracy, see ``kd_gain``) vs T, one line per combination
    of the other varying settings (per α for Hinton KD), with a zero line; ValueError when no distill
    run has a matched baseline. Runs of one setup and one method."""
    _refuse_search(df)
    _, setup, method = _distill_runs(df, numeric=(TEMPERATURE,))
    gains = kd_gain(df)
    gains = gains.assign(**{TEMPERATURE: as_float(gains[TEMPERATURE])}).dropna(subset=["gain", TEMPERATURE])
    if gains.empty:
        raise NotApplicable(
            "no distill run has a matched baseline (a completed mode=student run with the same "
            "dataset, student, trainer/optimizer/scheduler settings and seed)"
        )
    _require_temperatures(gains)
    gains, hue, hue_order, hue_title = _hue(gains, TEMPERATURE)
    fig, (ax,) = _new_figure()
    ax.axhline(0.0, color="0.35", linestyle="--", label="no gain (baseline student)")
    _mean_lines(ax, gains, TEMPERATURE, "gain", hue, hue_order, method)
    ax.set_xticks(sorted(gains[TEMPERATURE].unique()))
    ax.set_xlabel(TEMPERATURE_LABEL)
    ax.set_ylabel(GAIN_LABEL)
    fig.suptitle(f"{method} paired gain over the same-seed baseline (bands: 95% t-interval)\n{setup.title()}")
    ax.legend(title=hue_title or None, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return fig


def plot_method_comparison(df: pd.DataFrame) -> Figure:
    """Final test accuracy of each method's best setting (see ``compare_methods``): the seeds as dots,
    the mean with its 95% CI (Student t) as an error bar, the baseline student and the teacher as
    reference lines. Runs of one setup and at least two methods; ValueError otherwise."""
    setup = _one_setup(df)
    methods = distill_methods(df)
    if len(methods) < 2:
        raise NotApplicable(f"needs at least two methods (found {len(methods)}: {', '.join(methods)})")
    table = compare_methods(df)
    table = table[table["n"] > 0]
    if table.empty:
        raise ValueError(f"no completed distill run has a {FINAL_TEST_ACC}")
    gains = kd_gain(df).set_index(RUN_DIR)["gain"]
    with_gain = bool(gains.notna().any())
    width = WIDE_FIGSIZE[0] if len(table) > 4 or with_gain else FIGSIZE[0]
    fig, axes = _new_figure((width * (1.6 if with_gain and len(table) > 4 else 1.0), FIGSIZE[1]), 1 + with_gain)
    by_dir = df.set_index(RUN_DIR)
    pairs = zip(table[METHOD], table["setting"], strict=True)
    ticks = [f"{method}\n{setting.replace(', ', chr(10))}" for method, setting in pairs]
    per_seed = [as_float(by_dir.loc[list(row["run_dirs"]), FINAL_TEST_ACC]) for row in table.to_dict("records")]
    _seeds_and_intervals(axes[0], per_seed, ticks)
    _reference_lines(axes[0], df, setup)
    axes[0].set_ylabel(ACCURACY_LABEL)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    if with_gain:
        _seeds_and_intervals(axes[1], [as_float(gains.reindex(list(dirs))) for dirs in table["run_dirs"]], ticks)
        axes[1].axhline(0.0, color="0.35", linestyle="--")
        axes[1].set_ylabel("paired gain over the same-seed baseline (pp)")
    fig.suptitle(f"Methods compared: mean ± 95% t-interval over seeds (dots: seeds)\n{setup.title()}")
    return fig


def _seeds_and_intervals(ax: Any, per_group: Sequence[pd.Series], ticks: Sequence[str]) -> None:
    """Per group (x position): its values as dots and their mean with the 95% t-interval as an error bar."""
    palette = sns.color_palette(n_colors=len(per_group))
    for position, (color, values) in enumerate(zip(palette, per_group, strict=True)):
        present = values.dropna()
        ax.scatter([position] * len(present), present, color=color, alpha=0.5, s=18, zorder=2)
        value = interval(present)
        if value.n:
            error = value.half_width if value.has_width else 0.0
            ax.errorbar([position], [value.mean], yerr=[error], fmt="o", color=color, capsize=6, markersize=8,
                        zorder=3)  # fmt: skip
    ax.set_xticks(list(range(len(per_group))), ticks, fontsize="x-small")
    ax.set_xlim(-0.6, len(per_group) - 0.4)
    ax.set_xlabel("method (its selected setting: best on validation, else test; ties all shown)")
    ax.grid(axis="y", alpha=0.3)


def default_curve_groups(runs: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """The curves the report draws, label -> run dirs (seeds of one setting, averaged per epoch): each
    method's selected setting(s) (:func:`analysis.compare_methods`, ties included: the report's selection),
    the baseline student per setting and the teacher of the runs' one setup; without distill runs, every
    setting of each mode. ValueError for several setups or more than MAX_DEFAULT_CURVES curves."""
    setups = distill_setups(runs)
    if len(setups) > 1:
        listed = "; ".join(setup.title() for setup in setups)
        raise ValueError(f"runs of {len(setups)} setups ({listed}): plot one at a time (analysis.runs_of_setup)")
    groups: dict[str, tuple[str, ...]] = {}
    if setups:
        subset = runs_of_setup(runs, setups[0])
        table = compare_methods(subset)
        several = len(set(table[METHOD])) > 1 if not table.empty else False
        for row in table.to_dict("records"):
            name = f"{row[METHOD]}: {row['setting']}" if several else f"distill: {row['setting']}"
            groups[name] = tuple(row["run_dirs"])
        modes = (Mode.student.value, Mode.teacher.value)
        runs = subset
    else:
        modes = (Mode.teacher.value, Mode.student.value, Mode.distill.value)
    for mode in modes:
        done = completed_runs(runs, mode)
        if done.empty:
            continue
        by = [c for c in varying_columns(done) if not (mode != Mode.distill.value and c.startswith("loss."))]
        parts = done.groupby(by, dropna=False, sort=False) if by else [((), done)]
        for _, part in parts:
            setting = setting_label(part.iloc[0], by)
            name = {Mode.student.value: "baseline student"}.get(mode, mode)
            groups[f"{name}: {setting}" if setting else name] = tuple(part[RUN_DIR])
    if len(groups) > MAX_DEFAULT_CURVES:
        raise ValueError(f"{len(groups)} settings would be {len(groups)} curves (at most {MAX_DEFAULT_CURVES}): "
                         "pass run_dirs")  # fmt: skip
    return groups


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
        irrelevant = ("mode=",) if mode == Mode.distill.value else ("mode=", "loss.")  # CE-only runs ignore loss.*
        distinct = [token for token in tokens[run] if token not in shared and not token.startswith(irrelevant)]
        labels[run] = f"{mode}: {' '.join(distinct)}".strip(": ") or Path(run).name
    return labels


def curve_metrics(history: pd.DataFrame) -> list[str]:
    """The panels of the learning curves: test accuracy, the optimised loss, then each loss term
    (``train_<part>``) present, each on its own axis (terms of very different scales)."""
    present = set(history["metric"])
    terms = sorted(m for m in present if m.startswith(schema.LOSS_PART_PREFIX) and m not in NOT_LOSS_TERMS)
    return [m for m in (TEST_ACC, TRAIN_LOSS) if m in present] + [m for m in terms if m != TRAIN_LOSS]


def plot_learning_curves(history_long_df: pd.DataFrame, run_dirs: Sequence[str] | None = None,
                         runs: pd.DataFrame | None = None) -> Figure:  # fmt: skip
    """The students' test accuracy, the optimised loss and each loss term per epoch, one panel each (each term on
    its own axis, in its own units), and the teacher's test accuracy in a panel of its own (its own epochs).

    ``history_long_df`` is a ``load_history`` table. With ``run_dirs``: one line per run. Without: one
    line per setting of :func:`default_curve_groups` (the report's selection; seeds averaged per epoch),
    computed from ``runs`` (a ``load_runs`` table; read from the history's run dirs when not given).
    """
    history = history_long_df
    if history.empty:
        raise NotApplicable("no history rows: no run has a readable history.csv")
    if run_dirs is not None:
        chosen = [str(run) for run in run_dirs]
        unknown = [run for run in chosen if run not in set(history[RUN_DIR])]
        if unknown:
            raise ValueError(f"no history for run(s): {', '.join(unknown)}")
        labels = curve_labels(history, chosen)
        groups = {labels[run]: (run,) for run in chosen}
        legend_title = "run (overrides)"
    else:
        if runs is None:
            runs = load_runs(*dict.fromkeys(history[RUN_DIR]))
        groups = {name: dirs for name, dirs in default_curve_groups(runs).items()
                  if set(dirs) & set(history[RUN_DIR])}  # fmt: skip
        legend_title = "setting (mean over its seeds)"
    if not groups:
        raise ValueError("no run chosen for the learning curves")
    teacher_dirs = _teacher_dirs(history)
    teachers = {name: dirs for name, dirs in groups.items() if set(dirs) <= teacher_dirs}
    students = {name: dirs for name, dirs in groups.items() if name not in teachers}
    panels = [(metric, students) for metric in curve_metrics(history[history[RUN_DIR].isin(_dirs_of(students))])]
    panels += [(TEACHER_PANEL, teachers)] * bool(teachers)
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.4 * len(groups) + 0.8), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    colors = dict(zip(groups, sns.color_palette(n_colors=len(groups)), strict=True))
    for ax, (metric, members) in zip(axes, panels, strict=False):
        column = TEST_ACC if metric == TEACHER_PANEL else metric
        for name, dirs in members.items():
            points = history[(history["metric"] == column) & history[RUN_DIR].isin(dirs)]
            if points.empty:
                continue
            mean = points.groupby(EPOCH)["value"].mean()
            ax.plot(mean.index, mean.values, marker="o", markersize=3, color=colors[name], label=name)
        ax.set_title(METRIC_TITLES.get(metric, f"{metric} (unweighted term)"), fontsize="medium")
        ax.set_xlabel("teacher epoch (its own recipe)" if metric == TEACHER_PANEL else "epoch")
        ax.set_ylabel(axis_label_of(metric))
        ax.grid(alpha=0.3)
        epochs = sorted(set(history.loc[(history["metric"] == column) & history[RUN_DIR].isin(_dirs_of(members)),
                                        EPOCH]))  # fmt: skip
        if len(epochs) <= MAX_EPOCH_TICKS:
            ax.set_xticks([int(e) if float(e).is_integer() else e for e in epochs])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    handles = {}
    for ax in axes[: len(panels)]:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    names = list(handles)
    fig.legend([handles[n] for n in names], names, loc="outside lower center", ncols=1, fontsize="small",
               title=legend_title)  # fmt: skip
    fig.suptitle("Learning curves")
    return fig


def _teacher_dirs(history: pd.DataFrame) -> set[str]:
    """The run dirs of ``history`` whose mode is teacher (trained on their own recipe and epochs)."""
    if MODE not in history.columns:
        return set()
    return set(history.loc[history[MODE].astype(object) == Mode.teacher.value, RUN_DIR])


def _dirs_of(groups: dict[str, tuple[str, ...]]) -> set[str]:
    return {d for dirs in groups.values() for d in dirs}


def axis_label_of(metric: str) -> str:
    """The y label of a learning-curve panel: accuracy in %, the objective and each loss term in its own units."""
    if metric in (TEST_ACC, TEACHER_PANEL):
        return "test accuracy (%)"
    if metric == TRAIN_LOSS:
        return "weighted sum of the terms (mixed units)"
    return TERM_UNITS.get(metric, f"{metric.removeprefix(schema.LOSS_PART_PREFIX)} term (its own units)")
