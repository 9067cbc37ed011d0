"""Shared fixtures: run ``run.py`` as a user would, in a temporary workspace, on generated data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    "trainer.num_threads=1",
    "trainer.device=cpu",
    "optimizer=adamw",
]


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

    def run(self, *args: str, expect: int | None = 0, timeout: int = 300) -> subprocess.CompletedProcess:
        process = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=self.root, env=self.env,
                                 capture_output=True, text=True, timeout=timeout)
        if expect is not None and process.returncode != expect:
            raise AssertionError(f"run.py {' '.join(args)} exited {process.returncode}, expected {expect}\n"
                                 f"--- stdout\n{process.stdout[-4000:]}\n--- stderr\n{process.stderr[-4000:]}")
        return process

    def single(self, name: str, *args: str, expect: int | None = 0) -> tuple[Path, subprocess.CompletedProcess]:
        run_dir = self.root / "runs" / name
        return run_dir, self.run(*args, f"hydra.run.dir={run_dir}", expect=expect)

    def sweep(self, name: str, *args: str, expect: int | None = 0) -> tuple[Path, subprocess.CompletedProcess]:
        sweep_dir = self.root / "sweeps" / name
        return sweep_dir, self.run("-m", *args, f"hydra.sweep.dir={sweep_dir}", expect=expect)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture(autouse=True)
def _headless_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
