"""Summaries of a :func:`analysis.load_runs` table: means with 95% CIs, setups, settings, methods, KD gain.

A *setting* is every config value that may change a result except the seed: config columns minus
bookkeeping (:func:`is_bookkeeping`). Runs are averaged as seeds only when their settings are equal;
a key that some runs lack does not distinguish them (schema drift) unless the runs that have it differ.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from kd_hydra.enums import Mode
from kd_hydra.records import schema
from kd_hydra.records.identity import SAME_SETTING_KEYS, under, unread_groups

from .load import (
    ALPHA,
    BEST_TEST_ACC,
    DATA_DIGEST,
    DATASET,
    FINAL_TEST_ACC,
    FINAL_TEST_ACC_TOP5,
    FINAL_VAL_ACC,
    LOSS,
    META_COLUMNS,
    METHOD_METRIC,
    METRIC_COLUMNS,
    MODE,
    RUN_DIR,
    SEED,
    STATUS,
    STUDENT,
    TEACHER,
    TEACHER_ID,
    TEACHER_TEST_ACC,
    TEMPERATURE,
)
from .stats import ci95_half_width, interval

#: Columns of :func:`aggregate`'s result after the ``by`` columns.
AGGREGATE_COLUMNS = ("mean", "std", "n", "ci95")

#: Columns :func:`kd_gain` adds to the distill runs.
GAIN_COLUMNS = ("baseline_test_acc", "baseline_n", "baseline_run_dirs", "gain")

#: Config columns (and columns below them) that may differ between a distill run and its baseline (see
#: :func:`kd_gain`): the groups a baseline does not read, and the teacher's identity.
DEFAULT_UNMATCHED_PREFIXES = (*unread_groups(Mode.student.value), TEACHER_ID)
#: Leaf-name endings of config columns that name places, not settings (except under DATA_PREFIX).
PATH_LIKE_SUFFIXES = ("dir", "path", "file")
#: Config columns under this prefix say which data a run used: always settings, paths included.
DATA_PREFIX = "dataset."
#: Config columns under these prefixes say which teacher a distill run used.
TEACHER_PREFIX = "teacher."
TEACHER_SETTING_PREFIXES = (TEACHER_PREFIX, "teacher_training.")
#: Teacher keys longer than this are shown as a digest in titles (in full in the report).
MAX_TITLE_KEYS_CHARS = 60

#: The method of a distill run is its ``loss.name``.
METHOD = LOSS
LOSS_PREFIX = "loss."
#: Loss columns that name the method's class rather than a setting.
LOSS_TARGET = "loss._target_"
#: Loss keys of schema.SETTINGS_KEYS (temperature, alpha): named in a setting's label whenever set.
HEADLINE_LOSS_KEYS = tuple(k for k in schema.SETTINGS_KEYS if k.startswith(LOSS_PREFIX) and k != LOSS)
#: Short names of columns in setting labels and table headers (loss.X is X, others stay dotted).
SHORT_NAMES = {TEMPERATURE: "T", ALPHA: "α", METHOD: "method"}

#: Columns of :func:`rank_settings` after the setting columns (val_*, top5_* and best_* only when present).
RANK_COLUMNS = ("setting", "mean", "std", "n", "ci95", "val_mean", "val_std", "val_n", "val_ci95", "top5_mean",
                "top5_ci95", "best_mean", "best_ci95", "gain", "gain_std", "gain_n", "gain_ci95", "selected",
                "run_dirs")  # fmt: skip
#: Two selection-metric means closer than this are a tie (means of percentages over the same seeds).
TIE_TOLERANCE = 1e-9


class Setup(NamedTuple):
    """What a distillation experiment distils: dataset, teacher and student.

    ``data``: ``(key, value)`` pairs of the ``dataset.*`` keys (and the data digest) that tell apart
    datasets of the same name (e.g. two ``.npz`` files), empty when the name alone identifies the data.
    ``teacher_keys``: the same for teachers of the same architecture (``teacher_id``, or the
    ``teacher.*``/``teacher_training.*`` settings of runs that predate it): students of different
    teachers are never compared as one setup.
    """

    dataset: str
    teacher: str
    student: str
    data: tuple[tuple[str, str], ...] = ()
    teacher_keys: tuple[tuple[str, str], ...] = ()

    def teacher_text(self) -> str:
        """The teacher keys as ``key=value, ...`` ("" when the architecture alone names the teacher)."""
        return ", ".join(f"{key.removeprefix(TEACHER_PREFIX)}={value}" for key, value in self.teacher_keys)

    def title(self) -> str:
        """``"cifar10: resnet56 → resnet8"`` (``"arrays [path=/a.npz]: resnet56 [teacher_id=ab12] → ..."``;
        long teacher keys shortened to a digest, see :meth:`teacher_text`)."""
        data = ", ".join(f"{key.removeprefix(DATA_PREFIX)}={value}" for key, value in self.data)
        teacher = self.teacher_text()
        if len(teacher) > MAX_TITLE_KEYS_CHARS:
            teacher = "teacher #" + hashlib.sha1(teacher.encode()).hexdigest()[:8]
        return (f"{self.dataset}{f' [{data}]' if data else ''}: "
                f"{self.teacher}{f' [{teacher}]' if teacher else ''} → {self.student}")  # fmt: skip

    def slug(self) -> str:
        """A file-name-safe ``dataset_teacher_student`` (plus a short hash of the data and teacher keys when set)."""
        raw = f"{self.dataset}_{self.teacher}_{self.student}"
        if self.data or self.teacher_keys:
            keys = repr(self.data) if not self.teacher_keys else repr((self.data, self.teacher_keys))
            raw += "_" + hashlib.sha1(keys.encode()).hexdigest()[:8]
        return safe_name(raw)


#: The identity digest of a run (metrics.json): equal digests are the same run repeated.
CONFIG_DIGEST = "config_digest"


def safe_name(raw: str) -> str:
    """``raw`` with every character but letters, digits, ``-`` and ``.`` replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in raw)


def as_float(values: pd.Series) -> pd.Series:
    """``values`` as float64: numbers kept, anything else (None, NA, text) NaN."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def completed_runs(df: pd.DataFrame, mode: str | None = None) -> pd.DataFrame:
    """The completed runs of ``df`` (of one ``mode`` when given), each identity once.

    Two run directories with the same ``config_digest`` (settings, seed, data and teacher included) are the
    same run repeated, not two seeds: only the first (by directory) counts.
    """
    keep = df[STATUS] == schema.STATUS_COMPLETED
    if mode is not None:
        keep &= df[MODE] == mode if MODE in df.columns else False
    done = df[keep]
    if CONFIG_DIGEST in done.columns:
        digest = done[CONFIG_DIGEST]
        done = done[digest.isna() | ~digest.duplicated(keep="first")]
    return done


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
    try:
        table = done.groupby(by, dropna=False, sort=True)[metric].agg(mean="mean", std="std", n="count")
    except TypeError:  # values of mixed types cannot be sorted: keep the order of appearance
        table = done.groupby(by, dropna=False, sort=False)[metric].agg(mean="mean", std="std", n="count")
    table = table.reset_index()
    table["ci95"] = [ci95_half_width(std, n) for std, n in zip(table["std"], table["n"], strict=True)]
    return table


def data_columns(df: pd.DataFrame, dataset: str) -> list[str]:
    """``dataset.*`` setting columns (but the name) and the data digest that differ between the runs of
    ``df`` named ``dataset``."""
    named = df[_column(df, DATASET) == dataset]
    candidates = [c for c in setting_columns(named) if (c.startswith(DATA_PREFIX) and c != DATASET) or c == DATA_DIGEST]
    return varying_columns(named, candidates)


def teacher_columns(distill: pd.DataFrame) -> list[str]:
    """The teacher-identity columns that differ between the distill runs of ``distill``: ``teacher_id``,
    else (runs that predate it) the ``teacher.*`` and ``teacher_training.*`` settings but the name."""
    candidates = [c for c in setting_columns(distill) if c == TEACHER_ID or
                  (c.startswith(TEACHER_SETTING_PREFIXES) and c != TEACHER)]  # fmt: skip
    varying = varying_columns(distill, candidates)
    if TEACHER_ID in varying and distill[TEACHER_ID].notna().all():
        return [TEACHER_ID]
    return varying


def _key_pairs(run: pd.Series, columns: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((key, value_text(run[key])) for key in columns)


def distill_setups(df: pd.DataFrame) -> list[Setup]:
    """The distinct setups of the completed distill runs of ``df``, sorted."""
    distill = completed_runs(df, Mode.distill.value)
    data_keys = {name: data_columns(df, name) for name in set(_column(distill, DATASET))}
    names = pd.DataFrame({c: _column(distill, c) for c in (DATASET, TEACHER, STUDENT)}, index=distill.index)
    bases = {}
    for (index, run), (dataset, teacher, student) in zip(distill.iterrows(), names.itertuples(index=False),
                                                         strict=True):  # fmt: skip
        bases[index] = (dataset, teacher, student, _key_pairs(run, data_keys[dataset]))
    setups = set()
    for base in set(bases.values()):
        members = distill.loc[[index for index, value in bases.items() if value == base]]
        keys = teacher_columns(members)
        setups |= {Setup(*base, _key_pairs(run, keys)) for _, run in members.iterrows()}
    return sorted(setups)


def runs_of_setup(df: pd.DataFrame, setup: Setup) -> pd.DataFrame:
    """Runs of ``df`` that belong to ``setup``: its distill runs, baselines and teachers (a teacher run
    matches the teacher keys it has)."""
    dataset = _column(df, DATASET) == setup.dataset
    for key, value in setup.data:
        dataset &= _column(df, key) == value
    student = _column(df, STUDENT) == setup.student
    teacher = _column(df, TEACHER) == setup.teacher
    same_teacher = teacher.copy()
    teacher_run = teacher.copy()
    for key, value in setup.teacher_keys:
        same_teacher &= _column(df, key) == value
        teacher_run &= _column(df, key).isin([value, "?"])
    mode = _column(df, MODE)
    distill = dataset & (mode == Mode.distill.value) & student & same_teacher
    baseline = dataset & (mode == Mode.student.value) & student
    baseline &= _matches_some(df, df[distill & (df[STATUS] == schema.STATUS_COMPLETED)])
    return df[distill | baseline | (dataset & (mode == Mode.teacher.value) & teacher_run)]


def _matches_some(df: pd.DataFrame, distill: pd.DataFrame) -> pd.Series:
    """True for the runs of ``df`` whose settings (the :func:`kd_gain` matching columns, the seed left out)
    equal those of some run of ``distill``: the baselines that belong with these distill runs."""
    keys = [c for c in matching_columns(df) if c != SEED]
    matched = np.zeros(len(df), dtype=bool)
    for mask in _match_masks(distill, df, keys).values():
        matched |= mask
    return pd.Series(matched, index=df.index)


def format_value(value: object) -> str:
    """``value`` as text for labels and equality tests: "?" when missing, ``4`` for 4.0, ``0.001`` for 1e-3."""
    if _is_missing(value):
        return "?"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def value_text(value: object) -> str:
    """``value`` as exact text for equality tests: like :func:`format_value` (``4`` for 4.0), but a float
    that ``:g`` would round keeps every digit (two learning rates of a search never merge)."""
    text = format_value(value)
    if isinstance(value, float) and text not in ("?", "nan", "inf", "-inf") and float(text) != value:
        return repr(value)
    return text


def _is_missing(value: object) -> bool:
    """True for None, NaN and pd.NA (False for lists and other non-scalars)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _column(df: pd.DataFrame, column: str) -> pd.Series:
    """``df[column]`` as text (missing column: all "?"), for equality tests with a Setup."""
    if column not in df.columns:
        return pd.Series("?", index=df.index)
    return df[column].astype(object).map(value_text)


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` that come from the runs' configs (``mode`` included, metrics left out)."""
    not_config = ({*META_COLUMNS, *METRIC_COLUMNS, "settings"} - {MODE}) | set(GAIN_COLUMNS)
    return [column for column in df.columns if column not in not_config]


def is_bookkeeping(column: str) -> bool:
    """True for config keys that never tell two settings apart: :data:`kd_hydra.records.identity.SAME_SETTING_KEYS`
    (``hydra.*``, ``paths.*``, ``logger.*``, the device, progress, resume, ...; not the thread count) and places (leaf
    ending in dir/path/file, except under ``dataset.``)."""
    leaf = column.rsplit(".", 1)[-1].lower()
    return under(column, SAME_SETTING_KEYS) or (
        leaf.endswith(PATH_LIKE_SUFFIXES) and not column.startswith(DATA_PREFIX)
    )


def setting_columns(df: pd.DataFrame) -> list[str]:
    """Config columns that define a run's setting: all but ``mode``, the seed and bookkeeping."""
    return [c for c in config_columns(df) if c not in (MODE, SEED) and not is_bookkeeping(c)]


def varying_columns(df: pd.DataFrame, columns: Sequence[str] | None = None) -> list[str]:
    """The ``columns`` (default: :func:`setting_columns`) with two or more distinct present values in ``df``."""
    columns = setting_columns(df) if columns is None else [c for c in columns if c in df.columns]
    return [c for c in columns if df[c].dropna().astype(object).map(value_text).nunique() > 1]


def method_of(df: pd.DataFrame) -> pd.Series:
    """The method of each run: ``loss.name`` (``metrics.method`` where the config lacks it), "?" if neither."""
    method = _column(df, METHOD)
    if METHOD_METRIC in df.columns:
        method = method.where(method != "?", _column(df, METHOD_METRIC))
    return method


def distill_methods(df: pd.DataFrame) -> list[str]:
    """The distinct methods of the completed distill runs of ``df``, sorted."""
    return sorted(set(method_of(completed_runs(df, Mode.distill.value))))


def runs_of_method(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """The distill runs of ``df`` with ``method`` plus every non-distill run (baselines, teachers)."""
    mode = _column(df, MODE)
    return df[(mode != Mode.distill.value) | (method_of(df) == method)]


def swept_loss_keys(df: pd.DataFrame) -> list[str]:
    """``loss.*`` setting columns (not the name or target) that vary among the completed distill runs of ``df``;
    temperature and alpha first, then the others sorted."""
    distill = completed_runs(df, Mode.distill.value)
    loss_keys = [c for c in setting_columns(distill) if c.startswith(LOSS_PREFIX) and c not in (METHOD, LOSS_TARGET)]
    return _ordered(varying_columns(distill, loss_keys))


def _ordered(columns: Sequence[str]) -> list[str]:
    """Method, temperature, alpha, other loss keys, then the rest, each part sorted."""
    first = [c for c in (METHOD, TEMPERATURE, ALPHA) if c in columns]
    loss = sorted(c for c in columns if c.startswith(LOSS_PREFIX) and c not in first)
    return first + loss + sorted(c for c in columns if c not in first and c not in loss)


def short_name(column: str) -> str:
    """``T`` for the temperature, ``α`` for alpha, ``beta`` for ``loss.beta``, other keys as they are."""
    return SHORT_NAMES.get(column, column.removeprefix(LOSS_PREFIX) if column.startswith(LOSS_PREFIX) else column)


def setting_label(values: pd.Series | dict, columns: Sequence[str]) -> str:
    """``"T = 4, α = 0.9"``; with the method among ``columns``: ``"dkd: T = 4, beta = 8"`` (missing values
    left out)."""
    present = [c for c in columns if c != METHOD and not _is_missing(values[c])]
    parts = [f"{short_name(c)} = {format_value(values[c])}" for c in present]
    text = ", ".join(parts)
    if METHOD in columns and not _is_missing(values[METHOD]):
        return f"{values[METHOD]}: {text}" if text else str(values[METHOD])
    return text


def selection_metric(df: pd.DataFrame) -> str:
    """``final_val_acc`` when a completed distill run of ``df`` has one (choose on validation), else
    ``final_test_acc``."""
    distill = completed_runs(df, Mode.distill.value)
    if FINAL_VAL_ACC in distill.columns and as_float(distill[FINAL_VAL_ACC]).notna().any():
        return FINAL_VAL_ACC
    return FINAL_TEST_ACC


def has_top5(df: pd.DataFrame) -> bool:
    """True when a completed run of ``df`` reports top-5 accuracy (datasets of more than 10 classes)."""
    return _has(df, FINAL_TEST_ACC_TOP5)


def only_setting_label(method: str) -> str:
    """The label of a method's one setting (nothing varies): the method's name."""
    return method if method != "?" else "(its only setting)"


def _has(df: pd.DataFrame, metric: str) -> bool:
    """True when a completed run of ``df`` has a value of ``metric``."""
    done = completed_runs(df)
    return metric in done.columns and as_float(done[metric]).notna().any()


def mean_ci(values: pd.Series) -> tuple[float, float, float, int]:
    """Mean, std (ddof=1), 95% CI half-width and count of the present (numeric) values."""
    value = interval(values)
    return value.mean, value.std, value.half_width, value.n


def method_keys(df: pd.DataFrame) -> list[str]:
    """The ``loss.*`` setting columns of ``df`` that are a method's hyper-parameters (not its name or class)."""
    return [c for c in setting_columns(df) if c.startswith(LOSS_PREFIX) and c not in (METHOD, LOSS_TARGET)]


def qualified_name(method: str, column: str) -> str:
    """``dkd.beta`` for ``loss.beta`` of dkd: method-specific columns of a method comparison stay apart."""
    return f"{method}.{column.removeprefix(LOSS_PREFIX)}"


def with_method_columns(distill: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``distill`` plus a ``<method>.<key>`` column per method and hyper-parameter; returns the table and
    the added columns that vary among that method's runs (method by method, keys sorted)."""
    methods = method_of(distill)
    added: dict[str, pd.Series] = {}
    varying: list[str] = []
    for method in sorted(set(methods)):
        own = distill[methods == method]
        keys = method_keys(own)
        moving = set(varying_columns(own, keys))
        for column in sorted(keys):
            if own[column].notna().any():
                added[qualified_name(method, column)] = own[column].reindex(distill.index)
                if column in moving:
                    varying.append(qualified_name(method, column))
    return distill.assign(**added), varying


def is_setup_column(column: str) -> bool:
    """True for the columns that make a setup (:func:`distill_setups`): dataset, teacher and student."""
    return column.startswith((DATA_PREFIX, *TEACHER_SETTING_PREFIXES)) or column in (TEACHER_ID, DATA_DIGEST, STUDENT)


def across_setups_by(df: pd.DataFrame) -> list[str]:
    """The ``by`` columns of :func:`default_by` over all completed distill runs of ``df`` but the setup
    columns: ranking each setup on them names, in every label, what differs between setups too."""
    return [c for c in default_by(completed_runs(df, Mode.distill.value)) if not is_setup_column(c)]


def _qualified_in(table: pd.DataFrame, distill: pd.DataFrame, column: str) -> str:
    """``<method>.<key>`` for a method hyper-parameter ``loss.<key>`` of runs of one method, else ``column``."""
    methods = set(method_of(distill))
    if column.startswith(LOSS_PREFIX) and column not in (METHOD, LOSS_TARGET) and len(methods) == 1:
        name = qualified_name(next(iter(methods)), column)
        return name if name in table.columns else column
    return column


def default_by(distill: pd.DataFrame) -> list[str]:
    """The columns that tell the settings of the completed distill runs ``distill`` apart: every setting
    column that varies; with several methods, the method, then each method's varying hyper-parameters
    as ``<method>.<key>`` columns (:func:`with_method_columns`), then the other varying settings."""
    varying = [c for c in varying_columns(distill) if c != LOSS_TARGET]
    if len(set(method_of(distill))) < 2:
        return _ordered(varying)
    _, qualified = with_method_columns(distill)
    others = sorted(c for c in varying if not c.startswith(LOSS_PREFIX))
    return [METHOD, *qualified, *others]


def _first_present(group: pd.DataFrame, column: str) -> object:
    return group[column].dropna().iloc[0] if column in group.columns and group[column].notna().any() else None


def rank_settings(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per setting of the completed distill runs of ``df`` (runs equal in every setting but the
    seed), best first; ``attrs["selected_on"]`` names the metric that ranks them (:func:`selection_metric`:
    validation accuracy when present, test accuracy otherwise).

    ``by`` defaults to :func:`default_by`; then ``setting`` (a label naming only what varies: the method and its
    varying hyper-parameters, the other varying settings; the method's name when nothing varies; the fixed ones
    are :func:`fixed_method_settings`),
    final_test_acc ``mean``/``std``/``n``/``ci95``, ``val_mean``/``val_std``/``val_n``/``val_ci95``,
    ``top5_mean``/``top5_ci95`` and ``best_mean``/``best_ci95`` (best_test_acc) when present, the paired ``gain``
    over the same-seed baselines (:func:`kd_gain`) with ``gain_std``/``gain_n``/``gain_ci95`` (its 95% t-interval),
    ``selected`` (True for the highest selection mean, and for every setting tied with it: a tie is never broken by
    test accuracy; whether the data tell it apart is :func:`analysis.stats.distinguishable`) and the ``run_dirs``.
    """
    done = completed_runs(df, Mode.distill.value)
    several_methods = len(set(method_of(done))) > 1
    own_by = default_by(done)
    distill, qualified = done, []
    if several_methods or (by is not None and any(c not in done.columns for c in by)):
        distill = with_method_columns(done)[0]
        qualified = [c for c in distill.columns if c not in done.columns]
    if by is None:
        by = own_by
    else:  # never fewer columns than the runs' own varying settings: like with like
        own = [_qualified_in(distill, done, c) if qualified else c for c in own_by]
        by = [c for c in dict.fromkeys([*by, *own]) if c in distill.columns]
    selected_on = selection_metric(df)
    present = {"val_": selected_on == FINAL_VAL_ACC, "top5_": has_top5(distill), "best_": _has(distill, BEST_TEST_ACC)}
    gains = kd_gain(df).set_index(RUN_DIR)["gain"] if len(distill) else pd.Series(dtype=float)
    loss_keys = method_keys(distill)
    methods = method_of(distill)
    groups = distill.groupby(by, dropna=False, sort=False) if by else [((), distill)]
    rows = []
    for _, group in groups:
        if group.empty:
            continue
        first = group.iloc[0]
        method = methods[group.index[0]]
        label_columns = [c for c in by if c not in qualified]
        label_columns += [k for k in loss_keys if k not in label_columns and qualified_name(method, k) in by]
        label_values = {c: _first_present(group, c) for c in label_columns}
        if not several_methods:
            label_columns = [c for c in label_columns if c != METHOD or c in by]
        row = {c: first[c] for c in by}
        row["setting"] = setting_label(label_values, _ordered(label_columns)) or only_setting_label(method)
        row["mean"], row["std"], row["ci95"], row["n"] = mean_ci(group[FINAL_TEST_ACC])
        if present["val_"]:
            row["val_mean"], row["val_std"], row["val_ci95"], row["val_n"] = mean_ci(group[FINAL_VAL_ACC])
        if present["top5_"]:
            row["top5_mean"], _, row["top5_ci95"], _ = mean_ci(group[FINAL_TEST_ACC_TOP5])
        if present["best_"]:
            row["best_mean"], _, row["best_ci95"], _ = mean_ci(group[BEST_TEST_ACC])
        row["gain"], row["gain_std"], row["gain_ci95"], row["gain_n"] = mean_ci(gains.reindex(group[RUN_DIR]))
        row["run_dirs"] = tuple(group[RUN_DIR])
        rows.append(row)
    dropped = tuple(prefix for prefix, kept in present.items() if not kept)
    wanted = [c for c in RANK_COLUMNS if not (dropped and c.startswith(dropped))]
    table = pd.DataFrame(rows, columns=[*by, *[c for c in wanted if c != "selected"]])
    key = "val_mean" if present["val_"] else "mean"
    if not table.empty:
        table = table.sort_values([key, "setting"], ascending=[False, True], na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    table.insert(table.columns.get_loc("run_dirs"), "selected", _selected(table[key]) if len(table) else [])
    table.attrs["selected_on"] = selected_on
    return table


def fixed_method_settings(df: pd.DataFrame) -> dict[str, str]:
    """Each method's ``loss.*`` hyper-parameters that are equal in all its completed distill runs of ``df``, as a
    label (``{"kd": "T = 4, α = 0.9"}``; "" for none): what the setting labels leave out, said once."""
    distill = completed_runs(df, Mode.distill.value)
    methods = method_of(distill)
    fixed = {}
    for method in sorted(set(methods)):
        own = distill[methods == method]
        keys = [k for k in method_keys(own) if own[k].notna().any() and k not in varying_columns(own, [k])]
        fixed[method] = setting_label({k: _first_present(own, k) for k in keys}, _ordered(keys))
    return fixed


def _selected(values: pd.Series) -> list[bool]:
    """True for the highest of ``values`` and every value equal to it (ties), False elsewhere and for NaN."""
    numbers = as_float(values)
    if numbers.isna().all():
        return [False] * len(numbers)
    top = numbers.max()
    return [bool(not math.isnan(v) and abs(v - top) <= TIE_TOLERANCE) for v in numbers]


def best_settings(ranked: pd.DataFrame) -> pd.DataFrame:
    """The selected rows of a :func:`rank_settings` (or :func:`compare_methods`) table: the best setting and
    every setting tied with it on the selection metric."""
    return ranked[ranked["selected"].astype(bool)] if "selected" in ranked.columns else ranked.head(0)


def compare_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Each method's selected setting (the ``selected`` rows of :func:`rank_settings` of its runs: several
    when they tie on the selection metric), best method first.

    Columns: ``method`` then those of :func:`rank_settings` (``setting`` labels the method's setting)
    and ``tied`` (how many of the method's settings share its best value); ``selected`` marks the best
    method(s) overall; ``attrs["selected_on"]`` as there.
    """
    rows = []
    for method in distill_methods(df):
        best = best_settings(rank_settings(runs_of_method(df, method)))
        for _, row in best.iterrows():
            rows.append({METHOD: method, **{c: row[c] for c in best.columns if c in RANK_COLUMNS}, "tied": len(best)})
    table = pd.DataFrame(rows)
    selected_on = selection_metric(df)
    if not table.empty:
        key = "val_mean" if selected_on == FINAL_VAL_ACC else "mean"
        table = table.sort_values([key, METHOD, "setting"], ascending=[False, True, True], na_position="last",
                                  kind="stable").reset_index(drop=True)  # fmt: skip
        table["selected"] = _selected(table[key])
    table.attrs["selected_on"] = selected_on
    return table


def baseline_levels(df: pd.DataFrame, setup: Setup) -> list[tuple[str, float, int]]:
    """The completed baseline (mode=student) runs of ``setup`` averaged per setting (seeds only):
    ``(label, mean final_test_acc, n)`` per setting; the label names the settings that differ ("" for one)."""
    baselines = completed_runs(runs_of_setup(df, setup), Mode.student.value)
    baselines = baselines.assign(**{FINAL_TEST_ACC: as_float(baselines[FINAL_TEST_ACC])}).dropna(
        subset=[FINAL_TEST_ACC]
    )
    if baselines.empty:
        return []
    by = [c for c in varying_columns(baselines) if not c.startswith(LOSS_PREFIX) and c != TEACHER_ID]
    groups = baselines.groupby(by, dropna=False, sort=False) if by else [((), baselines)]
    levels = [(setting_label({c: _first_present(g, c) for c in by}, by), float(g[FINAL_TEST_ACC].mean()), len(g))
              for _, g in groups]  # fmt: skip
    return sorted(levels)


def baseline_accuracy(df: pd.DataFrame, setup: Setup) -> float:
    """Mean final_test_acc of the completed baseline (mode=student) runs of ``setup`` when they share one
    setting (:func:`baseline_levels`); NaN when there are none or several settings (never averaged)."""
    levels = baseline_levels(df, setup)
    return levels[0][1] if len(levels) == 1 else math.nan


def teacher_accuracy(df: pd.DataFrame, setup: Setup) -> float:
    """Teacher test accuracy of ``setup``: mean teacher_test_acc of its distill runs, else of
    its completed mode=teacher runs' final_test_acc; NaN if neither exists."""
    runs = runs_of_setup(df, setup)
    distill = completed_runs(runs, Mode.distill.value)
    if TEACHER_TEST_ACC in distill.columns:
        from_distill = as_float(distill[TEACHER_TEST_ACC]).dropna()
        if not from_distill.empty:
            return float(from_distill.mean())
    teachers = completed_runs(runs, Mode.teacher.value)
    return float(as_float(teachers[FINAL_TEST_ACC]).mean())


def matching_columns(df: pd.DataFrame, unmatched_prefixes: Sequence[str] = DEFAULT_UNMATCHED_PREFIXES) -> list[str]:
    """Config columns a baseline must share with a distill run (see :func:`kd_gain`)."""
    return [
        column for column in config_columns(df) if not under(column, unmatched_prefixes) and not is_bookkeeping(column)
    ]


def _cells(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``df[keys]`` as text (:func:`value_text`; "?" for missing), for exact equality tests."""
    return pd.DataFrame({key: _column(df, key) for key in keys}, index=df.index)


def _match_masks(runs: pd.DataFrame, candidates: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, np.ndarray]:
    """For each distinct text row of ``runs[keys]``: the candidates equal to it on every key either has
    (a key missing on either side does not distinguish them)."""
    candidate_cells = _cells(candidates, keys)
    masks: dict[tuple, np.ndarray] = {}
    for combo in _cells(runs, keys).drop_duplicates().itertuples(index=False, name=None):
        mask = np.ones(len(candidates), dtype=bool)
        for key, value in zip(keys, combo, strict=True):
            if value != "?":
                column = candidate_cells[key]
                mask &= ((column == value) | (column == "?")).to_numpy(dtype=bool)
        masks[combo] = mask
    return masks


def kd_gain(df: pd.DataFrame, unmatched_prefixes: Sequence[str] = DEFAULT_UNMATCHED_PREFIXES) -> pd.DataFrame:
    """The completed distill runs of ``df`` with their matched baseline and ``gain`` (percentage points).

    Matching rule: a baseline is a completed mode=student run whose config equals the distill
    run's on every config column except ``mode``, ``loss.*``, ``teacher.*``, ``teacher_training.*``,
    ``soft_label_cache.*`` and ``teacher_id`` (``unmatched_prefixes``: the groups a baseline does not read,
    :func:`kd_hydra.records.identity.unread_groups`) and bookkeeping (:func:`is_bookkeeping`: places, the
    device, threads, ...); so every dataset.* key (dataset.path included), student.name, trainer.* (seed
    included), optimizer.* and scheduler.* must be equal. A key missing from either config does not distinguish
    them. Several matches are averaged (``baseline_n`` counts them); ``gain = final_test_acc - baseline_test_acc``, NaN
    where no baseline matches.
    """
    distill = completed_runs(df, Mode.distill.value).copy()
    baselines = completed_runs(df, Mode.student.value)
    keys = matching_columns(df, unmatched_prefixes)
    baseline_acc = as_float(baselines[FINAL_TEST_ACC]) if len(baselines) else None
    means, counts, dirs = [], [], []
    masks = _match_masks(distill, baselines, keys)
    for combo in _cells(distill, keys).itertuples(index=False, name=None):
        matched = masks[combo]
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
