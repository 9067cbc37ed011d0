"""kd-hydra from Python (a script or a notebook): ``run_experiment(overrides) -> metrics``.

One job, composed from the same configs and overrides as the command line and run through
:func:`kd_hydra.run.app.run` the way ``run.py`` runs it: the run directory gets ``.hydra/config.yaml``,
``overrides.yaml``, ``hydra.yaml``, ``run.log`` and the run's files, so ``analysis`` reads it like any
other run. Bad input raises a :class:`~kd_hydra.errors.KDHydraError` subclass (never ``sys.exit``);
Hydra's global state and the logging setup are left as they were found.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.callbacks import Callbacks
from hydra.core.utils import JobStatus, run_job
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from kd_hydra.config.compose import check_directories, compose, hydra_session
from kd_hydra.config.objective import check_optimized_metric

RUN_LOG = "run.log"
#: The format of Hydra's own job log, so run.log reads the same from the command line and from Python.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
LOGGED_PACKAGES = ("kd_hydra", "analysis")


def run_experiment(
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one job with command-line style ``overrides`` (a string is one override); return its metrics.json record.

    ``output_dir``: the run directory (default: ``hydra.run.dir``, i.e. ``<paths.output_dir>/runs/<date>/<time>``).
    ``config_dir``: a directory of your own config groups, searched first (like ``--config-dir``).
    ``progress``: progress bars in a notebook or terminal (the teacher's training, then the run's), and the
    run's summary lines; ``False`` keeps the call silent (everything still goes to ``run.log``).
    Raises :class:`~kd_hydra.errors.ConfigError` for an unknown option or key, a malformed override, a
    sweep value, or a directory that cannot be written, before any work; other errors as the job raises them.
    """
    from kd_hydra.run.app import run  # torch is imported only when a job runs

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)  # one override, not its letters
    if not progress:
        overrides.append("trainer.progress=false")
    with hydra_session(config_dir) as hydra:
        cfg = compose(hydra, overrides)
        if output_dir is not None:
            with open_dict(cfg):
                cfg.hydra.run.dir = str(Path(output_dir).absolute())
        check_optimized_metric(str(cfg.optimized_metric))
        check_directories(cfg, ["hydra.run.dir"] if output_dir is not None else overrides, multirun=False)
        failure: list[BaseException] = []

        def task(job_cfg: DictConfig) -> dict[str, Any]:
            try:
                return run(job_cfg)
            except BaseException as error:  # re-raised below, after Hydra has restored its state
                failure.append(error)
                raise

        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
        with _run_log(Path(str(OmegaConf.select(cfg, "hydra.run.dir"))), console=progress), quiet:
            result = run_job(
                task_function=task,
                config=cfg,
                job_dir_key="hydra.run.dir",
                job_subdir_key=None,
                hydra_context=context,
                configure_logging=False,
            )
    if failure:
        raise failure[0]
    assert result.status is JobStatus.COMPLETED
    return result.return_value


#: Loggers whose INFO lines a notebook call shows (what is trained and when), besides every warning.
CONSOLE_LOGGERS = ("kd_hydra.run.app", "kd_hydra.sweeps")


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name in CONSOLE_LOGGERS


class _run_log:
    """Append the run's log records (kd_hydra's INFO and up) to ``<run_dir>/run.log`` while active; with
    ``console``, also show what is trained (the teacher, the run) and warnings on stderr."""

    def __init__(self, run_dir: Path, console: bool = False) -> None:
        self.run_dir = run_dir
        self.handlers: list[logging.Handler] = []
        self.console = console
        self.levels: dict[str, int] = {}

    def __enter__(self) -> _run_log:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(self.run_dir / RUN_LOG)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        file_handler.setLevel(logging.INFO)
        self.handlers.append(file_handler)
        if self.console:
            console = logging.StreamHandler()
            console.setFormatter(logging.Formatter("[kd-hydra] %(message)s"))
            console.addFilter(_ConsoleFilter())
            self.handlers.append(console)
        for name in LOGGED_PACKAGES:
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        for handler in self.handlers:
            logging.getLogger().addHandler(handler)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handler in self.handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
