"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) fed with what history.csv and metrics.json hold.

``logger=<name>`` (or ``logger=[a,b]``) puts one node per tracker under ``logger.<name>``; each node is
``_target_`` + options and is built with ``hydra.utils.instantiate``. :func:`build_loggers` turns the
group into a :class:`RunLoggers` that fans every call out to the trackers. history.csv and
metrics.json are written by the trainer whatever is chosen (``logger=csv``, the default, adds nothing).

The tracker libraries are imported inside the tracker classes, so importing this module is cheap.
A tracker that fails while the run goes on (disk full, lost server) is switched off with one
warning; training never stops because of a tracker.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import numbers
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from kd_hydra import schema
from kd_hydra.errors import ConfigError
from kd_hydra.identity import flatten

LOG = logging.getLogger(__name__)

#: The one-line message of a tracker whose library is not installed.
TRACKING_EXTRA_HINT = "needs the 'tracking' extra: pip install -e \".[tracking]\""
#: Group name of runs outside a sweep (a multirun job's group is its sweep directory).
SINGLE_RUN_GROUP = "runs"
#: Name of a run whose overrides and directory name are both empty.
DEFAULT_RUN_NAME = "run"
#: Longest run-directory name (bytes); most file systems allow 255.
MAX_DIR_NAME_BYTES = 200
_NAME_HASH_CHARS = 10
#: History column used as the step of every per-epoch value.
STEP_COLUMN = "epoch"
#: TensorBoard tag prefix of the final (metrics.json) numbers.
FINAL_TAG_PREFIX = "final/"
#: File name of the default MLflow store (SQLite; MLflow's file store is deprecated since 3.x).
MLFLOW_DB_FILE = "mlflow.db"
#: Folder, next to the MLflow store, of the experiments' artifact roots.
MLFLOW_ARTIFACTS_DIR = "mlartifacts"
# MLflow's own limits (mlflow.utils.validation).
_MLFLOW_MAX_PARAMS_PER_BATCH = 100
_MLFLOW_MAX_PARAM_VALUE = 6000
_MLFLOW_MAX_KEY = 250
_MLFLOW_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")
WANDB_MODES = ("offline", "online", "disabled")
#: Seconds a tracker may take to reach its server before it falls back (``logger.<name>.timeout_s``).
DEFAULT_TIMEOUT_S = 5.0
#: MLflow's HTTP retries per request against a reachable server (its own default retries for minutes).
MLFLOW_HTTP_RETRIES = 2

Scalar = str | int | float | bool | None


class MissingTrackerPackage(ImportError):
    """A tracker's library is not installed (reported as the ``tracking`` extra)."""


def _import(module: str) -> Any:
    """Import ``module`` or raise :class:`MissingTrackerPackage`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingTrackerPackage(module) from exc


# ----------------------------------------------------------------------------- pure helpers


def _scalar(value: Any) -> Scalar:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([_scalar(v) if not isinstance(v, Mapping) else flatten_config(v) for v in value])
    return str(value)


def flatten_config(config: Mapping[str, Any]) -> dict[str, Scalar]:
    """Nested config -> ``{"loss.temperature": 4.0, ...}`` (:func:`kd_hydra.identity.flatten`) with every value a
    scalar a tracker takes: lists become JSON strings, enums their names."""
    return {key: _scalar(value) for key, value in flatten(config).items()}


def numeric_values(record: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, float]:
    """The top-level real numbers of ``record`` as floats (None, text, bools and nested values left out)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key not in skip and isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


def safe_dir_name(name: str) -> str:
    """``name`` usable as one directory level: separators replaced, long names cut and suffixed with a hash."""
    cleaned = name.replace("/", "_").replace("\\", "_").strip()
    if cleaned in ("", ".", ".."):
        return DEFAULT_RUN_NAME
    if len(cleaned.encode("utf-8")) <= MAX_DIR_NAME_BYTES:
        return cleaned
    digest = hashlib.sha1(cleaned.encode("utf-8")).hexdigest()[:_NAME_HASH_CHARS]
    head = cleaned.encode("utf-8")[: MAX_DIR_NAME_BYTES - _NAME_HASH_CHARS - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def run_identity(hydra_cfg: DictConfig, output_root: str | Path | None = None) -> tuple[str, str]:
    """(run name, group) of a Hydra job: name = ``hydra.job.override_dirname`` or the run directory name;
    group = the sweep directory (relative to ``output_root`` when inside it) for a multirun job, else ``runs``.

    ``hydra_cfg`` is ``HydraConfig.get()`` (the ``hydra`` node).
    """
    run_dir = Path(hydra_cfg.runtime.output_dir)
    name = OmegaConf.select(hydra_cfg, "job.override_dirname", default="") or run_dir.name or DEFAULT_RUN_NAME
    mode = OmegaConf.select(hydra_cfg, "mode", default=None)
    if str(getattr(mode, "name", mode)) != "MULTIRUN":
        return name, SINGLE_RUN_GROUP
    sweep_dir = Path(hydra_cfg.sweep.dir)
    group = sweep_dir.name
    if output_root is not None:
        with contextlib.suppress(ValueError):
            group = sweep_dir.resolve().relative_to(Path(output_root).resolve()).as_posix()
    return name, group


# ----------------------------------------------------------------------------- trackers


class Tracker(Protocol):
    """What :class:`RunLoggers` calls; ``__init__`` only checks options and imports the library."""

    def start(self, run_name: str, group: str, out_dir: Path) -> None: ...
    def log_hparams(self, flat_config: dict[str, Scalar]) -> None: ...
    def log_epoch(self, epoch: int, values: dict[str, float]) -> None: ...
    def log_summary(self, values: dict[str, float]) -> None: ...
    def close(self, status: str) -> None: ...


class TensorBoardTracker:
    """Event files in ``<run dir>/<subdir>/<run name>/``: one scalar per history column per epoch,
    ``final/<key>`` scalars, the config as text and as HParams (written at close, with the final metrics)."""

    def __init__(self, subdir: str = "tensorboard", flush_secs: int = 30) -> None:
        self._writer_cls = _import("torch.utils.tensorboard").SummaryWriter
        self.subdir = subdir
        self.flush_secs = flush_secs
        self.log_dir: Path | None = None
        self._writer: Any = None
        self._hparams: dict[str, Scalar] = {}
        self._final: dict[str, float] = {}
        self._last_epoch = 0

    def start(self, run_name: str, group: str, out_dir: Path) -> None:
        self.log_dir = Path(out_dir) / self.subdir / safe_dir_name(run_name)
        self._writer = self._writer_cls(log_dir=str(self.log_dir), flush_secs=self.flush_secs)

    def log_hparams(self, flat_config: dict[str, Scalar]) -> None:
        self._hparams = {key: ("None" if value is None else value) for key, value in flat_config.items()}
        lines = "\n".join(f"    {key}: {value}" for key, value in flat_config.items())
        self._writer.add_text("config", lines)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=epoch)
        self._last_epoch = epoch

    def log_summary(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(FINAL_TAG_PREFIX + key, value, global_step=self._last_epoch)
        self._final = {FINAL_TAG_PREFIX + key: value for key, value in values.items()}

    def close(self, status: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._writer.add_text("status", status)
        for summary in hparams(self._hparams, self._final):
            self._writer.file_writer.add_summary(summary)
        self._writer.close()


def check_timeout(timeout_s: Any) -> float:
    """``timeout_s`` as a float, or a ConfigError unless it is a finite number > 0."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ConfigError("timeout_s", f"must be a finite number of seconds > 0 (got {timeout_s!r})")
    return float(timeout_s)


def unreachable_reason(uri: str, timeout_s: float) -> str | None:
    """Why the HTTP(S) server of ``uri`` cannot be connected to within ``timeout_s`` (None: it can, or not HTTP)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"


class MLflowTracker:
    """One MLflow run per job: experiment = ``experiment`` or the group, run name = the job's overrides.

    The store is ``tracking_uri``, or by default ``sqlite:///<store_dir>/mlflow.db`` shared by every run
    (writes to it are serialised with a file lock so parallel jobs do not collide). A tracking server
    that cannot be reached within ``timeout_s`` is replaced by that local store, with one warning.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        store_dir: str = "outputs",
        experiment: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.timeout_s = check_timeout(timeout_s)
        self._client_cls = _import("mlflow.tracking").MlflowClient
        self._entities = _import("mlflow.entities")
        self.tracking_uri = tracking_uri
        self.store_dir = Path(store_dir)
        self.experiment = experiment
        self.run_id: str | None = None
        self._client: Any = None
        self._lock: Any = contextlib.nullcontext()

    def _reachable_uri(self) -> str | None:
        """``tracking_uri``, or None (the local store) when its server does not answer within ``timeout_s``."""
        uri = self.tracking_uri
        if uri is None:
            return None
        reason = unreachable_reason(uri, self.timeout_s)
        if reason is not None:
            LOG.warning(
                "logger.mlflow: cannot reach %s within %g s (%s); logging to the local store in %s instead",
                uri,
                self.timeout_s,
                reason,
                self.store_dir.resolve() / MLFLOW_DB_FILE,
            )
            return None
        # a reachable server that stalls: MLflow's own timeout and retries, bounded (a user's settings win)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MLFLOW_HTTP_RETRIES))
        return uri

    def start(self, run_name: str, group: str, out_dir: Path) -> None:
        uri = self._reachable_uri()
        if uri is None:
            from filelock import FileLock

            store_dir = self.store_dir.resolve()
            store_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store_dir / MLFLOW_DB_FILE}"
            self._lock = FileLock(str(store_dir / f"{MLFLOW_DB_FILE}.lock"))
        self.tracking_uri = uri
        name = self.experiment or group
        with self._lock:
            self._client = self._client_cls(tracking_uri=uri)
            found = self._client.get_experiment_by_name(name)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                artifacts = (
                    (self.store_dir.resolve() / MLFLOW_ARTIFACTS_DIR).as_uri()
                    if self.tracking_uri.startswith("sqlite:")
                    else None
                )
                experiment_id = self._client.create_experiment(name, artifact_location=artifacts)
            run = self._client.create_run(
                experiment_id, run_name=run_name, tags={"kd_hydra.run_dir": str(out_dir), "kd_hydra.group": group}
            )
        self.run_id = run.info.run_id

    def log_hparams(self, flat_config: dict[str, Scalar]) -> None:
        params = [
            self._entities.Param(
                _MLFLOW_BAD_KEY_CHARS.sub("_", key)[:_MLFLOW_MAX_KEY], str(value)[:_MLFLOW_MAX_PARAM_VALUE]
            )
            for key, value in flat_config.items()
        ]
        with self._lock:
            for start in range(0, len(params), _MLFLOW_MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=params[start : start + _MLFLOW_MAX_PARAMS_PER_BATCH])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        metrics = [self._entities.Metric(key, value, stamp, step) for key, value in values.items()]
        if metrics:
            with self._lock:
                self._client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self._log_metrics(values, step=epoch)

    def log_summary(self, values: dict[str, float]) -> None:
        self._log_metrics(values, step=0)

    def close(self, status: str) -> None:
        with self._lock:
            self._client.set_terminated(self.run_id, "FINISHED" if status == schema.STATUS_COMPLETED else "FAILED")


class WandbTracker:
    """A Weights & Biases run (offline by default): group = the group, name = the job's overrides,
    files under ``<run dir>/wandb/``; final metrics go to the run summary. An online run that cannot
    start within ``timeout_s`` is logged offline instead, with one warning."""

    def __init__(
        self,
        mode: str = "offline",
        project: str = "kd-hydra",
        entity: str | None = None,
        tags: Sequence[str] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S * 6,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError("mode", f"must be one of {', '.join(WANDB_MODES)} (got '{mode}')")
        self.timeout_s = check_timeout(timeout_s)
        self._wandb = _import("wandb")
        self.mode = mode
        self.project = project
        self.entity = entity
        self.tags = list(tags)
        self.run: Any = None

    def start(self, run_name: str, group: str, out_dir: Path) -> None:
        settings = self._wandb.Settings(
            silent=True, console="off", disable_git=True, x_disable_stats=True, init_timeout=self.timeout_s
        )
        Path(out_dir).mkdir(parents=True, exist_ok=True)

        def init(mode: str) -> Any:
            return self._wandb.init(
                mode=mode,
                project=self.project,
                entity=self.entity,
                group=group,
                name=run_name,
                dir=str(out_dir),
                tags=self.tags or None,
                reinit="finish_previous",
                settings=settings,
            )

        try:
            self.run = init(self.mode)
        except Exception as exc:
            if self.mode != "online":
                raise
            LOG.warning(
                "logger.wandb: cannot start online within %g s (%s: %s); logging offline in %s instead "
                "(wandb sync uploads it later)",
                self.timeout_s,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                Path(out_dir) / "wandb",
            )
            self.run = init("offline")

    def log_hparams(self, flat_config: dict[str, Scalar]) -> None:
        self.run.config.update(flat_config, allow_val_change=True)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log(values, step=epoch)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == schema.STATUS_COMPLETED else 1)


# ----------------------------------------------------------------------------- fan-out


class RunLoggers:
    """Fans each call out to every configured tracker; a no-op when there is none.

    A tracker that raises is switched off for the rest of the run with one warning; the run goes on.
    """

    def __init__(self, trackers: Mapping[str, Tracker] | None = None) -> None:
        self._active: dict[str, Tracker] = dict(trackers or {})
        self._failed: dict[str, Tracker] = {}
        self._closed = False

    @property
    def names(self) -> tuple[str, ...]:
        """Names (``logger.<name>``) of the trackers still logging."""
        return tuple(self._active)

    def _each(self, action: str, call: Any) -> None:
        for name, tracker in list(self._active.items()):
            try:
                call(tracker)
            except Exception as exc:  # a tracker must never stop training
                LOG.warning(
                    "logger.%s: %s failed (%s: %s); this tracker is off for the rest of the run",
                    name,
                    action,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                self._failed[name] = self._active.pop(name)

    def log_hparams(self, config: Mapping[str, Any]) -> None:
        """Log the resolved config (nested dict) as hyperparameters with flattened dotted keys."""
        flat = flatten_config(config)
        self._each("log_hparams", lambda tracker: tracker.log_hparams(flat))

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Log one history.csv row: every numeric column but ``epoch`` at step = ``row["epoch"]``; None skipped."""
        epoch = int(row[STEP_COLUMN])
        values = numeric_values(row, skip=(STEP_COLUMN,))
        self._each("log_epoch", lambda tracker: tracker.log_epoch(epoch, values))

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Log the numbers of a metrics.json record (top-level keys) as the run's final metrics."""
        values = {
            key: value
            for key, value in numeric_values(metrics, skip=("schema_version",)).items()
            if math.isfinite(value)
        }
        self._each("log_summary", lambda tracker: tracker.log_summary(values))

    def close(self, status: str) -> None:
        """End every tracker's run with ``status`` ("completed" | "failed"); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._each("close", lambda tracker: tracker.close(status))
        for tracker in self._failed.values():  # free what a failed tracker holds, quietly
            with contextlib.suppress(Exception):
                tracker.close(status)
        self._active.clear()

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(schema.STATUS_COMPLETED if exc_type is None else schema.STATUS_FAILED)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _tracker_nodes(logger_cfg: DictConfig | None) -> Iterator[tuple[str, DictConfig]]:
    """(name, node) of every tracker in the group; ``csv`` and nodes set to null start nothing."""
    if logger_cfg is None:
        return
    for name, node in logger_cfg.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            yield str(name), node


def _instantiate(name: str, node: DictConfig) -> Tracker:
    """Build one tracker; every failure is a one-line :class:`ConfigError` naming ``logger.<name>``."""
    from hydra.utils import instantiate

    key = f"logger.{name}"
    try:
        return instantiate(node, _convert_="all")
    except Exception as exc:
        for cause in _causes(exc):
            if isinstance(cause, MissingTrackerPackage):
                raise ConfigError(key, TRACKING_EXTRA_HINT) from None
            if isinstance(cause, ConfigError):
                raise ConfigError(f"{key}.{cause.key}", str(cause).removeprefix(f"{cause.key}: ")) from None
        innermost = list(_causes(exc))[-1]
        detail = str(innermost).strip().splitlines()[-1] if str(innermost).strip() else type(innermost).__name__
        raise ConfigError(key, f"cannot build {node.get('_target_')}: {detail}") from None


def check_loggers(logger_cfg: DictConfig | None) -> None:
    """Raise :class:`ConfigError` if a configured tracker cannot be built (missing package, bad option).

    Starts nothing: safe to call for every job of a sweep before any runs."""
    for name, node in _tracker_nodes(logger_cfg):
        _instantiate(name, node)


def build_loggers(logger_cfg: DictConfig | None, run_name: str, group: str, out_dir: Path) -> RunLoggers:
    """Build and start every tracker of the ``logger`` group for one run.

    Raises :class:`ConfigError` (``logger.<name>: ...``) when a tracker cannot be built (its package is
    missing, an option is wrong); a tracker that cannot start (unwritable store, no network) is left out
    with a warning. ``run_name`` names the run, ``group`` groups the runs of a sweep, ``out_dir`` is the
    run directory.
    """
    built = [(name, _instantiate(name, node)) for name, node in _tracker_nodes(logger_cfg)]
    started: dict[str, Tracker] = {}
    for name, tracker in built:
        try:
            tracker.start(run_name, group, Path(out_dir))
        except Exception as exc:  # a tracker must never stop training
            LOG.warning(
                "logger.%s: could not start (%s: %s); the run goes on without it",
                name,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            continue
        started[name] = tracker
    return RunLoggers(started)
