"""Structured-config schemas (Hydra ConfigStore) and the one validator every run goes through.

The schemas catch wrong types and unknown keys when Hydra composes the config; :func:`validate`
catches values out of range and combinations that do not fit, before any data is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf

from kd_hydra.errors import ConfigError


class Mode(str, Enum):
    """What a run trains: a teacher, a labels-only student (baseline) or a distilled student."""

    teacher = "teacher"
    student = "student"
    distill = "distill"


class Precision(str, Enum):
    """Numeric precision of forward passes; ``auto`` is bf16 on a GPU that has it, else fp32."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class CacheDtype(str, Enum):
    """Storage dtype of cached teacher logits."""

    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


@dataclass
class KDLossConfig:
    _target_: str = "kd_hydra.losses.KDLoss"
    name: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.9


@dataclass
class CELossConfig:
    _target_: str = "kd_hydra.losses.CELoss"
    name: str = "ce"


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    eval_every: int = 1
    device: str = "auto"
    precision: Precision = Precision.auto
    channels_last: Optional[bool] = None
    compile: bool = False
    seed: int = 0
    num_threads: Optional[int] = None
    num_workers: Optional[int] = None
    save_checkpoint: bool = True
    progress: bool = True


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:KD_HYDRA_DATA_DIR,data}"
    output_dir: str = "${oc.env:KD_HYDRA_OUTPUT_DIR,outputs}"
    cache_dir: str = "${oc.env:KD_HYDRA_CACHE_DIR,cache}"


@dataclass
class SoftLabelCacheConfig:
    enabled: bool = True
    dtype: CacheDtype = CacheDtype.float16
    top_k: Optional[int] = None
    max_gb: float = 20.0
    batch_size: int = 1024


@dataclass
class TeacherTrainingConfig:
    """How a distill run trains its teacher when the store has none; defaults follow the run."""

    epochs: int = II("trainer.epochs")
    batch_size: int = II("trainer.batch_size")
    seed: int = II("trainer.seed")
    optimizer: Any = II("optimizer")
    scheduler: Any = II("scheduler")


@dataclass
class RootConfig:
    mode: Mode = Mode.distill
    dataset: Any = MISSING
    teacher: Any = MISSING
    student: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    teacher_training: TeacherTrainingConfig = field(default_factory=TeacherTrainingConfig)
    soft_label_cache: SoftLabelCacheConfig = field(default_factory=SoftLabelCacheConfig)
    optimized_metric: str = "val_acc"  # what a sweep that optimises (Optuna) maximises; see kd_hydra.cli


def register_configs() -> None:
    """Store the schemas (``base_config`` for the root, ``loss/*_schema``) and the ``kd_cpu_count`` resolver."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=RootConfig)
    store.store(group="loss", name="kd_schema", node=KDLossConfig)
    store.store(group="loss", name="ce_schema", node=CELossConfig)
    OmegaConf.register_new_resolver("kd_cpu_count", lambda: os.cpu_count() or 1, replace=True)


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def validate(cfg: DictConfig) -> None:
    """Check values and combinations of a composed config; raise :class:`ConfigError` on the first bad one.

    Only cheap checks that need no data: safe to run on every job of a sweep before any starts.
    """
    mode = Mode(cfg.mode)
    loss = cfg.loss
    if mode is Mode.distill:
        _require(loss.name == "kd", "loss", f"mode=distill needs loss=kd (got loss={loss.name}); "
                 "for a labels-only baseline use mode=student")
    if loss.name == "kd":
        _require(loss.temperature > 0, "loss.temperature", f"must be > 0 (got {loss.temperature})")
        _require(0.0 <= loss.alpha <= 1.0, "loss.alpha", f"must be in [0, 1] (got {loss.alpha})")

    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
        value = trainer[key]
        _require(value >= 1, f"trainer.{key}", f"must be >= 1 (got {value})")
    _require(bool(_DEVICE_PATTERN.match(trainer.device)), "trainer.device",
             f"must be auto, cpu, cuda, cuda:N or mps (got '{trainer.device}')")
    _require(trainer.num_threads is None or trainer.num_threads >= 1, "trainer.num_threads",
             f"must be >= 1 or null (got {trainer.num_threads})")
    _require(trainer.num_workers is None or trainer.num_workers >= 0, "trainer.num_workers",
             f"must be >= 0 or null (got {trainer.num_workers})")

    _require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be > 0 (got {cfg.optimizer.lr})")
    if mode is Mode.distill:
        tt = cfg.teacher_training
        for key in ("epochs", "batch_size"):
            _require(tt[key] >= 1, f"teacher_training.{key}", f"must be >= 1 (got {tt[key]})")
        checkpoint = cfg.teacher.get("checkpoint")
        if checkpoint is not None:
            _require(os.path.isfile(checkpoint), "teacher.checkpoint", f"no such file: {checkpoint}")

    cache = cfg.soft_label_cache
    _require(cache.top_k is None or cache.top_k >= 1, "soft_label_cache.top_k",
             f"must be >= 1 or null (got {cache.top_k})")
    _require(cache.max_gb > 0, "soft_label_cache.max_gb", f"must be > 0 (got {cache.max_gb})")
    _require(cache.batch_size >= 1, "soft_label_cache.batch_size", f"must be >= 1 (got {cache.batch_size})")
