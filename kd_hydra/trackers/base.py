"""What every tracker shares: the :class:`Tracker` protocol, its library import, run names and scalar values."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from kd_hydra.errors import ConfigError
from kd_hydra.records.identity import flatten

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


#: Seconds a tracker may take to reach its server before it falls back (``logger.<name>.timeout_s``).
DEFAULT_TIMEOUT_S = 5.0


Scalar = str | int | float | bool | None


class MissingTrackerPackage(ImportError):
    """A tracker's library is not installed (reported as the ``tracking`` extra)."""


def import_library(module: str) -> Any:
    """Import ``module`` or raise :class:`MissingTrackerPackage`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingTrackerPackage(module) from exc


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
    """Nested config -> ``{"loss.temperature": 4.0, ...}`` (:func:`~kd_hydra.records.identity.flatten`), every value
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


def tracker_run_name(hydra_cfg: DictConfig, output_root: str | Path | None = None) -> tuple[str, str]:
    """A Hydra job's (run name, group) in its trackers: name = ``hydra.job.override_dirname`` or the run
    directory name; group = the sweep directory (relative to ``output_root`` when inside it) for a multirun
    job, else ``runs``.

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


class Tracker(Protocol):
    """What ``RunLoggers`` (``kd_hydra.trackers.fanout``) calls, in this order, once per run.

    ``__init__`` takes the options of the tracker's ``logger/<name>.yaml`` node; it only checks them and
    imports the library (it also runs before any work, for every job of a sweep): a ``ConfigError``
    raised there is the one-line error ``logger.<name>.<key>: ...``.
    A method that raises later switches the tracker off with one warning; the run goes on.
    """

    def start(self, run_name: str, group: str, out_dir: Path) -> None:
        """Begin the run ``run_name`` (its overrides) of ``group`` (its sweep directory, or ``runs``) whose
        files go to ``out_dir`` (the run directory); a tracker that raises here is left out."""

    def log_hparams(self, flat_config: dict[str, Scalar]) -> None:
        """The resolved config, once, with dotted keys (``loss.temperature``) and scalar values."""

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """One ``history.csv`` row: every numeric column but ``epoch`` (empty cells left out), step ``epoch``."""

    def log_summary(self, values: dict[str, float]) -> None:
        """The finite numbers among the top-level keys of ``metrics.json``, once, at the end."""

    def close(self, status: str) -> None:
        """End the run: ``status`` is ``"completed"`` or ``"failed"``; also called after a failed run."""


def check_timeout(timeout_s: Any) -> float:
    """``timeout_s`` as a float, or a ConfigError unless it is a finite number > 0."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ConfigError("timeout_s", f"must be a finite number of seconds > 0 (got {timeout_s!r})")
    return float(timeout_s)
