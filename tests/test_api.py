"""``kd_hydra.run_experiment``: one job from Python, its run directory, and no global state left behind."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import kd_hydra
from conftest import TINY
from kd_hydra.config.objective import objective
from kd_hydra.errors import ConfigError
from kd_hydra.records import schema


def test_import_is_cheap():
    code = "import sys, kd_hydra; kd_hydra.run_experiment; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_experiment_returns_the_metrics_and_writes_a_run_dir(tmp_path: Path):
    run_dir = tmp_path / "run"
    handlers = list(logging.getLogger().handlers)
    metrics = kd_hydra.run_experiment(
        [*TINY, "mode=student", f"paths.cache_dir={tmp_path / 'cache'}"], output_dir=run_dir
    )
    assert metrics == json.loads((run_dir / schema.METRICS_FILE).read_text())
    assert metrics["status"] == "completed" and metrics["mode"] == "student" and metrics["epochs"] == 2
    assert 0 <= metrics["final_test_acc"] <= 100
    hydra_dir = run_dir / schema.HYDRA_DIR
    assert OmegaConf.load(hydra_dir / schema.OVERRIDES_FILE)[-1] == f"paths.cache_dir={tmp_path / 'cache'}"
    assert OmegaConf.load(hydra_dir / schema.CONFIG_FILE).trainer.epochs == 2
    assert OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.output_dir == str(run_dir)
    assert "student epoch 2/2" in (run_dir / "run.log").read_text()
    assert not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()
    assert logging.getLogger().handlers == handlers


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["teacher=nope"], "teacher"),
        (["trainer.foo=1"], "trainer.foo"),
        (["loss.temperature=1,2"], "loss.temperature"),
    ],
)
def test_bad_overrides_raise_config_error(overrides, key, tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        kd_hydra.run_experiment(overrides, output_dir=tmp_path / "never")
    assert caught.value.key == key and "\n" not in str(caught.value)
    assert not (tmp_path / "never").exists()
    assert not GlobalHydra.instance().is_initialized()


def test_a_bad_value_raises_from_the_job_and_leaves_a_failed_run(tmp_path: Path):
    with pytest.raises(ConfigError, match="loss.temperature"):
        kd_hydra.run_experiment([*TINY, "loss.temperature=-1"], output_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / schema.METRICS_FILE).read_text())["status"] == "failed"
    assert not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()


def test_objective_maps_optimized_metric_to_metrics_keys(caplog: pytest.LogCaptureFixture):
    metrics = {"final_val_acc": 81.5, "final_test_acc": 80.0, "best_val_acc": None, "best_test_acc": 82.0}
    assert objective(metrics, "val_acc") == 81.5
    assert objective(metrics, "test_acc") == 80.0
    with caplog.at_level(logging.WARNING):
        assert objective(metrics, "best_val_acc") == 82.0  # no validation split: the test split, with a warning
    assert "best_test_acc" in caplog.text
    assert math.isnan(objective({"final_test_acc": None, "final_val_acc": None}, "val_acc"))
    with pytest.raises(ConfigError, match="optimized_metric"):
        objective(metrics, "accuracy")
