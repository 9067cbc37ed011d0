"""Structured-config schemas (Hydra ConfigStore): types and required keys, checked when Hydra composes.

The values' defaults live in the YAML files of ``conf/`` only; these dataclasses give the types.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from kd_hydra.data.config import DatasetSchema
from kd_hydra.enums import CacheDtype, Mode, Precision, Resume


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
    dataset: DatasetSchema = MISSING  # kd_hydra.data.config: the same keys for every dataset
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
    optimized_metric: str = "val_acc"  # what a sweep that optimises (Optuna) maximises; see kd_hydra.config.objective


def register_configs() -> None:
    """Store the root schema ``base_config``, the ``teacher``/``student`` options made from ``conf/model``
    (:mod:`kd_hydra.models.model_configs`) and the ``kd_cpu_count``, ``kd_env`` and ``kd_usage_groups`` resolvers.

    A method's ``loss.*`` keys have no schema here: they are checked against its class's signature in
    :func:`validate` (so no ``loss`` option exists but the YAML files, and users' classes check the same way).
    """
    from kd_hydra.config.sources import config_source
    from kd_hydra.config.usage import usage_groups
    from kd_hydra.models.model_configs import register_model_groups

    store = ConfigStore.instance()
    store.store(name="base_config", node=RootConfig)
    register_model_groups(store, config_source())
    OmegaConf.register_new_resolver("kd_cpu_count", lambda: os.cpu_count() or 1, replace=True)
    OmegaConf.register_new_resolver("kd_env", env_or_default, replace=True)
    OmegaConf.register_new_resolver("kd_usage_groups", usage_groups, replace=True)  # the --help text
