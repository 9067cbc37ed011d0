"""Records that cannot lie (issue 16): a run directory's record is written only by the run it describes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, Workspace
from kd_hydra import schema

STUDENT = [*TINY, "mode=student", "trainer.epochs=1"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory but its log, by relative path."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "run.log"
    }


def write_arrays(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (96, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(96) % 4,
        x_test=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(32) % 4,
    )


def test_a_refused_rerun_changes_nothing_and_names_the_key(workspace: Workspace):
    run_dir, _ = workspace.single("done", *STUDENT)
    before = snapshot(run_dir)
    _, refused = workspace.single("done", *STUDENT, "optimizer.lr=0.05", expect=2)
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trainer.resume: ") and "optimizer.lr: 0.001 -> 0.05" in last
    assert snapshot(run_dir) == before, ".hydra/, metrics.json, history.csv and model.pt are untouched"
    _, again = workspace.single("done", *STUDENT)
    assert "already completed, left alone" in again.stdout


def test_a_rejected_value_destroys_nothing(workspace: Workspace):
    run_dir, _ = workspace.single("kept", *STUDENT)
    before = snapshot(run_dir)
    workspace.single("kept", *STUDENT, "trainer.resume=never", "optimizer.lr=-1", expect=2)
    assert snapshot(run_dir) == before


def test_replaced_data_is_not_completed_nor_resumed(workspace: Workspace, monkeypatch: pytest.MonkeyPatch):
    npz = workspace.root / "mine.npz"
    write_arrays(npz, seed=0)
    args = ["dataset=arrays", f"dataset.path={npz}", "teacher=deep_cnn", "student=light_cnn", "mode=student",
            "trainer.batch_size=32", "trainer.num_threads=1", "trainer.device=cpu"]  # fmt: skip
    run_dir, _ = workspace.single("arrays", *args, "trainer.epochs=1")
    write_arrays(npz, seed=1)
    _, refused = workspace.single("arrays", *args, "trainer.epochs=1", expect=2)
    assert "the dataset's content changed" in refused.stderr

    interrupted_run(workspace, monkeypatch, "interrupted", *args, "trainer.epochs=3")
    write_arrays(npz, seed=2)
    _, refused = workspace.single("interrupted", *args, "trainer.epochs=3", expect=2)
    assert "the dataset's content changed" in refused.stderr and "resume" in refused.stderr


def test_a_diverged_run_keeps_nothing_and_the_advised_rerun_works(workspace: Workspace):
    run_dir, failed = workspace.single("nan", *STUDENT, "optimizer.lr=1e30", "trainer.epochs=2", expect=2)
    assert "lower optimizer.lr" in failed.stderr
    record = json.loads((run_dir / schema.METRICS_FILE).read_text())
    assert record["status"] == schema.STATUS_FAILED
    assert not (run_dir / schema.TRAIN_STATE_FILE).exists() and not (run_dir / "model.pt").exists()
    workspace.single("nan", *STUDENT, "optimizer.lr=1e-3", "trainer.epochs=2")
    assert json.loads((run_dir / schema.METRICS_FILE).read_text())["status"] == schema.STATUS_COMPLETED


def interrupted_run(workspace: Workspace, monkeypatch: pytest.MonkeyPatch, name: str, *args: str) -> Path:
    """A run killed after epoch 2's history row, before its checkpoint: ``checkpoint.pt`` holds epoch 1."""
    from kd_hydra.train import Snapshots

    def interrupt(self, epoch, track):
        if epoch == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Snapshots, "after_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            workspace.single(name, *args)
    run_dir = workspace.root / "runs" / name
    assert (run_dir / schema.TRAIN_STATE_FILE).is_file()
    return run_dir


@pytest.mark.parametrize("damage", ["no optimizer", "wrong shape"])
def test_an_unusable_checkpoint_is_one_line(workspace: Workspace, monkeypatch: pytest.MonkeyPatch, damage: str):
    import torch

    args = [*STUDENT, "trainer.epochs=3"]
    run_dir = interrupted_run(workspace, monkeypatch, "state", *args)
    state = torch.load(run_dir / schema.TRAIN_STATE_FILE, weights_only=True)
    if damage == "no optimizer":
        del state["optimizer"]
    else:
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(1)
    torch.save(state, run_dir / schema.TRAIN_STATE_FILE)
    _, refused = workspace.single("state", *args, expect=2)
    last = refused.stderr.strip().splitlines()[-1]
    assert "cannot resume from it" in last and "trainer.resume=never" in last
