"""Summaries of a :func:`analysis.load_runs` table: means with 95% CIs, setups, and KD gain."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from kd_hydra import schema

from .load import (
    DATASET,
    FINAL_TEST_ACC,
    META_COLUMNS,
    METRIC_COLUMNS,
    MODE,
    RUN_DIR,
    STATUS,
    STUDENT,
    TEACHER,
    TEACHER_TEST_ACC,
)

#: Columns of :func:`aggregate`'s result after the ``by`` columns.
AGGREGATE_COLUMNS = ("mean", "std", "n", "ci95")

#: Columns :func:`kd_gain` adds to the distill runs.
GAIN_COLUMNS = ("baseline_test_acc", "baseline_n", "baseline_run_dirs", "gain")

#: Config columns that may differ between a distill run and its baseline (see :func:`kd_gain`).
DEFAULT_UNMATCHED_PREFIXES = (
    "mode", "loss.", "teacher.", "teacher_training.", "soft_label_cache.", "paths.", "hydra.",
)  # fmt: skip
#: Leaf-name endings of config columns that name places, not settings (ignored by matching).
PATH_LIKE_SUFFIXES = ("dir", "path", "file")

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (used only without scipy).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


class Setup(NamedTuple):
    """What a distillation experiment distils: dataset, teacher arch and student arch."""

    dataset: str
    teacher: str
    student: str

    def title(self) -> str:
        """``"cifar10: resnet56 → resnet8"``, for figure titles."""
        return f"{self.dataset}: {self.teacher} → {self.student}"

    def slug(self) -> str:
        """A file-name-safe ``dataset_teacher_student``."""
        raw = f"{self.dataset}_{self.teacher}_{self.student}"
        return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in raw)


def as_float(values: pd.Series) -> pd.Series:
    """``values`` as float64: numbers kept, anything else (None, NA, text) NaN."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (NaN for dof < 1)."""
    if dof < 1:
        return math.nan
    try:
        from scipy.stats import t
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return _T975[dof - 1] if dof <= len(_T975) else 1.96
    return float(t.ppf(0.975, dof))


def ci95_half_width(std: float, n: int) -> float:
    """Half-width ``t_{0.975,n-1} * std / sqrt(n)`` of the 95% CI of a mean; NaN for n < 2."""
    if n < 2 or pd.isna(std):
        return math.nan
    return t_quantile_975(int(n) - 1) * float(std) / math.sqrt(n)


def completed_runs(df: pd.DataFrame, mode: str | None = None) -> pd.DataFrame:
    """The completed runs of ``df`` (of one ``mode`` when given)."""
    keep = df[STATUS] == schema.STATUS_COMPLETED
    if mode is not None:
        keep &= df[MODE] == mode if MODE in df.columns else False
    return df[keep]


def aggregate(df: pd.DataFrame, by: str | Sequence[str], metric: str = FINAL_TEST_ACC) -> pd.DataFrame:
    """Mean, std (ddof=1), count ``n`` and 95% CI half-width ``ci95`` of ``metric`` per ``by`` group.

    Only completed runs with a value count; ``ci95`` is NaN for groups of one. Sorted by ``by``.
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [column for column in (*by, metric, STATUS) if column not in df.columns]
    if missing:
        raise KeyError(f"aggregate: no column(s) {', '.join(map(repr, missing))} in the runs table")
    done = completed_runs(df).assign(**{metric: lambda d: as_float(d[metric])})
    done = done.dropna(subset=[metric])
    if done.empty:
        return pd.DataFrame(columns=[*by, *AGGREGATE_COLUMNS])
    grouped = done.groupby(by, dropna=False, sort=True)[metric]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    table["ci95"] = [ci95_half_width(std, n) for std, n in zip(table["std"], table["n"], strict=True)]
    return table


def distill_setups(df: pd.DataFrame) -> list[Setup]:
    """The distinct setups of the completed distill runs of ``df``, sorted."""
    distill = completed_runs(df, schema.MODE_DISTILL)
    columns = zip(*(_column(distill, c) for c in (DATASET, TEACHER, STUDENT)), strict=True)
    return sorted({Setup(*values) for values in columns})


def runs_of_setup(df: pd.DataFrame, setup: Setup) -> pd.DataFrame:
    """Runs of ``df`` that belong to ``setup``: its distill runs, baselines and teachers."""
    dataset = _column(df, DATASET) == setup.dataset
    student = _column(df, STUDENT) == setup.student
    teacher = _column(df, TEACHER) == setup.teacher
    mode = _column(df, MODE)
    keep = dataset & (
        ((mode == schema.MODE_DISTILL) & student & teacher)
        | ((mode == schema.MODE_STUDENT) & student)
        | ((mode == schema.MODE_TEACHER) & teacher)
    )
    return df[keep]


def _column(df: pd.DataFrame, column: str) -> pd.Series:
    """``df[column]`` as strings (missing column: all "?"), for equality tests with a Setup."""
    if column not in df.columns:
        return pd.Series("?", index=df.index)
    return df[column].astype(object).map(lambda value: "?" if pd.isna(value) else str(value))


def baseline_accuracy(df: pd.DataFrame, setup: Setup) -> float:
    """Mean final_test_acc of the completed baseline (mode=student) runs of ``setup``; NaN if none."""
    baselines = completed_runs(runs_of_setup(df, setup), schema.MODE_STUDENT)
    return float(as_float(baselines[FINAL_TEST_ACC]).mean())


def teacher_accuracy(df: pd.DataFrame, setup: Setup) -> float:
    """Teacher test accuracy of ``setup``: mean teacher_test_acc of its distill runs, else of
    its completed mode=teacher runs' final_test_acc; NaN if neither exists."""
    runs = runs_of_setup(df, setup)
    distill = completed_runs(runs, schema.MODE_DISTILL)
    if TEACHER_TEST_ACC in distill.columns:
        from_distill = as_float(distill[TEACHER_TEST_ACC]).dropna()
        if not from_distill.empty:
            return float(from_distill.mean())
    teachers = completed_runs(runs, schema.MODE_TEACHER)
    return float(as_float(teachers[FINAL_TEST_ACC]).mean())


def matching_columns(df: pd.DataFrame, unmatched_prefixes: Sequence[str] = DEFAULT_UNMATCHED_PREFIXES) -> list[str]:
    """Config columns a baseline must share with a distill run (see :func:`kd_gain`)."""
    not_config = {*META_COLUMNS, *METRIC_COLUMNS, "settings"}
    return [
        column
        for column in df.columns
        if column not in not_config
        and not any(column == p.rstrip(".") or column.startswith(p) for p in unmatched_prefixes)
        and not column.rsplit(".", 1)[-1].lower().endswith(PATH_LIKE_SUFFIXES)
    ]


def _equal_or_missing(column: pd.Series, value: object) -> np.ndarray:
    """Boolean mask: the cell equals ``value`` or is missing (NA-safe for nullable dtypes)."""
    return (column.isna() | (column == value).fillna(False)).to_numpy(dtype=bool)


def kd_gain(df: pd.DataFrame, unmatched_prefixes: Sequence[str] = DEFAULT_UNMATCHED_PREFIXES) -> pd.DataFrame:
    """The completed distill runs of ``df`` with their matched baseline and ``gain`` (percentage points).

    Matching rule: a baseline is a completed mode=student run whose config equals the distill
    run's on every config column except ``mode``, ``loss.*``, ``teacher.*``, ``teacher_training.*``,
    ``soft_label_cache.*``, ``paths.*``, ``hydra.*`` (``unmatched_prefixes``: what only shapes the
    teacher side) and path-like keys (leaf name ending in dir/path/file);
    so dataset.name, student.name, trainer.* (seed included), optimizer.* and scheduler.* must
    be equal. A key missing from either config does not distinguish them. Several matches are
    averaged (``baseline_n`` counts them); ``gain = final_test_acc - baseline_test_acc``, NaN
    where no baseline matches.
    """
    distill = completed_runs(df, schema.MODE_DISTILL).copy()
    baselines = completed_runs(df, schema.MODE_STUDENT)
    keys = matching_columns(df, unmatched_prefixes)
    baseline_acc = as_float(baselines[FINAL_TEST_ACC]) if len(baselines) else None
    means, counts, dirs = [], [], []
    for _, run in distill.iterrows():
        matched = np.ones(len(baselines), dtype=bool)
        for key in keys:
            if pd.isna(run[key]):
                continue
            matched &= _equal_or_missing(baselines[key], run[key])
        accuracies = baseline_acc[matched].dropna() if baseline_acc is not None else pd.Series(dtype=float)
        means.append(float(accuracies.mean()) if len(accuracies) else math.nan)
        counts.append(len(accuracies))
        dirs.append(" ".join(baselines.loc[accuracies.index, RUN_DIR]) if len(accuracies) else None)
    distill["baseline_test_acc"] = pd.Series(means, index=distill.index, dtype=float)
    distill["baseline_n"] = pd.Series(counts, index=distill.index, dtype=int)
    distill["baseline_run_dirs"] = pd.Series(dirs, index=distill.index, dtype=object)
    final = as_float(distill[FINAL_TEST_ACC])
    distill["gain"] = final - distill["baseline_test_acc"]
    return distill.sort_values(RUN_DIR).reset_index(drop=True)
