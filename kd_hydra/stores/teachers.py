"""Teachers: the content-addressed store (train once, keep, verify) and an external checkpoint's teacher.

A stored teacher lives in ``<cache_dir>/teachers/<arch>-<dataset>-<key>/`` where ``key`` digests its
:func:`~kd_hydra.records.identity.teacher_identity`; the entry holds ``model.pt``, ``history.csv`` and, while it
trains, ``checkpoint.pt``; its seal (written last) makes it trusted. An external ``teacher.checkpoint`` is
loaded instead, and its test accuracy is evaluated once per (checkpoint, data) and kept in
``<cache_dir>/teacher_evals/``. Both take plain arguments (no config): the run builds them from its config.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_hydra.errors import CheckpointError, ConfigError
from kd_hydra.models.checkpoints import ArchSignature, load_checkpoint, save_checkpoint
from kd_hydra.models.features import unwrap
from kd_hydra.models.published import published_comparison, published_problem
from kd_hydra.records.identity import digest
from kd_hydra.records.run_directory import MODEL_FILE
from kd_hydra.records.schema import HISTORY_FILE, TRAIN_STATE_FILE
from kd_hydra.stores.cache_entry import DEFAULT_LOCK_TIMEOUT_S, CacheEntry, entry_name, file_sha256
from kd_hydra.train.distributed import Workers
from kd_hydra.train.trainer import DivergedError

log = logging.getLogger(__name__)

#: The config key that most often makes a teacher's training diverge.
DIVERGENCE_KEY = "teacher_training.optimizer.lr"
EVAL_RECORD = "eval.json"


@dataclass(frozen=True)
class Teacher:
    """A teacher's weights, loaded: where they came from (``trained``/``store``/``checkpoint``) and its results."""

    model: nn.Module
    teacher_id: str
    sha256: str
    test_acc: float
    source: str
    weights_path: Path
    summary: Mapping[str, Any]  # the training summary of a stored teacher; {"final_test_acc"} for a checkpoint
    published: Mapping[str, Any] | None = None  # a known checkpoint's published top-1 beside its measured one

    @property
    def history_path(self) -> Path | None:
        path = self.weights_path.parent / HISTORY_FILE
        return path if self.source != "checkpoint" and path.is_file() else None


#: ``train(model, entry_dir) -> summary``: trains ``model`` in place (resuming from ``entry_dir/checkpoint.pt``).
TrainTeacher = Callable[[nn.Module, Path], Mapping[str, Any]]
#: What the leader tells the other workers while it obtains the teacher.
_TRAIN, _STORED = "train", "stored"


class TeacherStore:
    """Find a teacher by its identity, or train it exactly once (across processes) and keep it.

    Sealed entries are read without the lock (a read-only store works); training happens under the
    entry's lock, and an interrupted training continues from the entry's ``checkpoint.pt``.
    """

    def __init__(self, root: Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s

    def entry(self, identity: Mapping[str, Any], label: str) -> CacheEntry:
        return CacheEntry(self.root / entry_name(identity, label), lock_timeout_s=self.lock_timeout_s)

    def get_or_train(
        self, identity: Mapping[str, Any], label: str, model: nn.Module, arch: ArchSignature, train: TrainTeacher
    ) -> Teacher:
        """Load the stored teacher into ``model``; if there is none (or it is damaged), ``train`` and store it."""
        entry = self.entry(identity, label)
        teacher_id = digest(identity)
        stored = self._load(entry, model, arch, teacher_id, quiet=True, identity=identity)
        if stored is not None:
            return stored
        entry.writable_root()
        with entry.locked("training this teacher"):
            stored = self._load(entry, model, arch, teacher_id, identity=identity)
            if stored is not None:
                return stored
            self._prepare(entry)
            try:
                summary = dict(train(model, entry.path))
            except Exception as error:  # a diverged teacher keeps nothing; another failure keeps its checkpoint
                if isinstance(error, DivergedError) or not entry.file(TRAIN_STATE_FILE).is_file():
                    shutil.rmtree(entry.path, ignore_errors=True)
                raise
            self._require_finite(entry, model, summary)
            sha256 = save_checkpoint(entry.file(MODEL_FILE), model, arch)
            files = {MODEL_FILE: sha256}
            if entry.file(HISTORY_FILE).is_file():
                files[HISTORY_FILE] = file_sha256(entry.file(HISTORY_FILE))
            entry.seal(
                files,
                result=summary,
                arch=arch.__dict__,
                description=dict(identity),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            entry.file(TRAIN_STATE_FILE).unlink(missing_ok=True)
            log.info("teacher stored: %s (test acc %.2f%%)", entry.path, summary["final_test_acc"])
            accuracy = float(summary["final_test_acc"])
            return Teacher(model, teacher_id, sha256, accuracy, "trained", entry.file(MODEL_FILE), summary)

    def get_or_train_together(
        self,
        workers: Workers,
        identity: Mapping[str, Any],
        label: str,
        model: nn.Module,
        arch: ArchSignature,
        train: TrainTeacher,
    ) -> Teacher:
        """:meth:`get_or_train` for the data-parallel ``workers`` of one job: the leader looks in the store (and
        trains under the entry's lock); when it trains, every worker trains with it (the others keep nothing), then
        every worker loads the stored teacher."""
        if workers.leader:

            def train_together(model: nn.Module, entry_dir: Path) -> Mapping[str, Any]:
                workers.broadcast(_TRAIN)
                return train(model, entry_dir)

            teacher = self.get_or_train(identity, label, model, arch, train_together)
            workers.broadcast(_STORED)
            return teacher
        message = workers.broadcast(None)
        if message == _TRAIN:
            with tempfile.TemporaryDirectory(prefix="kd-hydra-worker-") as scratch:
                train(model, Path(scratch))
            message = workers.broadcast(None)
        entry = self.entry(identity, label)
        stored = self._load(entry, model, arch, digest(identity), quiet=True, identity=identity)
        if message != _STORED or stored is None:
            raise CheckpointError(f"{entry.path}: the leader's stored teacher cannot be read by worker {workers.rank}")
        return stored

    @staticmethod
    def _prepare(entry: CacheEntry) -> None:
        """Keep an interrupted training's checkpoint; clear a damaged or empty entry."""
        if entry.file(TRAIN_STATE_FILE).is_file() and not entry.is_sealed:
            log.info("teacher training was interrupted: continuing from %s", entry.file(TRAIN_STATE_FILE))
            return
        if entry.path.exists():
            shutil.rmtree(entry.path)
        entry.path.mkdir(parents=True)
        log.info("teacher not in store: training it once, to be stored at %s", entry.path)

    @staticmethod
    def _require_finite(entry: CacheEntry, model: nn.Module, summary: Mapping[str, Any]) -> None:
        """A teacher with non-finite weights or accuracy is never stored (and its checkpoint is dropped)."""
        accuracy = summary.get("final_test_acc")
        finite_acc = isinstance(accuracy, (int, float)) and math.isfinite(accuracy)
        finite_weights = all(
            bool(torch.isfinite(t).all()) for t in unwrap(model).state_dict().values() if t.is_floating_point()
        )
        if finite_acc and finite_weights:
            return
        shutil.rmtree(entry.path, ignore_errors=True)
        what = "weights" if not finite_weights else "test accuracy"
        raise ConfigError(
            DIVERGENCE_KEY,
            f"the teacher's training diverged (non-finite {what}); it was not stored: lower the learning rate",
        )

    @staticmethod
    def _load(
        entry: CacheEntry,
        model: nn.Module,
        arch: ArchSignature,
        teacher_id: str,
        quiet: bool = False,
        identity: Mapping[str, Any] | None = None,
    ) -> Teacher | None:
        """The stored teacher when the entry is sealed, intact and records ``identity`` (what its key digests)."""
        seal = entry.open(quiet=quiet, describes=identity)
        if seal is None:
            return None
        backup = {name: tensor.clone() for name, tensor in unwrap(model).state_dict().items()}
        try:
            summary = seal["result"]
            accuracy = float(summary["final_test_acc"])
            if not math.isfinite(accuracy):
                raise ValueError("result.final_test_acc is not finite")
            load_checkpoint(model, entry.file(MODEL_FILE), arch, key="teacher store")
        except (CheckpointError, ValueError, KeyError, TypeError) as error:
            unwrap(model).load_state_dict(backup)
            if not quiet:
                log.warning("discarding damaged teacher store entry %s (%s); it will be retrained", entry.path, error)
            return None
        log.info("teacher found in store: %s (test acc %.2f%%)", entry.path, accuracy)
        sha256 = seal["files"][MODEL_FILE]
        return Teacher(model, teacher_id, sha256, accuracy, "store", entry.file(MODEL_FILE), summary)


def load_external(model: nn.Module, path: Path, arch: ArchSignature, key: str = "teacher.checkpoint") -> str:
    """Load ``teacher.checkpoint`` (or the config ``key`` that names ``path``) into ``model``; returns the file's
    SHA-256 (the teacher's identity)."""
    load_checkpoint(model, path, arch, key)
    return file_sha256(path)


def evaluated_once(root: Path, description: Mapping[str, Any], evaluate: Callable[[], float]) -> float:
    """A test accuracy evaluated once per ``description`` (checkpoint + data) and kept in a cache entry."""
    entry = CacheEntry(root / entry_name(description, digits=24))
    seal = entry.open(quiet=True, describes=description)
    if seal is not None:
        try:
            return float(json.loads(entry.file(EVAL_RECORD).read_text())["test_acc"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    accuracy = evaluate()
    try:
        sha = entry.write(EVAL_RECORD, json.dumps({"test_acc": accuracy, **description}).encode())
        entry.seal({EVAL_RECORD: sha}, description=dict(description))
    except OSError as error:  # a read-only cache: evaluate again next time
        log.warning("could not keep the teacher's test accuracy at %s (%s)", entry.path, error)
    return accuracy


@dataclass(frozen=True)
class TeacherCheckpoint:
    """An external ``teacher.checkpoint``, loaded into the teacher (:func:`load_external`): its file, the file's
    SHA-256, the teacher's id, and what its test accuracy depends on besides the weights (``data``: the data's
    content digest and normalisation)."""

    path: Path
    sha256: str
    teacher_id: str
    data: Mapping[str, Any]
    test_size: tuple[int, int] = (0, 0)  # (test images, classes): a published accuracy is checked on ImageNet's


def checkpoint_teacher(
    model: nn.Module,
    checkpoint: TeacherCheckpoint,
    evaluations: Path | None,
    test_accuracy: Callable[[nn.Module], float],
) -> Teacher:
    """The teacher of ``checkpoint`` (already in ``model``), its test accuracy evaluated once per checkpoint and
    data by ``test_accuracy`` and kept under ``evaluations`` (``<cache_dir>/teacher_evals``; None: not evaluated,
    NaN: a data-parallel worker that records nothing)."""
    description = {"teacher_sha256": checkpoint.sha256, **checkpoint.data}
    if evaluations is None:
        accuracy = float("nan")
    else:
        accuracy = evaluated_once(evaluations, description, lambda: test_accuracy(model))
    log.info("teacher loaded from %s (test acc %.2f%%)", checkpoint.path, accuracy)
    published = published_comparison(checkpoint.sha256, accuracy, *checkpoint.test_size)
    problem = published_problem(published) if published is not None else None
    if problem is not None:
        log.warning(problem)
    summary = {"final_test_acc": accuracy}
    return Teacher(
        model, checkpoint.teacher_id, checkpoint.sha256, accuracy, "checkpoint", checkpoint.path, summary, published
    )
