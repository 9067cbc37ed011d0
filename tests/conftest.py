"""Shared fixtures: run kd-hydra's command line as a user would, in a temporary workspace, on generated data.

``Workspace.run`` runs the command line (``kd_hydra.cli.main``, what ``run.py`` and ``kd-hydra`` call) in
this process by default, with the workspace's environment, working directory and a captured stdout and
stderr, and gives back what a subprocess would: exit status, stdout, stderr. That saves each run the
seconds of a fresh interpreter importing torch and Hydra. ``subprocess=True`` runs ``python run.py``
instead, for what only a real process shows (a kill, worker processes, the interpreter's exit status).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: A run small enough for CI: 256 generated 16x16 images, tutorial CNNs, 2 epochs, 1 thread.
TINY = [
    "dataset=synthetic",
    "dataset.loader.num_train=256",
    "dataset.loader.num_test=128",
    "teacher=deep_cnn",
    "student=light_cnn",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "teacher_training.epochs=2",
    "teacher_training.batch_size=64",
    "trainer.num_threads=1",
    "trainer.device=cpu",
    "optimizer=adamw",
]


@contextlib.contextmanager
def isolated_process_state(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """Run a command-line call in this process as if it had its own: ``env`` and ``cwd`` applied, and
    the global state a run changes (logging setup, Hydra's singletons, torch threads and RNGs, argv)
    restored afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), list(sys.argv)
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_loggers = {name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
                     for name, logger in logging.root.manager.loggerDict.items()
                     if isinstance(logger, logging.Logger)}  # fmt: skip
    saved_hydra = HydraConfig.instance().cfg
    torch = sys.modules.get("torch")
    saved_torch = (torch.get_num_threads(), torch.get_rng_state()) if torch is not None else None
    saved_random = random.getstate()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv[:] = saved_argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = saved_hydra
        for handler in root.handlers:
            if handler not in saved_root[0]:
                handler.close()
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, (level, handlers, propagate, disabled) in saved_loggers.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled
        torch = sys.modules.get("torch")
        if torch is not None:
            threads, rng = saved_torch if saved_torch is not None else (torch.get_num_threads(), None)
            torch.set_num_threads(threads)
            if rng is not None:
                torch.set_rng_state(rng)
        random.setstate(saved_random)


def call_main(args: list[str], main: Callable[[list[str]], object] | None = None) -> tuple[int, str, str]:
    """``main(args)`` (default ``kd_hydra.cli.main``) with stdout and stderr captured: (exit status, stdout, stderr)."""
    if main is None:
        from kd_hydra.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(args)
            code = 0
        except SystemExit as done:
            if done.code is None or isinstance(done.code, int):
                code = done.code or 0
            else:  # sys.exit("message"), as the interpreter would
                print(done.code, file=sys.stderr)
                code = 1
        except Exception:  # an uncaught error: the interpreter prints the traceback and exits 1
            traceback.print_exc()
            code = 1
    return code, stdout.getvalue(), stderr.getvalue()


class Workspace:
    """A temporary directory with its own output, cache and data roots, and a way to run kd-hydra in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "KD_HYDRA_OUTPUT_DIR": str(root / "outputs"),
            "KD_HYDRA_CACHE_DIR": str(root / "cache"),
            "KD_HYDRA_DATA_DIR": str(root / "data"),
            "HYDRA_FULL_ERROR": "0",
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
        }

    def run(self, *args: str, expect: int | None = 0, timeout: int = 300,
            subprocess: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
        """The command line ``run.py ARGS``: in this process, or in a new one with ``subprocess=True``."""
        if subprocess:
            process = run_subprocess([sys.executable, str(REPO / "run.py"), *args], cwd=self.root, env=self.env,
                                     capture_output=True, text=True, timeout=timeout)  # fmt: skip
        else:
            with isolated_process_state(self.env, self.root):
                code, stdout, stderr = call_main(list(args))
            process = CompletedProcess(["run.py", *args], code, stdout, stderr)
        if expect is not None and process.returncode != expect:
            raise AssertionError(
                f"run.py {' '.join(args)} exited {process.returncode}, expected {expect}\n"
                f"--- stdout\n{process.stdout[-4000:]}\n--- stderr\n{process.stderr[-4000:]}"
            )
        return process

    def single(self, name: str, *args: str, expect: int | None = 0,
               subprocess: bool = False) -> tuple[Path, CompletedProcess]:  # fmt: skip
        run_dir = self.root / "runs" / name
        return run_dir, self.run(*args, f"hydra.run.dir={run_dir}", expect=expect, subprocess=subprocess)

    def sweep(self, name: str, *args: str, expect: int | None = 0,
              subprocess: bool = False) -> tuple[Path, CompletedProcess]:  # fmt: skip
        sweep_dir = self.root / "sweeps" / name
        return sweep_dir, self.run("-m", *args, f"hydra.sweep.dir={sweep_dir}", expect=expect, subprocess=subprocess)

    def copy_from(self, other: Workspace, *names: str) -> None:
        """Copy ``names`` (e.g. ``cache``, ``runs/teacher``) from another workspace, to start where it ended."""
        for name in names:
            shutil.copytree(other.root / name, self.root / name, dirs_exist_ok=True)


run_subprocess = subprocess.run
CompletedProcess = subprocess.CompletedProcess


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json record, read by the one reader (which checks every value's type)."""
    from kd_hydra.records import run_directory

    record, problem = run_directory.read_metrics(run_dir)
    assert record is not None, f"{run_dir}: {problem}"
    return record


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture(scope="session")
def teacher_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace after ``run.py TINY mode=teacher`` (dir ``runs/teacher``): its run and its teacher store
    (``cache``) for the tests that need a trained teacher. Read only: copy ``cache`` to change it."""
    workspace = Workspace(tmp_path_factory.mktemp("teacher"))
    workspace.single("teacher", *TINY, "mode=teacher")
    return workspace


@pytest.fixture(autouse=True)
def _headless_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")


def one_line_error(process) -> str:
    """The single ``error: ...`` line a refused command printed on stderr."""
    lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def write_npz(path, **overrides):
    """A tiny arrays dataset (32 train, 16 test, 8x8 RGB, 4 classes); ``None`` leaves a key out."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 4, 32),
        "x_test": rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 4, 16),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path
