"""``hparams_search=kd_optuna``: a few Optuna trials on tiny data; a failed trial does not stop the study."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import TINY, Workspace

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install '.[optuna]'")


def test_optuna_study_with_a_failing_trial(workspace: Workspace):
    # alpha=7 is out of range: that trial fails (it reports -inf to Optuna), the others complete
    sweep_dir, process = workspace.sweep(
        "optuna",
        *TINY,
        "hparams_search=kd_optuna",
        "hydra.sweeper.n_trials=4",
        "trainer.epochs=1",
        "loss.alpha=choice(0.5,7.0)",
        "hydra.sweeper.sampler.seed=3",
        expect=1,
    )
    jobs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    metrics = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert len(jobs) == 4
    statuses = [m["status"] for m in metrics]
    assert "failed" in statuses and "completed" in statuses, statuses
    assert all((m["settings"]["loss.alpha"] == 7.0) == (m["status"] == "failed") for m in metrics)
    result = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    completed = [m for m in metrics if m["status"] == "completed"]
    # optimized_metric=val_acc falls back to final_test_acc without a validation split
    assert result.best_value == pytest.approx(max(m["final_test_acc"] for m in completed))
    assert result.best_params["loss.alpha"] == 0.5 and 1.0 <= result.best_params["loss.temperature"] <= 8.0
    assert (sweep_dir / "report.md").is_file(), "the analysis callback still runs"
    assert "jobs did not complete" in process.stderr
