"""End to end through ``run.py``: sweeps, the teacher store, determinism, and every bad input's error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, Workspace, one_line_error, read_metrics, write_npz
from kd_hydra.records import schema


def job_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())  # named by settings, not numbers


def history_rows(run_dir):
    with open(run_dir / schema.HISTORY_FILE) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> tuple[Workspace, Path, object]:
    """``run.py -m`` of a 2x2 kd grid in a fresh workspace (the teacher is trained there); read only."""
    workspace = Workspace(tmp_path_factory.mktemp("grid"))
    sweep_dir, process = workspace.sweep("grid", *TINY, "loss.temperature=1,4", "loss.alpha=0.5,0.9")
    return workspace, sweep_dir, process


def test_multirun_of_four_jobs_trains_the_teacher_once(grid_sweep):
    workspace, sweep_dir, process = grid_sweep
    jobs = job_dirs(sweep_dir)
    metrics = [read_metrics(job) for job in jobs]
    distill = [m for m in metrics if m["mode"] == "distill"]
    baselines = [m for m in metrics if m["mode"] == "student"]
    teachers = [m for m in metrics if m["mode"] == "teacher"]
    assert len(distill) == 4 and len(baselines) == 1 and len(teachers) == 1, (
        "4 distill jobs plus one matched baseline and the teacher job that runs first"
    )
    for job, record in zip(jobs, metrics):
        assert record["status"] == "completed", record
        assert set(record) == set(schema.METRICS_KEYS)
        rows = history_rows(job)
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        parts = ("ce", "kd") if record["mode"] == "distill" else ("ce",)
        assert list(rows[0]) == list(schema.history_columns(parts))
        assert 0 <= record["final_test_acc"] <= 100
    assert [m["teacher_source"] for m in teachers + distill] == ["trained"] + ["store"] * 4
    assert len({m["teacher_test_acc"] for m in distill}) == 1
    grid = {(m["settings"]["loss.temperature"], m["settings"]["loss.alpha"]) for m in distill}
    assert grid == {(1.0, 0.5), (1.0, 0.9), (4.0, 0.5), (4.0, 0.9)}
    # one teacher entry in the store, one soft-label entry (same seed) written cold once per epoch
    assert len([p for p in (workspace.root / "cache" / "teachers").iterdir() if p.is_dir()]) == 1
    assert sorted(m["soft_label_cache"] for m in distill) == ["cold", "warm", "warm", "warm"]
    assert process.stdout.count("[kd-hydra]") == 6


def test_same_seed_gives_identical_metrics_on_cpu(workspace: Workspace):
    first, _ = workspace.single("a", *TINY, "mode=student")
    second, _ = workspace.single("b", *TINY, "mode=student")
    other, _ = workspace.single("c", *TINY, "mode=student", "trainer.seed=1")
    assert history_rows(first) != [] and [
        {k: v for k, v in r.items() if k != "seconds"} for r in history_rows(first)
    ] == [{k: v for k, v in r.items() if k != "seconds"} for r in history_rows(second)]
    assert read_metrics(first)["final_test_acc"] == read_metrics(second)["final_test_acc"]
    assert history_rows(first)[0]["train_loss"] != history_rows(other)[0]["train_loss"]


def test_warm_cache_trains_the_same_student_as_cold_and_close_to_live_teacher(
    workspace: Workspace, teacher_workspace: Workspace
):
    workspace.copy_from(teacher_workspace, "cache")  # the stored teacher; no soft labels yet
    cold, _ = workspace.single("cold", *TINY)
    warm, _ = workspace.single("warm", *TINY)
    live, _ = workspace.single("live", *TINY, "soft_label_cache.enabled=false")
    assert read_metrics(cold)["soft_label_cache"] == "cold"
    assert read_metrics(warm)["soft_label_cache"] == "warm"
    assert read_metrics(live)["soft_label_cache"] == "off"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(history_rows(cold)) == strip(history_rows(warm))
    cold_loss = [float(r["train_loss"]) for r in history_rows(cold)]
    live_loss = [float(r["train_loss"]) for r in history_rows(live)]
    np.testing.assert_allclose(cold_loss, live_loss, rtol=2e-2)


def test_teacher_mode_then_distill_uses_the_stored_teacher(workspace: Workspace, teacher_workspace: Workspace):
    teacher_dir = teacher_workspace.root / "runs" / "teacher"  # run.py mode=teacher in a fresh workspace
    workspace.copy_from(teacher_workspace, "cache")
    teacher = read_metrics(teacher_dir)
    assert teacher["mode"] == "teacher" and teacher["teacher_source"] == "trained"
    assert teacher["model"] == "deep_cnn" and len(history_rows(teacher_dir)) == 2
    distill_dir, _ = workspace.single("distill", *TINY)
    distill = read_metrics(distill_dir)
    assert distill["teacher_source"] == "store"
    assert distill["teacher_test_acc"] == pytest.approx(teacher["final_test_acc"])
    again_dir, _ = workspace.single("teacher-again", *TINY, "mode=teacher")
    assert read_metrics(again_dir)["teacher_source"] == "store"


def test_external_teacher_checkpoint_is_loaded_and_checked(workspace: Workspace, teacher_workspace: Workspace):
    teacher_dir = teacher_workspace.root / "runs" / "teacher"  # read only: its model.pt is the checkpoint
    checkpoint = read_metrics(teacher_dir)["checkpoint"]
    run_dir, _ = workspace.single("from-file", *TINY, f"teacher.checkpoint={checkpoint}")
    record = read_metrics(run_dir)
    assert record["teacher_source"] == "checkpoint"
    assert record["teacher_test_acc"] == pytest.approx(read_metrics(teacher_dir)["final_test_acc"])
    _, process = workspace.single(
        "wrong-arch", *TINY, "teacher=light_cnn", f"teacher.checkpoint={checkpoint}", expect=2
    )
    assert "teacher.checkpoint" in process.stderr and "deep_cnn" in process.stderr
    garbage = workspace.root / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    _, process = workspace.single("garbage", *TINY, f"teacher.checkpoint={garbage}", expect=2)
    assert "weights_only" in process.stderr


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss.temperature=0"], "loss.temperature"),
        (["loss.temperature=-2"], "loss.temperature"),
        (["loss.alpha=1.5"], "loss.alpha"),
        (["loss.alpha=-0.1"], "loss.alpha"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.batch_size=0"], "trainer.batch_size"),
        (["student.name=no_such_net"], "student.name"),
        (["teacher.name=no_such_net"], "teacher.name"),
        (["loss=ce"], "loss"),
        (["teacher=resnet50"], "teacher"),  # torchvision ResNet-50 needs 3 channels; digits has 1
        (["dataset=cifar10", "dataset.loader.download=false"], "cifar-10-batches-py"),
        (["teacher.checkpoint=/nonexistent/teacher.pt"], "teacher.checkpoint"),
    ],
)
def test_bad_input_fails_in_one_line_before_training(workspace: Workspace, overrides, key):
    base = [o for o in TINY if not o.startswith("dataset")]
    if not any(o.startswith("dataset=") for o in overrides):
        base.append("dataset=digits")
    run_dir, process = workspace.single("bad", *base, *overrides, expect=2)
    line = one_line_error(process)
    assert key in line
    assert not (run_dir / schema.HISTORY_FILE).exists(), "no training happened"
    assert not (workspace.root / "cache" / "teachers").exists(), "no teacher was trained"
    failed = read_metrics(run_dir)
    assert failed["status"] == "failed" and key in failed["reason"] and failed["mode"] == "distill"


def test_arrays_dataset_trains_from_a_user_npz(workspace: Workspace):
    path = write_npz(workspace.root / "mine.npz")
    base = [o for o in TINY if not o.startswith("dataset")]
    run_dir, _ = workspace.single("npz", *base, "dataset=arrays", f"dataset.path={path}", "mode=student")
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["dataset"] == "arrays"


def test_sweep_directory_holds_the_analysis(grid_sweep, workspace: Workspace):
    _, sweep_dir, _ = grid_sweep
    for name in ("results.csv", "report.md", "heatmap.png"):
        assert (sweep_dir / name).is_file(), name
    results = (sweep_dir / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 6  # the teacher job, the baseline and 4 distill jobs
    _, process = workspace.sweep(
        "no-analysis", *TINY, "mode=student", "trainer.epochs=1", "hydra.callbacks.analysis.enabled=false"
    )
    assert not (workspace.root / "sweeps" / "no-analysis" / "results.csv").exists()


def test_metrics_json_is_valid_json_with_the_schema(workspace: Workspace):
    run_dir, process = workspace.single("schema", *TINY, "mode=student")
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["schema_version"] == schema.SCHEMA_VERSION
    kd_keys = {"loss.standardize", "loss.ce_weight", "loss.kd_weight", "loss.add_kd_weight", "loss.add_kd_temperature"}
    assert set(schema.SETTINGS_KEYS) | kd_keys | {"teacher_training.optimizer.lr"} <= set(record["settings"])
    assert record["settings"]["loss.temperature"] is None, "a baseline does not use the kd loss"
    assert record["settings"]["trainer.epochs"] == 2 and record["settings"]["dataset.loader.num_train"] == 256
    assert record["teacher_id"] is None and len(record["data_digest"]) > 16 and record["config_digest"]
    assert record["model_params"] > 0 and record["train_images_per_second"] > 0
    assert (run_dir / "model.pt").is_file()
    assert process.stdout.strip().splitlines()[-1].startswith("[kd-hydra] student light_cnn on synthetic")
