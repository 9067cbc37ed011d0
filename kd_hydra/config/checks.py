"""The one validator every run goes through: values out of range and combinations that do not fit.

:func:`validate` runs before any data is read, on every job of a sweep before any starts.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from omegaconf import DictConfig

from kd_hydra.data.config import check_dataset
from kd_hydra.enums import Mode
from kd_hydra.errors import ConfigError


def _validate_method(loss: Any, mode: Mode) -> None:
    """``loss._target_`` names a method class; in a distill run, one with a teacher and valid ``loss.*`` values."""
    from kd_hydra.methods import method_class, validate_method_config  # imports torch

    method = method_class(loss)
    if mode is Mode.distill:
        _require(
            method.uses_teacher,
            "loss",
            f"mode=distill needs a distillation method (got loss={loss.get('name')}); "
            "for a labels-only baseline use mode=student",
        )
        validate_method_config(loss)


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def _check_checkpoints(cfg: DictConfig, mode: Mode) -> None:
    """mode=eval evaluates one of ``teacher.checkpoint``, ``student.checkpoint``; only mode=eval reads the student's.
    A file that a distill or eval run reads must exist."""
    teacher, student = cfg.teacher.get("checkpoint"), cfg.student.get("checkpoint")
    if mode is Mode.eval:
        _require(
            (teacher is None) != (student is None),
            "student.checkpoint" if student is not None else "teacher.checkpoint",
            "mode=eval evaluates one checkpoint: give student.checkpoint=<a model.pt> (with student=<its arch>) or "
            "teacher.checkpoint=<a model.pt or published checkpoint> (with teacher=<its arch>), not both",
        )
    else:
        _require(student is None, "student.checkpoint", f"only mode=eval reads it (mode is {mode.value})")
    if mode in (Mode.distill, Mode.eval):
        for key, path in (("teacher.checkpoint", teacher), ("student.checkpoint", student)):
            _require(path is None or os.path.isfile(path), key, f"no such file: {path}")


def _check_devices(cfg: DictConfig, mode: Mode) -> None:
    """``trainer.devices`` and what goes with it: every worker gets a share of every batch; SyncBatchNorm is CUDA's."""
    trainer = cfg.trainer
    devices = trainer.devices
    _require(devices >= 1, "trainer.devices", f"must be >= 1 (got {devices})")
    _require(trainer.max_restarts >= 0, "trainer.max_restarts", f"must be >= 0 (got {trainer.max_restarts})")
    if devices == 1:
        return
    _require(
        not trainer.sync_batchnorm or trainer.device.startswith("cuda") or trainer.device == "auto",
        "trainer.sync_batchnorm",
        f"needs CUDA devices (trainer.device is {trainer.device}); use false: each worker's BatchNorm statistics",
    )
    _require(mode is not Mode.eval, "trainer.devices", "must be 1 for mode=eval (one pass over the test split)")
    batches = [("trainer.batch_size", trainer.batch_size)]
    if mode in (Mode.distill, Mode.teacher):
        batches.append(("teacher_training.batch_size", cfg.teacher_training.batch_size))
    for key, size in batches:
        _require(size >= devices, key, f"is {size}: every one of trainer.devices={devices} workers needs a sample")


def validate(cfg: DictConfig) -> None:
    """Check values and combinations of a composed config; raise :class:`ConfigError` on the first bad one.

    Only cheap checks that need no data: safe to run on every job of a sweep before any starts.
    """
    from kd_hydra.config.optimization import check_optimization
    from kd_hydra.data.load import check_required

    check_required(cfg.dataset, "dataset")
    check_dataset(cfg.dataset)
    mode = Mode(cfg.mode)
    _validate_method(cfg.loss, mode)

    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every"):
        value = trainer[key]
        _require(value >= 1, f"trainer.{key}", f"must be >= 1 (got {value})")
    _require(trainer.save_every >= 0, "trainer.save_every", f"must be >= 0, 0: off (got {trainer.save_every})")
    _check_checkpoints(cfg, mode)
    _require(
        bool(_DEVICE_PATTERN.match(trainer.device)),
        "trainer.device",
        f"must be auto, cpu, cuda, cuda:N or mps (got '{trainer.device}')",
    )
    _require(
        trainer.num_threads is None or trainer.num_threads >= 1,
        "trainer.num_threads",
        f"must be >= 1 or null (got {trainer.num_threads})",
    )
    _require(
        trainer.num_workers is None or trainer.num_workers >= 0,
        "trainer.num_workers",
        f"must be >= 0 or null (got {trainer.num_workers})",
    )
    _check_devices(cfg, mode)

    check_optimization(cfg.optimizer, cfg.scheduler, "", trainer.epochs)
    if mode in (Mode.distill, Mode.teacher):
        tt = cfg.teacher_training
        for key in ("epochs", "batch_size"):
            _require(tt[key] >= 1, f"teacher_training.{key}", f"must be >= 1 (got {tt[key]})")
        check_optimization(tt.optimizer, tt.scheduler, "teacher_training.", tt.epochs)

    from kd_hydra.trackers.fanout import check_loggers

    check_loggers(cfg.get("logger"))

    cache = cfg.soft_label_cache
    _require(
        cache.top_k is None or cache.top_k >= 1, "soft_label_cache.top_k", f"must be >= 1 or null (got {cache.top_k})"
    )
    _require(
        math.isfinite(cache.max_gb) and cache.max_gb > 0,
        "soft_label_cache.max_gb",
        f"must be a finite number > 0 (got {cache.max_gb})",
    )
    _require(
        cache.batch_size is None or cache.batch_size >= 1,
        "soft_label_cache.batch_size",
        f"must be >= 1 or null (got {cache.batch_size})",
    )
    _require(
        cache.crops_per_image is None or cache.crops_per_image >= 1,
        "soft_label_cache.crops_per_image",
        f"must be a positive integer (K crops per image) or null (got {cache.crops_per_image})",
    )
    _require(cache.pool_seed >= 0, "soft_label_cache.pool_seed", f"must be >= 0 (got {cache.pool_seed})")
