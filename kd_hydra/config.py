"""Structured-config schemas (Hydra ConfigStore) and the one validator every run goes through.

The schemas catch wrong types and unknown keys when Hydra composes the config; :func:`validate`
catches values out of range and combinations that do not fit, before any data is read.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kd_hydra.dataset_config import DatasetSchema, check_dataset
from kd_hydra.errors import ConfigError


class Mode(str, Enum):
    """What a run does: train a teacher, a labels-only student (baseline) or a distilled student, or evaluate
    ``teacher.checkpoint`` on the dataset without training (``eval``)."""

    teacher = "teacher"
    student = "student"
    distill = "distill"
    eval = "eval"


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


class Resume(str, Enum):
    """Whether a run continues from the training state in its directory (``auto``) or starts over."""

    auto = "auto"
    never = "never"


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    eval_every: int = 1
    device: str = "auto"
    precision: Precision = Precision.auto
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    num_threads: int | None = None
    num_workers: int | None = None
    save_checkpoint: bool = True
    save_best: bool = False
    save_every: int = 0
    checkpoint_every: int = 1
    resume: Resume = Resume.auto
    progress: bool = True


def env_or_default(name: str, default: str) -> str:
    """The ``kd_env`` resolver: environment variable ``name``, or ``default`` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value.strip() else default


@dataclass
class PathsConfig:
    data_dir: str = "${kd_env:KD_HYDRA_DATA_DIR,data}"
    output_dir: str = "${kd_env:KD_HYDRA_OUTPUT_DIR,outputs}"
    cache_dir: str = "${kd_env:KD_HYDRA_CACHE_DIR,cache}"


@dataclass
class SoftLabelCacheConfig:
    enabled: bool = True
    dtype: CacheDtype = CacheDtype.float16
    top_k: int | None = None
    max_gb: float = 20.0
    batch_size: int | None = None


@dataclass
class TeacherTrainingConfig:
    """The teacher's own recipe (part of its identity); optimizer and scheduler come from their groups."""

    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    precision: Precision = Precision.auto
    optimizer: Any = MISSING
    scheduler: Any = MISSING


#: ``loss.*`` keys every method takes besides its own (kd_hydra.methods.COMMON_KEYS): Hinton's term added
#: to any method, ``add_kd_weight * T^2 KL`` at ``add_kd_temperature`` (RepDistiller's -a/--kd_T); 0: off.
LOSS_COMMON_DEFAULTS = {"add_kd_weight": 0.0, "add_kd_temperature": 4.0}


@dataclass
class RootConfig:
    mode: Mode = Mode.distill
    dataset: DatasetSchema = MISSING  # kd_hydra.dataset_config: the same keys for every dataset
    teacher: Any = MISSING
    student: Any = MISSING
    loss: Any = field(default_factory=lambda: dict(LOSS_COMMON_DEFAULTS))  # the method's keys merge in
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    teacher_training: TeacherTrainingConfig = field(default_factory=TeacherTrainingConfig)
    soft_label_cache: SoftLabelCacheConfig = field(default_factory=SoftLabelCacheConfig)
    logger: Any = None  # {tracker name: its node} from conf/logger (kd_hydra.loggers)
    optimized_metric: str = "val_acc"  # what a sweep that optimises (Optuna) maximises; see kd_hydra.objective


def register_configs() -> None:
    """Store the root schema ``base_config``, the ``teacher``/``student`` options made from ``conf/model``
    (:mod:`kd_hydra.models.model_configs`) and the ``kd_cpu_count`` and ``kd_env`` resolvers.

    A method's ``loss.*`` keys have no schema here: they are checked against its class's signature in
    :func:`validate` (so no ``loss`` option exists but the YAML files, and users' classes check the same way).
    """
    from kd_hydra.models.model_configs import register_model_groups
    from kd_hydra.preflight import config_source

    store = ConfigStore.instance()
    store.store(name="base_config", node=RootConfig)
    register_model_groups(store, config_source())
    OmegaConf.register_new_resolver("kd_cpu_count", lambda: os.cpu_count() or 1, replace=True)
    OmegaConf.register_new_resolver("kd_env", env_or_default, replace=True)


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


def validate(cfg: DictConfig) -> None:
    """Check values and combinations of a composed config; raise :class:`ConfigError` on the first bad one.

    Only cheap checks that need no data: safe to run on every job of a sweep before any starts.
    """
    from kd_hydra.data.load import check_required
    from kd_hydra.optim_checks import check_optimization

    check_required(cfg.dataset, "dataset")
    check_dataset(cfg.dataset)
    mode = Mode(cfg.mode)
    _validate_method(cfg.loss, mode)

    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every"):
        value = trainer[key]
        _require(value >= 1, f"trainer.{key}", f"must be >= 1 (got {value})")
    _require(trainer.save_every >= 0, "trainer.save_every", f"must be >= 0, 0: off (got {trainer.save_every})")
    if mode is Mode.eval:
        _require(
            cfg.teacher.get("checkpoint") is not None,
            "teacher.checkpoint",
            "mode=eval evaluates a checkpoint: give teacher.checkpoint=<a model.pt or published checkpoint>",
        )
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

    check_optimization(cfg.optimizer, cfg.scheduler, "", trainer.epochs)
    if mode in (Mode.distill, Mode.eval):
        checkpoint = cfg.teacher.get("checkpoint")
        if checkpoint is not None:
            _require(os.path.isfile(checkpoint), "teacher.checkpoint", f"no such file: {checkpoint}")
    if mode in (Mode.distill, Mode.teacher):
        tt = cfg.teacher_training
        for key in ("epochs", "batch_size"):
            _require(tt[key] >= 1, f"teacher_training.{key}", f"must be >= 1 (got {tt[key]})")
        check_optimization(tt.optimizer, tt.scheduler, "teacher_training.", tt.epochs)

    from kd_hydra.loggers import check_loggers

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
