"""The teacher store: train once, resume an interrupted training, survive dead lock holders and bad entries."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock, Timeout
from torch import nn

from conftest import TINY, Workspace, read_metrics
from kd_hydra.errors import CheckpointError, ConfigError
from kd_hydra.models.checkpoints import ArchSignature
from kd_hydra.records.schema import TRAIN_STATE_FILE
from kd_hydra.stores.cache_entry import SEAL_FILE as META_FILE
from kd_hydra.stores.cache_entry import CacheEntry
from kd_hydra.stores.teachers import TeacherStore

ARCH = ArchSignature(name="tiny", source="zoo", num_classes=3, in_channels=2, image_size=1)
DESCRIPTION = {"arch": "tiny", "seed": 0}
LABEL = "tiny-test"
ACCURACY = 87.5


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(2, 3)


class Trainer:
    """A fake teacher training: sets known weights, records calls and whether it found a checkpoint."""

    def __init__(self, accuracy: float = ACCURACY, value: float = 0.25) -> None:
        self.accuracy, self.value, self.calls, self.resumed = accuracy, value, 0, []

    def __call__(self, model: nn.Module, entry: Path) -> dict:
        self.calls += 1
        self.resumed.append((entry / TRAIN_STATE_FILE).is_file())
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(self.value)
        return {"final_test_acc": self.accuracy}


def test_trains_once_then_reads_the_store(tmp_path: Path):
    store, train = TeacherStore(tmp_path), Trainer()
    first = store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, train)
    model = tiny_model(seed=1)
    second = store.get_or_train(DESCRIPTION, LABEL, model, ARCH, train)
    assert (first.source, second.source, train.calls) == ("trained", "store", 1)
    assert second.test_acc == ACCURACY and torch.all(model.weight == 0.25)
    assert not (first.weights_path.parent / TRAIN_STATE_FILE).exists()


def test_interrupted_training_continues_from_its_checkpoint(tmp_path: Path):
    store = TeacherStore(tmp_path)
    entry = store.entry(DESCRIPTION, LABEL).path

    def killed(model: nn.Module, entry_dir: Path) -> dict:
        (entry_dir / TRAIN_STATE_FILE).write_bytes(b"epoch 3 state")
        raise KeyboardInterrupt  # the process dies mid-training

    with pytest.raises(KeyboardInterrupt):
        store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, killed)
    assert (entry / TRAIN_STATE_FILE).read_bytes() == b"epoch 3 state" and not (entry / META_FILE).exists()
    train = Trainer()
    stored = store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, train)
    assert train.resumed == [True], "the checkpoint was kept for the training function"
    assert stored.source == "trained" and (entry / META_FILE).is_file()
    assert not (entry / TRAIN_STATE_FILE).exists(), "the training state is removed once the teacher is stored"


def test_entry_without_checkpoint_or_meta_starts_fresh(tmp_path: Path):
    store = TeacherStore(tmp_path)
    entry = store.entry(DESCRIPTION, LABEL).path
    entry.mkdir(parents=True)
    (entry / "history.csv").write_text("partial")
    train = Trainer()
    store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, train)
    assert train.resumed == [False] and not (entry / "history.csv").exists()


@pytest.mark.parametrize(
    "meta",
    [
        "[1, 2]",
        '"text"',
        '{"result": {"final_test_acc": 90}}',
        '{"files": {"model.pt": "x"}}',
        '{"files": {"model.pt": "x"}, "result": {}}',
        "{not json",
    ],
)
def test_corrupt_meta_is_retrained(tmp_path: Path, meta: str):
    store, train = TeacherStore(tmp_path), Trainer()
    first = store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, train)
    meta_path = first.weights_path.parent / META_FILE
    if '"model.pt": "x"' in meta:  # keep the right hash so that only the missing field is wrong
        meta = meta.replace('"x"', json.dumps(json.loads(meta_path.read_text())["files"]["model.pt"]))
    meta_path.write_text(meta)
    model = tiny_model(seed=3)
    stored = store.get_or_train(DESCRIPTION, LABEL, model, ARCH, Trainer(value=0.5))
    assert stored.source == "trained" and torch.all(model.weight == 0.5)
    assert json.loads(meta_path.read_text())["result"]["final_test_acc"] == ACCURACY


def test_failed_lookup_leaves_the_model_untouched(tmp_path: Path):
    store = TeacherStore(tmp_path)
    first = store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer())
    first.weights_path.write_bytes(first.weights_path.read_bytes()[:-8])  # truncated weights: hash mismatch
    model = tiny_model(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert store._load(CacheEntry(first.weights_path.parent), model, ARCH, "id") is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class NoLock:
    """Stands in for FileLock where the lock file cannot be created (a read-only store)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.lock_file = str(args[0])

    def acquire(self) -> None:
        raise PermissionError(13, "Permission denied")


def test_read_only_store_serves_verified_entries_without_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "teachers"
    TeacherStore(root).get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer())
    monkeypatch.setattr("kd_hydra.stores.cache_entry.FileLock", NoLock)
    model = tiny_model(seed=5)
    stored = TeacherStore(root).get_or_train(DESCRIPTION, LABEL, model, ARCH, Trainer())
    assert stored.source == "store" and torch.all(model.weight == 0.25)

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "touch", denied)
    with pytest.raises(ConfigError, match=r"^paths\.cache_dir: .*cannot be written \(Permission denied\)"):
        TeacherStore(root).get_or_train({"other": 1}, LABEL, tiny_model(), ARCH, Trainer())


def test_read_only_permissions(tmp_path: Path):
    root = tmp_path / "teachers"
    TeacherStore(root).get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer())
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): see the monkeypatched test above")
        model = tiny_model(seed=5)
        stored = TeacherStore(root).get_or_train(DESCRIPTION, LABEL, model, ARCH, Trainer())
        assert stored.source == "store" and torch.all(model.weight == 0.25)
        with pytest.raises(ConfigError, match=r"^paths\.cache_dir: .*cannot be written"):
            TeacherStore(root).get_or_train({"other": 1}, LABEL, tiny_model(), ARCH, Trainer())
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_unwritable_cache_dir_is_one_line_naming_the_key(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as caught:
        TeacherStore(blocker / "teachers").get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer())
    assert str(caught.value).startswith("paths.cache_dir: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("accuracy,value", [(float("nan"), 0.25), (ACCURACY, float("inf")), (float("inf"), 0.1)])
def test_non_finite_teacher_is_never_stored(tmp_path: Path, accuracy: float, value: float):
    store = TeacherStore(tmp_path)
    with pytest.raises(ConfigError, match=r"^teacher_training\.optimizer\.lr: .*diverged"):
        store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer(accuracy=accuracy, value=value))
    entry = store.entry(DESCRIPTION, LABEL).path
    assert not entry.exists(), "neither weights nor training state of a diverged teacher are kept"
    train = Trainer()
    assert store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, train).source == "trained"
    assert train.resumed == [False] and math.isfinite(train.accuracy)


HOLD_LOCK = """
import sys, time
from filelock import FileLock, Timeout
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def hold_lock(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path):
    store = TeacherStore(tmp_path, lock_timeout_s=10)
    lock_path = Path(str(store.entry(DESCRIPTION, LABEL).path) + ".lock")
    holder = hold_lock(lock_path)
    with pytest.raises(Timeout):  # held by a live process
        FileLock(str(lock_path), timeout=0.2).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    started = time.monotonic()
    stored = store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer())
    assert stored.source == "trained" and time.monotonic() - started < 5
    assert lock_path.exists(), "the lock file stays; the dead holder's flock is gone with it"


def test_lock_timeout_is_a_one_line_error(tmp_path: Path):
    store = TeacherStore(tmp_path, lock_timeout_s=0.3)
    holder = hold_lock(Path(str(store.entry(DESCRIPTION, LABEL).path) + ".lock"))
    try:
        with pytest.raises(CheckpointError) as caught:
            store.get_or_train(DESCRIPTION, LABEL, tiny_model(), ARCH, Trainer())
        assert "another job has been training this teacher" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_corrupt_store_entry_is_detected_and_retrained(workspace: Workspace, teacher_workspace: Workspace):
    workspace.copy_from(teacher_workspace, "cache")  # as left by a first mode=teacher run
    (model_file,) = (workspace.root / "cache" / "teachers").glob("*/model.pt")
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    run_dir, process = workspace.single("second", *TINY, "mode=teacher")
    assert read_metrics(run_dir)["teacher_source"] == "trained"
    assert "corrupt" in (run_dir / "run.log").read_text()
