"""A run directory's record, written only by the run it describes.

The record is ``.hydra/`` (config, hydra config, overrides), ``metrics.json``, ``history.csv``, ``model.pt``,
``checkpoint.pt`` and the saved checkpoints under ``checkpoints/``. kd-hydra writes ``.hydra/`` itself
(``hydra.output_subdir`` is null) once the directory is *claimed*: after the run's identity (its settings,
its data's content digest and its teacher) was compared with any record already there. A completed run of
the same identity is left alone; a completed run, or a resumable checkpoint, of another identity is refused
with what differs; nothing of a record changes before the claim. This module is also the one reader of
metrics.json (no torch: the analysis and the sweeper use it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kd_hydra.errors import ConfigError
from kd_hydra.records import schema
from kd_hydra.records.claims import exclusive
from kd_hydra.records.files import atomic_write_text, metrics_record, write_json
from kd_hydra.records.identity import (
    digest,
    identity_differences,
    plain,
    recorded_settings,
    run_identity,
    training_settings,
)

MODEL_FILE = "model.pt"
CHECKPOINTS_DIR = "checkpoints"
#: The run directory's claim (``.kd-hydra-claim.lock`` and ``.json``): one writer at a time.
CLAIM_NAME = ".kd-hydra-claim"
#: Files and folders of a run's results: removed when a run starts over in the same directory.
RESULT_FILES = (schema.METRICS_FILE, schema.HISTORY_FILE, MODEL_FILE, schema.TRAIN_STATE_FILE, CHECKPOINTS_DIR)


#: Why a run directory has no usable record: no metrics.json, or one that cannot be read or holds a wrong type.
NO_METRICS = f"no {schema.METRICS_FILE} (run unfinished or killed)"
BAD_METRICS = f"{schema.METRICS_FILE} unreadable"


def read_metrics(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a metrics.json whose keys hold values of their type, else ``(None, why)``
    (:data:`NO_METRICS`, :data:`BAD_METRICS`, or ``BAD_METRICS: 'status' is a list, expected text``); never raises.
    """
    try:
        record = json.loads((Path(run_dir) / schema.METRICS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, NO_METRICS
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None, BAD_METRICS
    problem = metrics_problem(record)
    if problem is not None:
        return None, f"{BAD_METRICS}: {problem}"
    return record, None


def metrics_problem(record: Any) -> str | None:
    """What makes a parsed metrics.json unusable, in a few words; None when it is usable.

    :data:`~kd_hydra.records.schema.TEXT_METRICS` must be text or null (``status`` text),
    :data:`~kd_hydra.records.schema.NUMBER_METRICS` a number or null, ``settings`` a mapping or null;
    other keys may hold anything.
    """
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    if not isinstance(record.get("status"), str) or not record["status"]:
        return f"'status' is {_type_name(record.get('status'))}, expected text"
    for key, value in record.items():
        if value is None:
            continue
        if key in schema.TEXT_METRICS and not isinstance(value, str):
            return f"{key!r} is {_type_name(value)}, expected text"
        if key in schema.MAPPING_METRICS and not isinstance(value, dict):
            return f"{key!r} is {_type_name(value)}, expected a mapping"
        if key in schema.NUMBER_METRICS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key!r} is {_type_name(value)}, expected a number"
    return None


def _type_name(value: Any) -> str:
    """``a list``, ``null``, ``a str``: the JSON-ish type of ``value`` for messages."""
    return "null" if value is None else f"a {type(value).__name__}"


#: metrics.json keys that name a saved checkpoint of the run.
CHECKPOINT_KEYS = ("checkpoint", "best_checkpoint")


def checkpoint_problems(record: Mapping[str, Any]) -> list[str]:
    """``best_checkpoint: <path> is missing`` (or ``is not a loadable checkpoint``) for each checkpoint metrics.json
    names that is not there or is not a torch archive; empty when all are there."""
    problems = []
    for key in CHECKPOINT_KEYS:
        value = record.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if not path.is_file():
            problems.append(f"{key}: {path} is missing")
        elif not zipfile.is_zipfile(path):
            problems.append(f"{key}: {path} is not a loadable checkpoint")
    return problems


def run_status(run_dir: Path) -> tuple[str, str | None]:
    """``(status, reason)`` of a run directory: completed, failed, or unfinished (no or unreadable metrics)."""
    record, problem = read_metrics(run_dir)
    if record is None:
        return schema.STATUS_UNFINISHED, problem
    status = record.get("status")
    if status not in (schema.STATUS_COMPLETED, schema.STATUS_FAILED):
        return schema.STATUS_UNFINISHED, f"{schema.METRICS_FILE} has no valid status ({status!r})"
    return status, record.get("reason")


def saved_identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """The identity a completed record describes (see :func:`kd_hydra.records.identity.run_identity`)."""
    settings = record.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    return run_identity(settings, record.get("data_digest"), record.get("teacher_id"))


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a run directory (it, or its ``.hydra``, is a symbolic link or a file); None if it can."""
    for candidate in (path, path / schema.HYDRA_DIR):
        if candidate.is_symlink():
            return f"{candidate}: is a symbolic link (to {candidate.readlink()})"
        if candidate.exists() and not candidate.is_dir():
            return f"{candidate}: is a file, expected a directory"
    return None


class RunDirectory:
    """One run's directory: check a rerun against its record, then claim it (write ``.hydra/``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def completed_record(self, identity: Mapping[str, Any], overwrite: bool) -> dict[str, Any] | None:
        """The record of a completed run of this identity (left alone), else None (this run may go on).

        A completed run of another identity is a ConfigError naming what differs, unless ``overwrite``.
        """
        record, _ = read_metrics(self.path)
        if record is None or record.get("status") != schema.STATUS_COMPLETED:
            return None
        differences = identity_differences(saved_identity(record), identity)
        if not differences:
            return record
        if overwrite:
            return None
        raise ConfigError(
            "trainer.resume",
            f"{self.path} holds a completed run of another identity ({differences}); nothing in it was changed: "
            "use another run directory, or trainer.resume=never to replace it",
        )

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the directory's exclusive claim (one writer across processes and hosts) while the block runs.

        A symbolic link is refused before anything is written (a run writes only into a real directory).
        """
        problem = directory_problem(self.path)
        if problem is not None:
            hint = ": give the real directory" if "symbolic link" in problem else ""
            raise ConfigError("hydra.run.dir", f"{problem}; nothing was written{hint}")
        with exclusive(self.path, CLAIM_NAME, f"run directory {self.path}"):
            yield

    def refuse_foreign(self, evaluation: bool) -> None:
        """Refuse, in one line, a directory whose record kd-hydra did not write, and (``evaluation``) one that
        holds a training run's record: an evaluation never writes beside it."""
        metrics = self.path / schema.METRICS_FILE
        written = [name for name in RESULT_FILES if (self.path / name).exists()]
        if not written:
            return
        record, problem = read_metrics(self.path)
        ours = (self.path / schema.HYDRA_DIR / schema.CONFIG_FILE).is_file()
        if metrics.exists() and (record is None or "schema_version" not in record):
            why = problem or "no schema_version"
            raise ConfigError(
                "hydra.run.dir",
                f"{metrics}: was not written by kd-hydra ({why}); nothing in {self.path} was changed: "
                "use another run directory",
            )
        if not ours:
            raise ConfigError(
                "hydra.run.dir",
                f"{self.path} holds {', '.join(written)} that kd-hydra did not write (no {schema.HYDRA_DIR}/"
                f"{schema.CONFIG_FILE}); nothing in it was changed: use another run directory",
            )
        if evaluation and (record is None or record.get("mode") != "eval"):
            raise ConfigError(
                "hydra.run.dir",
                f"{self.path} holds a training run's record; an evaluation never writes into it: "
                "give the evaluation its own directory",
            )

    def holds_record(self) -> bool:
        """Whether a run's results or resumable state are here (then a failure before the claim writes nothing)."""
        return any((self.path / name).exists() for name in (schema.METRICS_FILE, schema.TRAIN_STATE_FILE))

    def claim(self, cfg: DictConfig, hydra_node: DictConfig | None, overrides: list[str], fresh: bool) -> None:
        """Write ``.hydra/`` for this run; with ``fresh``, first remove an earlier run's results."""
        if fresh:
            for name in RESULT_FILES:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        self.write_settings(cfg, hydra_node, overrides)

    def write_settings(self, cfg: DictConfig, hydra_node: DictConfig | None, overrides: list[str]) -> None:
        """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra writes them, atomically."""
        folder = self.path / schema.HYDRA_DIR
        atomic_write_text(folder / schema.CONFIG_FILE, OmegaConf.to_yaml(cfg))
        if hydra_node is not None:
            atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_node})))
        atomic_write_text(folder / schema.OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def failure_reason(error: BaseException) -> str:
    """The one-line reason of a failed run: a kd-hydra error's message, else ``Type: message``."""
    from kd_hydra.errors import KDHydraError

    reason = str(error) if isinstance(error, KDHydraError) else f"{type(error).__name__}: {error}"
    return reason or type(error).__name__


def write_failed(out_dir: Path, cfg: DictConfig, wall_seconds: float, reason: str, identity: Any = None) -> None:
    """A failed run's metrics.json: its reason and whatever of its settings resolve."""
    try:
        settings = recorded_settings(training_settings(cfg))
    except Exception:  # a broken config (e.g. a missing interpolation) still gets its failed record
        settings = None
    write_json(
        Path(out_dir) / schema.METRICS_FILE,
        metrics_record(
            status=schema.STATUS_FAILED,
            reason=reason,
            mode=plain(cfg.get("mode")),
            dataset=OmegaConf.select(cfg, "dataset.name", default=None),
            settings=settings,
            config_digest=digest(identity) if identity is not None else None,
            wall_seconds=wall_seconds,
        ),
    )


def write_completed(out_dir: Path, cfg: DictConfig, identity: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    """A completed run's metrics.json (the last file it writes); returns the record."""
    record = metrics_record(
        status=schema.STATUS_COMPLETED,
        mode=plain(cfg.mode),
        settings=recorded_settings(training_settings(cfg)),
        config_digest=digest(identity),
        data_digest=identity["data_digest"],
        teacher_id=identity["teacher_id"],
        **values,
    )
    write_json(Path(out_dir) / schema.METRICS_FILE, record)
    return record
