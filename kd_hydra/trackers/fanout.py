"""The ``logger`` group as one object: build, check and start its trackers, fan every call out to them.

A tracker that fails while the run goes on (disk full, lost server) is switched off with one warning;
training never stops because of a tracker.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kd_hydra.errors import ConfigError, KDHydraError
from kd_hydra.records import schema
from kd_hydra.trackers.base import (
    STEP_COLUMN,
    TRACKING_EXTRA_HINT,
    MissingTrackerPackage,
    Tracker,
    flatten_config,
    numeric_values,
)

LOG = logging.getLogger(__name__)


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
    with one warning line (a damaged local store: naming its file). ``run_name`` names the run, ``group``
    groups the runs of a sweep, ``out_dir`` is the run directory.
    """
    built = [(name, _instantiate(name, node)) for name, node in _tracker_nodes(logger_cfg)]
    started: dict[str, Tracker] = {}
    for name, tracker in built:
        try:
            tracker.start(run_name, group, Path(out_dir))
        except Exception as exc:  # a tracker must never stop training
            detail = str(exc).splitlines()[0] if str(exc) else ""
            if not isinstance(exc, KDHydraError):
                detail = f"{type(exc).__name__}: {detail}"
            LOG.warning("logger.%s: could not start (%s); the run goes on without it", name, detail)
            continue
        started[name] = tracker
    return RunLoggers(started)
