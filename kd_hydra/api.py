"""kd-hydra from Python (a script or a notebook): ``run_experiment(overrides) -> metrics``.

One job, composed from the same configs and overrides as the command line and run through
:func:`kd_hydra.run.app.run` the way ``run.py`` runs it: the run directory gets ``.hydra/config.yaml``,
``overrides.yaml``, ``hydra.yaml``, ``run.log`` and the run's files, so ``analysis`` reads it like any
other run. Bad input raises a :class:`~kd_hydra.errors.KDHydraError` subclass (never ``sys.exit``);
Hydra's global state and the caller's process state (torch threads, the torch, Python and NumPy random
states, the working directory, logging handlers and levels) are left as they were found. Calls run one at a
time in a process (a second, concurrent call is refused in one line) and run one job (multirun is refused).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.callbacks import Callbacks
from hydra.core.utils import JobStatus, run_job
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from kd_hydra.config.compose import check_directories, compose, hydra_session
from kd_hydra.config.objective import check_optimized_metric
from kd_hydra.errors import ConfigError, KDHydraError

RUN_LOG = "run.log"
#: The format of Hydra's own job log, so run.log reads the same from the command line and from Python.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
LOGGED_PACKAGES = ("kd_hydra", "analysis")
#: Command-line flags that ask for a multirun: refused by :func:`run_experiment` (one job per call).
MULTIRUN_FLAGS = ("-m", "--multirun")

#: Held by the call in progress: Hydra's global state and the process's logging are one per process.
_ONE_CALL = threading.Lock()


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
    flags = [override for override in overrides if override.strip() in MULTIRUN_FLAGS]
    if flags:
        raise ConfigError("overrides", f"{flags[0]!r}: run_experiment runs one job; run a sweep with run.py -m")
    if not _ONE_CALL.acquire(blocking=False):
        raise KDHydraError(
            "run_experiment: another call is running in this process; calls run one at a time (Hydra's state and "
            "logging are per process): wait for it, or run the other job in another process"
        )
    try:
        with _caller_state():
            return _run_one(run, overrides, output_dir, config_dir, progress)
    finally:
        _ONE_CALL.release()


def _run_one(
    run: Any, overrides: list[str], output_dir: str | os.PathLike | None, config_dir: Any, progress: bool
) -> dict[str, Any]:
    with hydra_session(config_dir) as hydra:
        cfg = compose(hydra, overrides)
        if OmegaConf.select(cfg, "hydra.mode") == RunMode.MULTIRUN:
            raise ConfigError("hydra.mode", "MULTIRUN: run_experiment runs one job; run a sweep with run.py -m")
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


@contextlib.contextmanager
def _caller_state() -> Iterator[None]:
    """Restore on exit what a job changes in its process: torch's thread count and float32 matmul precision,
    the torch (CPU and initialized CUDA), Python and NumPy random states, the working directory, and every
    logger's level and handlers."""
    import numpy as np
    import torch

    threads, matmul = torch.get_num_threads(), torch.get_float32_matmul_precision()
    cuda = torch.cuda.is_initialized()
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None, random.getstate())
    numpy_rng, cwd = np.random.get_state(), os.getcwd()
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    logging_state = [(logger, logger.level, list(logger.handlers), logger.propagate) for logger in loggers]
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
        random.setstate(rng[2])
        np.random.set_state(numpy_rng)
        for logger, level, handlers, propagate in logging_state:
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate


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
