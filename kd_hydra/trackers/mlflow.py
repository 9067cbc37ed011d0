"""``logger=mlflow``: one MLflow run per job, in a local SQLite store or on a tracking server."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from kd_hydra.errors import KDHydraError
from kd_hydra.records import schema
from kd_hydra.trackers.base import DEFAULT_TIMEOUT_S, Scalar, check_timeout, import_library

LOG = logging.getLogger(__name__)


#: File name of the default MLflow store (SQLite; MLflow's file store is deprecated since 3.x).
MLFLOW_DB_FILE = "mlflow.db"


#: Folder, next to the MLflow store, of the experiments' artifact roots.
MLFLOW_ARTIFACTS_DIR = "mlartifacts"


# MLflow's own limits (mlflow.utils.validation).
_MLFLOW_MAX_PARAMS_PER_BATCH = 100


_MLFLOW_MAX_PARAM_VALUE = 6000


_MLFLOW_MAX_KEY = 250


_MLFLOW_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")


#: MLflow's HTTP retries per request against a reachable server (its own default retries for minutes).
MLFLOW_HTTP_RETRIES = 2


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
        self._client_cls = import_library("mlflow.tracking").MlflowClient
        self._entities = import_library("mlflow.entities")
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
        try:
            self._open_run(run_name, group, out_dir)
        except Exception as error:
            if not uri.startswith("sqlite:"):
                raise
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise KDHydraError(
                f"{uri.removeprefix('sqlite:///')}: not a usable MLflow store ({type(error).__name__}: {detail}); "
                "move it aside or choose another logger.mlflow.store_dir"
            ) from error

    def _open_run(self, run_name: str, group: str, out_dir: Path) -> None:
        """The run ``run_name`` in the experiment ``self.experiment`` or ``group``, created in the store."""
        name = self.experiment or group
        with self._lock:
            self._client = self._client_cls(tracking_uri=self.tracking_uri)
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
