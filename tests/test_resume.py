"""Epoch checkpoints: an interrupted run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import csv
import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import REPO, TINY, Workspace, read_metrics
from kd_hydra.data import build_pipeline, load_synthetic
from kd_hydra.errors import CheckpointError, ConfigError
from kd_hydra.methods import LossOutput, MethodBatch
from kd_hydra.methods.ce import CrossEntropy
from kd_hydra.methods.kd import KD
from kd_hydra.models import build_model
from kd_hydra.records import schema
from kd_hydra.records.files import HistoryLog
from kd_hydra.stores.cache_entry import SEAL_FILE
from kd_hydra.stores.teacher_outputs import LiveTeacher
from kd_hydra.train.batches import BatchAssembler
from kd_hydra.train.runtime import resolve_runtime
from kd_hydra.train.schedules import cosine_schedule
from kd_hydra.train.stages import initialization_stage, training_stage
from kd_hydra.train.trainer import Checkpointing, DivergedError, Trainer
from tests.method_helpers import set_up_like_the_trainer

EPOCHS = 4
RUNTIME = resolve_runtime("cpu", "fp32", False, False)


class Interrupt(Exception):
    """Stands in for a kill right after an epoch's checkpoint."""


class DropoutKD(KD):
    """KD with a trainable part that draws from the global RNG, so resume must restore RNG and method state."""

    def setup(self, student_shapes, teacher_shapes, train_targets, num_classes) -> None:
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.dropout = nn.Dropout(0.3)

    def forward(self, batch: MethodBatch) -> LossOutput:
        scaled = batch.student_logits * self.dropout(self.scale)
        return super().forward(MethodBatch(scaled, batch.targets, batch.sample_indices, batch.teacher_logits))


def train_run(tmp: Path, interrupt_after: int | None = None, settings: dict | None = None):
    torch.manual_seed(0)
    data = load_synthetic(num_train=96, num_test=32, image_size=8)
    pipeline = build_pipeline(data, {"augment": {"crop_padding": 1}}, batch_size=32, device="cpu", seed=0)
    teacher = build_model("light_cnn", 10, 3, 8).eval()
    student = build_model("light_cnn", 10, 3, 8)
    method = DropoutKD(temperature=2.0, alpha=0.5, ce_weight=None, kd_weight=None, standardize=False)
    method.setup({}, {}, data.y_train, 10)
    stage = training_stage("student", EPOCHS, student, method, sgd, cosine_schedule, "optimizer.lr")
    history = HistoryLog(tmp / schema.HISTORY_FILE, schema.history_columns(method.parts))
    checkpointing = Checkpointing(tmp / schema.TRAIN_STATE_FILE, {"settings": settings or {"run": 1}})

    def stop(row):
        if interrupt_after is not None and row["epoch"] == interrupt_after:
            # the checkpoint of this epoch is written after the hook: write it, then "die"
            raise Interrupt

    try:
        trainer = Trainer(RUNTIME, seed=1, checkpointing=checkpointing, on_epoch=stop)
        batches = BatchAssembler(student, RUNTIME, LiveTeacher(teacher, RUNTIME))
        result = trainer.fit(method, pipeline, batches, [stage], history)
    except Interrupt:
        return None
    return result, student, method


def sgd(groups):
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


def test_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    full, student, method = train_run(tmp_path / "full")
    interrupted = tmp_path / "resumed"
    # interrupt during epoch 3 (after epoch 2's checkpoint): emulate by keeping the epoch-2 checkpoint
    assert train_run(interrupted, interrupt_after=3) is None
    state = torch.load(interrupted / schema.TRAIN_STATE_FILE, weights_only=True)
    assert state["epoch"] == 2, "epoch 3 was interrupted before its checkpoint"
    resumed, resumed_student, resumed_method = train_run(interrupted)
    assert resumed.resumed_from_epoch == 2
    for key, value in student.state_dict().items():
        assert torch.equal(value, resumed_student.state_dict()[key]), key
    assert torch.equal(method.scale, resumed_method.scale)
    assert not torch.equal(method.scale, torch.ones_like(method.scale)), "the method's part was trained"
    assert resumed.final_test_acc == full.final_test_acc
    with open(interrupted / schema.HISTORY_FILE) as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4]


def test_checkpoint_of_other_settings_is_refused_naming_the_keys(tmp_path):
    assert train_run(tmp_path, interrupt_after=2, settings={"loss.temperature": 2.0, "trainer.seed": 0}) is None
    with pytest.raises(ConfigError) as error:
        train_run(tmp_path, settings={"loss.temperature": 4.0, "trainer.seed": 0})
    message = str(error.value)
    assert message.startswith("trainer.resume: ") and "loss.temperature: 2.0 -> 4.0" in message
    assert "trainer.seed" not in message and "\n" not in message


def staged_run(tmp: Path, interrupt_after: int | None = None) -> tuple[int, nn.Module | None]:
    """AB with its initialization stage, then the distillation stage: (batches the init stage ran, the student)."""
    torch.manual_seed(0)
    data = load_synthetic(num_train=64, num_test=32, image_size=8)
    pipeline = build_pipeline(data, {}, batch_size=32, device="cpu", seed=0)
    teacher, student = build_model("resnet8", 10, 3, 8).eval(), build_model("resnet8", 10, 3, 8)
    method, request = set_up_like_the_trainer("ab", student, teacher, (3, 8, 8), data.y_train, 10, init_epochs=1)
    init = initialization_stage(method, student, sgd)
    init_batches = []

    def counted(batch):
        init_batches.append(len(batch.targets))
        return init.loss(batch)

    stages = [
        dataclasses.replace(init, loss=counted),
        training_stage("s", 3, student, method, sgd, cosine_schedule, "lr"),
    ]
    checkpointing = Checkpointing(tmp / schema.TRAIN_STATE_FILE, {"settings": {"run": 1}})

    def stop(row):
        if row["epoch"] == interrupt_after:
            raise Interrupt

    batches = BatchAssembler(student, RUNTIME, LiveTeacher(teacher, RUNTIME, request.teacher), request.student)
    try:
        Trainer(RUNTIME, seed=1, checkpointing=checkpointing, on_epoch=stop).fit(
            method, pipeline, batches, stages, HistoryLog(None, schema.history_columns(method.parts))
        )
    except Interrupt:
        return len(init_batches), None
    return len(init_batches), student


def test_a_resumed_fit_does_not_rerun_a_finished_initialization_stage(tmp_path):
    init_batches, full = staged_run(tmp_path / "full")
    assert init_batches == 2
    assert staged_run(tmp_path / "resumed", interrupt_after=3) == (2, None)
    assert torch.load(tmp_path / "resumed" / schema.TRAIN_STATE_FILE, weights_only=True)["stage"] == 1
    init_batches, resumed = staged_run(tmp_path / "resumed")
    assert init_batches == 0, "the initialization stage ran again"
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_a_training_state_of_the_format_before_stages_is_refused_in_one_line(tmp_path):
    assert train_run(tmp_path, interrupt_after=2) is None
    state = torch.load(tmp_path / schema.TRAIN_STATE_FILE, weights_only=True)
    torch.save({**state, "format": "kd-hydra/train-state-v1"}, tmp_path / schema.TRAIN_STATE_FILE)
    with pytest.raises(CheckpointError) as error:
        train_run(tmp_path)
    message = str(error.value)
    assert "kd-hydra/train-state-v1" in message and "trainer.resume=never" in message and "\n" not in message


class Diverging(CrossEntropy):
    def forward(self, batch: MethodBatch) -> LossOutput:
        out = super().forward(batch)
        return LossOutput(out.total * float("nan"), out.parts)


def test_a_nan_loss_ends_the_fit_naming_the_learning_rate(tmp_path):
    data = load_synthetic(num_train=64, num_test=16, image_size=8)
    pipeline = build_pipeline(data, {}, batch_size=32, device="cpu", seed=0)
    student, method = build_model("light_cnn", 10, 3, 8), Diverging()
    stage = training_stage("x", 2, student, method, sgd, cosine_schedule, "teacher_training.optimizer.lr")
    with pytest.raises(DivergedError, match=r"^teacher_training\.optimizer\.lr: the x training loss became nan"):
        Trainer(RUNTIME, seed=0).fit(method, pipeline, BatchAssembler(student, RUNTIME), [stage], HistoryLog(None))


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / schema.HISTORY_FILE) as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_distill_run_killed_after_epoch_4_of_8_resumes_to_the_uninterrupted_result(
    workspace: Workspace, teacher_workspace: Workspace
):
    workspace.copy_from(teacher_workspace, "cache")  # the stored 2-epoch TINY teacher
    args = [*TINY, "trainer.epochs=8", "teacher_training.epochs=2", "soft_label_cache.enabled=false"]
    full, _ = workspace.single("full", *args)
    killed = workspace.root / "runs" / "killed"  # a real process, to be killed
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args, f"hydra.run.dir={killed}"],
        cwd=workspace.root,
        env=workspace.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        state = killed / schema.TRAIN_STATE_FILE
        if state.is_file() and torch.load(state, weights_only=True)["epoch"] >= 4:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / schema.METRICS_FILE).exists()
    _, rerun = workspace.single("killed", *args)
    assert "resuming from" in rerun.stdout + rerun.stderr or "resuming from" in (killed / "run.log").read_text()
    assert history_epochs(killed) == list(range(1, 9))
    resumed, uninterrupted = read_metrics(killed), read_metrics(full)
    assert resumed["resumed_from_epoch"] >= 4
    assert resumed["final_test_acc"] == uninterrupted["final_test_acc"]
    full_weights = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    resumed_weights = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert not (killed / schema.TRAIN_STATE_FILE).exists(), "a completed run keeps no training state"


def test_teacher_training_killed_in_the_store_resumes_there(workspace: Workspace):
    """A teacher killed after epoch 2 of 5 continues inside the store entry and is stored once, complete."""
    args = [*TINY, "mode=teacher", "teacher_training.epochs=5"]
    full, _ = workspace.single("full-teacher", *args, "paths.cache_dir=" + str(workspace.root / "other-cache"))
    killed_dir = workspace.root / "runs" / "teacher"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args, f"hydra.run.dir={killed_dir}"],
        cwd=workspace.root,
        env=workspace.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = workspace.root / "cache" / "teachers"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        states = list(store.glob(f"*/{schema.TRAIN_STATE_FILE}")) if store.is_dir() else []
        if states and torch.load(states[0], weights_only=True)["epoch"] >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the teacher finished before it could be killed"
    (entry,) = [p for p in store.iterdir() if p.is_dir()]
    assert not (entry / SEAL_FILE).exists(), "an interrupted training is not sealed"
    _, rerun = workspace.single("teacher", *args)
    assert "teacher training was interrupted: continuing" in (killed_dir / "run.log").read_text()
    assert history_epochs(entry) == [1, 2, 3, 4, 5]
    assert not (entry / schema.TRAIN_STATE_FILE).exists(), "the stored teacher keeps no training state"
    assert read_metrics(killed_dir)["final_test_acc"] == read_metrics(full)["final_test_acc"]
