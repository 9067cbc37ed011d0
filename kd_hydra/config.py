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
    checkpoint_every: int = 1
    resume: Resume = Resume.auto
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
    top_k: int | None = None
    max_gb: float = 20.0
    batch_size: int | None = None


@dataclass
class TeacherTrainingConfig:
    """How a distill run trains its teacher when the store has none; defaults follow the run."""

    epochs: int = II("trainer.epochs")
    batch_size: int = II("trainer.batch_size")
    seed: int = 0
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
    logger: Any = None  # {tracker name: its node} from conf/logger (kd_hydra.loggers)
    optimized_metric: str = "val_acc"  # what a sweep that optimises (Optuna) maximises; see kd_hydra.objective


def register_configs() -> None:
    """Store the schemas (``base_config`` for the root, ``loss/<method>_schema``), the ``teacher``/``student``
    options of ``conf/model`` (:mod:`kd_hydra.models.model_configs`) and the ``kd_cpu_count`` resolver."""
    from kd_hydra.methods import method_schemas  # the method registry (imports torch)
    from kd_hydra.models.model_configs import register_model_groups
    from kd_hydra.preflight import config_source

    store = ConfigStore.instance()
    store.store(name="base_config", node=RootConfig)
    register_model_groups(store, config_source())
    for name, schema in method_schemas().items():
        store.store(group="loss", name=f"{name}_schema", node=schema)
    OmegaConf.register_new_resolver("kd_cpu_count", lambda: os.cpu_count() or 1, replace=True)


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def _require_number(node: Any, key: str, prefix: str, positive: bool = False) -> None:
    """``node[key]`` is a finite number (and > 0 when ``positive``) or ConfigError naming ``prefix.key``."""
    value = node.get(key) if isinstance(node, DictConfig) else None
    if value is None and not positive:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    wanted = "a finite number > 0" if positive else "a finite number"
    _require(
        is_number and math.isfinite(value) and (not positive or value > 0),
        f"{prefix}.{key}",
        f"must be {wanted} (got {value!r})",
    )


def _validate_optimizer(node: Any, prefix: str) -> None:
    _require_number(node, "lr", prefix, positive=True)
    for key in ("weight_decay", "momentum"):
        _require_number(node, key, prefix)


def validate(cfg: DictConfig) -> None:
    """Check values and combinations of a composed config; raise :class:`ConfigError` on the first bad one.

    Only cheap checks that need no data: safe to run on every job of a sweep before any starts.
    """
    from kd_hydra.data.load import check_required
    from kd_hydra.methods import method_class

    check_required(cfg.dataset, "dataset")
    mode = Mode(cfg.mode)
    loss = cfg.loss
    method = method_class(loss.name)
    if mode is Mode.distill:
        _require(
            method.uses_teacher,
            "loss",
            f"mode=distill needs a distillation method (got loss={loss.name}); "
            "for a labels-only baseline use mode=student",
        )
        method.validate_config(loss)

    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every"):
        value = trainer[key]
        _require(value >= 1, f"trainer.{key}", f"must be >= 1 (got {value})")
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

    _validate_optimizer(cfg.optimizer, "optimizer")
    if mode is Mode.distill:
        tt = cfg.teacher_training
        for key in ("epochs", "batch_size"):
            _require(tt[key] >= 1, f"teacher_training.{key}", f"must be >= 1 (got {tt[key]})")
        _validate_optimizer(tt.optimizer, "teacher_training.optimizer")
        checkpoint = cfg.teacher.get("checkpoint")
        if checkpoint is not None:
            _require(os.path.isfile(checkpoint), "teacher.checkpoint", f"no such file: {checkpoint}")

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
