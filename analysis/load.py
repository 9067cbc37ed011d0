"""Find run directories and read them into pandas tables (one row per run, or long-form history).

A run directory is any folder holding ``.hydra/config.yaml`` (:mod:`kd_hydra.schema`). Paths
may be single runs, Hydra multirun roots or sweeps nested to any depth; hidden folders
(``.hydra``, ``.ipynb_checkpoints``, ...) are never searched.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from kd_hydra import schema

#: Columns that ``load_runs`` adds to the config and metrics columns.
RUN_DIR = "run_dir"
STATUS = "status"
REASON = "reason"
OVERRIDES = "overrides"
META_COLUMNS = (RUN_DIR, STATUS, REASON, OVERRIDES)

#: Metrics keys that become columns (``settings`` repeats config values, so it is left out).
METRIC_COLUMNS = tuple(key for key in schema.METRICS_KEYS if key != "settings")


def _schema_name(name: str, names: tuple[str, ...]) -> str:
    """``name`` itself, after checking that the schema defines it (fails at import otherwise)."""
    if name not in names:
        raise ImportError(f"kd_hydra.schema no longer defines {name!r}; update analysis")
    return name


FINAL_TEST_ACC = _schema_name("final_test_acc", schema.METRICS_KEYS)
FINAL_TEST_ACC_TOP5 = _schema_name("final_test_acc_top5", schema.METRICS_KEYS)
FINAL_VAL_ACC = _schema_name("final_val_acc", schema.METRICS_KEYS)
METHOD_METRIC = _schema_name("method", schema.METRICS_KEYS)
TEACHER_TEST_ACC = _schema_name("teacher_test_acc", schema.METRICS_KEYS)
MODEL_PARAMS = _schema_name("model_params", schema.METRICS_KEYS)
TEACHER_PARAMS = _schema_name("teacher_params", schema.METRICS_KEYS)
MODEL_ARCH = _schema_name("model", schema.METRICS_KEYS)
TEACHER_ARCH = _schema_name("teacher", schema.METRICS_KEYS)
EPOCH = _schema_name("epoch", schema.HISTORY_COLUMNS)
TEST_ACC = _schema_name("test_acc", schema.HISTORY_COLUMNS)
TRAIN_LOSS = _schema_name("train_loss", schema.HISTORY_COLUMNS)

#: Config columns used by the plots and the baseline matching.
MODE = _schema_name("mode", schema.SETTINGS_KEYS)
DATASET = _schema_name("dataset.name", schema.SETTINGS_KEYS)
TEACHER = _schema_name("teacher.name", schema.SETTINGS_KEYS)
STUDENT = _schema_name("student.name", schema.SETTINGS_KEYS)
LOSS = _schema_name("loss.name", schema.SETTINGS_KEYS)
TEMPERATURE = _schema_name("loss.temperature", schema.SETTINGS_KEYS)
ALPHA = _schema_name("loss.alpha", schema.SETTINGS_KEYS)
SEED = _schema_name("trainer.seed", schema.SETTINGS_KEYS)

#: Config columns that identify a run in plots and in the long-form history.
IDENTIFYING_COLUMNS = (MODE, DATASET, TEACHER, STUDENT, LOSS, TEMPERATURE, ALPHA, SEED)

#: Columns of :func:`load_history`'s long-form table, before the identifying columns.
HISTORY_LONG_COLUMNS = (RUN_DIR, EPOCH, "metric", "value")

REASON_NO_METRICS = f"no {schema.METRICS_FILE} (run unfinished or killed)"
REASON_BAD_METRICS = f"{schema.METRICS_FILE} unreadable"
REASON_BAD_CONFIG = f"{schema.CONFIG_FILE} unreadable"


class NoRunsError(ValueError):
    """Raised when a path holds no run directory; the message is one line naming the path."""


def find_run_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Every run directory at or below ``path``, sorted; raises NoRunsError when there is none."""
    root = Path(path)
    if not root.is_dir():
        raise NoRunsError(f"no run directories under {root} (not a directory)")
    found = sorted(_walk_run_dirs(root))
    if not found:
        raise NoRunsError(f"no run directories under {root}")
    return found


def _walk_run_dirs(root: Path) -> Iterator[Path]:
    """Yield run directories below ``root``, skipping hidden folders and following no links."""
    for current, subdirs, _files in os.walk(root):
        here = Path(current)
        if (here / schema.HYDRA_DIR / schema.CONFIG_FILE).is_file():
            yield here
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))


def load_runs(*paths: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per run directory under ``paths``: meta, config (dotted) and metrics columns.

    Failed and unfinished runs are kept (``status``/``reason`` say why); rows sorted by run_dir.
    """
    if not paths:
        raise NoRunsError("no run directories: no path given")
    run_dirs = sorted({run_dir.resolve() for path in paths for run_dir in find_run_dirs(path)})
    rows = [read_run(run_dir) for run_dir in run_dirs]
    table = pd.DataFrame.from_records(rows)
    for column in _integer_columns(rows):
        table[column] = table[column].astype("Int64")  # ints with gaps stay ints (not 3.0)
    return table[_ordered_columns(table.columns)].reset_index(drop=True)


def _integer_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Keys whose present values are all ints (not bools) but that some rows lack or leave None."""
    candidates: dict[str, bool] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                candidates[key] = candidates.get(key, True) and isinstance(value, int) and not isinstance(value, bool)
    return [
        key for key, all_int in candidates.items()
        if all_int and any(row.get(key) is None for row in rows)
    ]  # fmt: skip


def read_run(run_dir: Path) -> dict[str, Any]:
    """The row of one run directory: meta columns, flattened config, then metrics."""
    row: dict[str, Any] = {RUN_DIR: str(run_dir), STATUS: schema.STATUS_UNFINISHED, REASON: None}
    row[OVERRIDES] = " ".join(read_overrides(run_dir))
    config_reason = None
    try:
        config = read_config(run_dir)
    except Exception:  # noqa: BLE001 - any unreadable config is reported, not raised
        config, config_reason = {}, REASON_BAD_CONFIG
    row.update(config)
    metrics, metrics_reason = read_metrics(run_dir)
    for key, value in metrics.items():
        if key in METRIC_COLUMNS and key not in config:
            row[key] = value
    if metrics:
        row[STATUS] = metrics.get("status") or schema.STATUS_UNFINISHED
        row[REASON] = metrics.get("reason")
    else:
        row[REASON] = metrics_reason
    if config_reason and not row[REASON]:
        row[REASON] = config_reason
    return row


def read_config(run_dir: Path) -> dict[str, Any]:
    """``.hydra/config.yaml`` flattened to dotted keys; interpolations resolved where possible."""
    config = OmegaConf.load(run_dir / schema.HYDRA_DIR / schema.CONFIG_FILE)
    if not isinstance(config, DictConfig):
        raise ValueError(f"{schema.CONFIG_FILE} is not a mapping")
    raw = OmegaConf.to_container(config, resolve=False)
    flat: dict[str, Any] = {}
    _flatten(raw, config, "", flat)
    return flat


def _flatten(raw: Any, config: DictConfig, prefix: str, out: dict[str, Any]) -> None:
    """Write the leaves of ``raw`` into ``out`` under dotted keys; lists become their repr."""
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, config, f"{dotted}.", out)
        elif isinstance(value, list):
            out[dotted] = str(_resolved(config, dotted, value))
        else:
            out[dotted] = _resolved(config, dotted, value)


def _resolved(config: DictConfig, dotted: str, raw: Any) -> Any:
    """The resolved value at ``dotted``, or ``raw`` when it holds no or an unresolvable interpolation."""
    if "${" not in str(raw):
        return raw
    try:
        value = OmegaConf.select(config, dotted, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra app
        return raw
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001
            return raw
    return value


def read_overrides(run_dir: Path) -> list[str]:
    """The override strings of ``.hydra/overrides.yaml``; empty when absent or unreadable."""
    path = run_dir / schema.HYDRA_DIR / schema.OVERRIDES_FILE
    try:
        overrides = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(overrides, list):
        return []
    return [str(item) for item in overrides]


def read_metrics(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``(metrics, None)`` from metrics.json, or ``({}, reason)`` when it is missing or unreadable."""
    path = run_dir / schema.METRICS_FILE
    if not path.is_file():
        return {}, REASON_NO_METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}, REASON_BAD_METRICS
    if not isinstance(metrics, dict):
        return {}, REASON_BAD_METRICS
    return metrics, None


def _ordered_columns(columns: pd.Index) -> list[str]:
    """Meta, identifying, metrics, then the remaining config columns alphabetically."""
    present = list(columns)
    leading = [c for c in dict.fromkeys((*META_COLUMNS, *IDENTIFYING_COLUMNS, *METRIC_COLUMNS)) if c in present]
    return leading + sorted(c for c in present if c not in leading)


def load_history(*paths: str | os.PathLike[str]) -> pd.DataFrame:
    """Long-form history of the runs under ``paths``: one row per (run, epoch, metric).

    See :func:`history_of` for the columns; raises NoRunsError when no run is found.
    """
    return history_of(load_runs(*paths))


def history_of(runs: pd.DataFrame) -> pd.DataFrame:
    """Long-form history of the runs of a :func:`load_runs` table, non-empty values only.

    Columns: run_dir, epoch, metric, value, then the identifying config columns, status and
    overrides of the run. Runs without (or with an unreadable) history.csv contribute no rows.
    """
    extra = [c for c in (*IDENTIFYING_COLUMNS, STATUS, OVERRIDES) if c in runs.columns]
    frames = []
    for run in runs.to_dict("records"):
        history = read_history(Path(run[RUN_DIR]))
        if history is None or history.empty:
            continue
        long = history.melt(id_vars=EPOCH, var_name="metric", value_name="value")
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        long = long.dropna(subset=["value"])
        long.insert(0, RUN_DIR, run[RUN_DIR])
        for column in extra:
            long[column] = run[column]
        frames.append(long)
    columns = [*HISTORY_LONG_COLUMNS, *extra]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def read_history(run_dir: Path) -> pd.DataFrame | None:
    """history.csv of ``run_dir`` (with an ``epoch`` column), or None when absent or unreadable."""
    path = run_dir / schema.HISTORY_FILE
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        warnings.warn(f"skipping unreadable {path}: {error}", stacklevel=2)
        return None
    if EPOCH not in history.columns:
        warnings.warn(f"skipping {path}: no {EPOCH!r} column", stacklevel=2)
        return None
    return history
