"""Find run directories and read them into pandas tables (one row per run, or long-form history).

A run directory is any folder holding ``.hydra/config.yaml`` (:mod:`kd_hydra.records.schema`). Paths
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

from kd_hydra.config.files import check_config_file
from kd_hydra.errors import ConfigError
from kd_hydra.records import run_directory, schema
from kd_hydra.records.identity import flatten

#: Columns that ``load_runs`` adds to the config and metrics columns.
RUN_DIR = "run_dir"
STATUS = "status"
REASON = "reason"
OVERRIDES = "overrides"
#: The Hydra sweeper that started the run (``hydra.sweeper._target_`` of ``.hydra/hydra.yaml``), or None.
SWEEPER = "sweeper"
META_COLUMNS = (RUN_DIR, STATUS, REASON, OVERRIDES, SWEEPER)
HYDRA_FILE = "hydra.yaml"
#: Text in the sweeper's target that marks an Optuna search (continuous samples, not a grid).
OPTUNA_MARK = "optuna"

#: metrics.json keys that identify what a run trained on and with (the data's content digest, the
#: teacher's identity digest): setting columns, not metrics (read even where the schema lacks them).
TEACHER_ID = "teacher_id"
DATA_DIGEST = "data_digest"
IDENTITY_COLUMNS = (TEACHER_ID, DATA_DIGEST)
#: Metrics keys that become metric columns (``settings`` holds the config values, so it is left out).
METRIC_COLUMNS = tuple(key for key in schema.METRICS_KEYS if key not in ("settings", *IDENTITY_COLUMNS))
SETTINGS = "settings"
#: The last metrics.json schema whose ``settings`` held only a subset (SETTINGS_KEYS and ``loss.*``).
SUBSET_SETTINGS_SCHEMA = 2


def _schema_name(name: str, names: tuple[str, ...]) -> str:
    """``name`` itself, after checking that the schema defines it (fails at import otherwise)."""
    if name not in names:
        raise ImportError(f"kd_hydra.records.schema no longer defines {name!r}; update analysis")
    return name


FINAL_TEST_ACC = _schema_name("final_test_acc", schema.METRICS_KEYS)
BEST_TEST_ACC = _schema_name("best_test_acc", schema.METRICS_KEYS)
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
    """Yield run directories below ``root``, skipping hidden folders and following no links; a run directory
    whose path is not UTF-8 is skipped with a warning naming it (no table, report or CSV could hold it)."""
    for current, subdirs, _files in os.walk(root):
        here = Path(current)
        if (here / schema.HYDRA_DIR / schema.CONFIG_FILE).is_file():
            if _is_utf8(current):
                yield here
            else:
                shown = os.fsencode(current).decode("utf-8", "backslashreplace")
                warnings.warn(f"skipping {shown}: its name is not UTF-8; rename it to analyse it", stacklevel=2)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the name, kept by os.fsdecode as lone surrogates
        return False
    return True


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
    """The row of one run directory: meta columns, its settings (dotted keys), then metrics.

    The settings come from metrics.json's ``settings`` when that is the complete record of the run
    (:func:`has_complete_settings`; a rerun refused later may have rewritten ``.hydra``), otherwise
    from ``.hydra/config.yaml`` with the recorded ``settings`` values on top. Every cell is a scalar:
    dicts and lists become their canonical text (:func:`canonical`).
    """
    row: dict[str, Any] = {RUN_DIR: str(run_dir), STATUS: schema.STATUS_UNFINISHED, REASON: None}
    row[OVERRIDES] = " ".join(read_overrides(run_dir))
    row[SWEEPER] = read_sweeper(run_dir)
    metrics, metrics_reason = _usable_metrics(run_dir)
    recorded = metrics.get(SETTINGS) if isinstance(metrics.get(SETTINGS), dict) else {}
    config_reason = None
    if has_complete_settings(metrics):
        config = {str(key): canonical(value) for key, value in recorded.items()}
    else:
        try:
            config = read_config(run_dir)
        except ConfigError as error:  # not plain bounded YAML (an alias bomb): said, then skipped
            warnings.warn(f"skipping the config of {run_dir}: {error}", stacklevel=2)
            config, config_reason = {}, REASON_BAD_CONFIG
        except Exception:  # noqa: BLE001 - any unreadable config is reported, not raised
            config, config_reason = {}, REASON_BAD_CONFIG
        config.update({str(k): canonical(v) for k, v in recorded.items() if v is not None})
    row.update({key: value for key, value in config.items() if key not in META_COLUMNS})
    for key, value in metrics.items():
        if key in (*METRIC_COLUMNS, *IDENTITY_COLUMNS) and key not in config:
            row[key] = canonical(value)
    if metrics:
        row[STATUS] = metrics.get(STATUS) or schema.STATUS_UNFINISHED
        row[REASON] = metrics.get(REASON)
    else:
        row[REASON] = metrics_reason
    if config_reason and not row[REASON]:
        row[REASON] = config_reason
    return row


def has_complete_settings(metrics: Mapping[str, Any]) -> bool:
    """True when ``metrics["settings"]`` is the complete flat record of the run's training settings:
    a schema after version 2, or identity keys (teacher_id, data_digest), or settings beyond the
    schema-2 subset (SETTINGS_KEYS and ``loss.*``)."""
    settings = metrics.get(SETTINGS)
    if not isinstance(settings, dict) or not settings:
        return False
    version = metrics.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SUBSET_SETTINGS_SCHEMA:
        return True
    if any(metrics.get(key) is not None for key in IDENTITY_COLUMNS):
        return True
    subset = set(schema.SETTINGS_KEYS)
    return any(key not in subset and not str(key).startswith("loss.") for key in settings)


def canonical(value: Any) -> Any:
    """``value`` itself when it is a scalar; dicts and lists (any depth) as sorted-key JSON text, so that
    equal settings compare, hash and group equal (``{"lr": 0.1}`` and ``[2, 3]``)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, (dict, list, tuple, set)):
        return json.dumps(_jsonable(value), sort_keys=True, default=str)
    return value


def _jsonable(value: Any) -> Any:
    """``value`` with text keys and sets as sorted lists, ready for ``json.dumps(sort_keys=True)``."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, set):
        return sorted((_jsonable(item) for item in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def read_config(run_dir: Path) -> dict[str, Any]:
    """``.hydra/config.yaml`` flattened to dotted keys; interpolations resolved where possible. ConfigError naming
    the file when it is not plain YAML of bounded size (an alias bomb is refused before it is expanded)."""
    path = run_dir / schema.HYDRA_DIR / schema.CONFIG_FILE
    check_config_file(path)
    config = OmegaConf.load(path)
    if not isinstance(config, DictConfig):
        raise ValueError(f"{schema.CONFIG_FILE} is not a mapping")
    raw = OmegaConf.to_container(config, resolve=False)
    # lists (and interpolations that resolve to a dict or list) become their canonical text
    return {dotted: canonical(_resolved(config, dotted, value)) for dotted, value in flatten(raw).items()}


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
    """The override strings of ``.hydra/overrides.yaml``; empty when absent or unreadable (an alias bomb too)."""
    path = run_dir / schema.HYDRA_DIR / schema.OVERRIDES_FILE
    try:
        check_config_file(path)
        overrides = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError):
        return []
    if not isinstance(overrides, list):
        return []
    return [str(item) for item in overrides]


def read_sweeper(run_dir: Path) -> str | None:
    """``hydra.sweeper._target_`` of ``.hydra/hydra.yaml``; None when absent or unreadable."""
    path = run_dir / schema.HYDRA_DIR / HYDRA_FILE
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    for key in ("hydra", "sweeper", "_target_"):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) else None


def is_search(runs: pd.DataFrame) -> pd.Series:
    """True for the runs an Optuna sweeper started (their settings are samples, not a grid)."""
    if SWEEPER not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs[SWEEPER].astype(object).map(lambda target: isinstance(target, str) and OPTUNA_MARK in target.lower())


def _usable_metrics(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``(metrics, None)`` from :func:`kd_hydra.records.run_directory.read_metrics`, or ``({}, reason)``; a
    metrics.json that is there but unusable also gets a warning naming the file (the run counts as unfinished)."""
    metrics, problem = run_directory.read_metrics(run_dir)
    if metrics is None:
        if problem != run_directory.NO_METRICS:
            warnings.warn(f"{run_dir / schema.METRICS_FILE}: {problem}: run counted as unfinished", stacklevel=2)
        return {}, problem
    for checkpoint in run_directory.checkpoint_problems(metrics):
        warnings.warn(
            f"{run_dir / schema.METRICS_FILE}: names a checkpoint that is not usable ({checkpoint})", stacklevel=2
        )
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
        reason = str(error).strip().splitlines()
        warnings.warn(f"skipping unreadable {path}: {reason[-1] if reason else type(error).__name__}", stacklevel=2)
        return None
    if EPOCH not in history.columns:
        warnings.warn(f"skipping {path}: no {EPOCH!r} column", stacklevel=2)
        return None
    history[EPOCH] = pd.to_numeric(history[EPOCH], errors="coerce")
    history = history.dropna(subset=[EPOCH])
    history = history.loc[:, [str(c) == c for c in history.columns]]
    return history
