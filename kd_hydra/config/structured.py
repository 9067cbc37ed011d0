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
    """``trainer``: the training loop of whatever a run trains (conf/trainer/default.yaml)."""

    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    eval_every: int = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    channels_last: bool | None = MISSING
    compile: bool = MISSING
    seed: int = MISSING
    num_threads: int | None = MISSING
    num_workers: int | None = MISSING
    save_checkpoint: bool = MISSING
    save_best: bool = MISSING
    save_every: int = MISSING
    checkpoint_every: int = MISSING
    resume: Resume = MISSING
    progress: bool = MISSING


def env_or_default(name: str, default: str) -> str:
    """The ``kd_env`` resolver: environment variable ``name``, or ``default`` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value.strip() else default


@dataclass
class PathsConfig:
    """``paths``: every location (conf/paths/default.yaml)."""

    data_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class SoftLabelCacheConfig:
    """``soft_label_cache`` (conf/config.yaml)."""

    enabled: bool = MISSING
    dtype: CacheDtype = MISSING
    top_k: int | None = MISSING
    max_gb: float = MISSING
    batch_size: int | None = MISSING


@dataclass
class TeacherTrainingConfig:
    """The teacher's own recipe (part of its identity; conf/config.yaml); optimizer and scheduler come from their
    groups."""

    epochs: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    precision: Precision = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING


#: ``loss.*`` keys every method takes besides its own (kd_hydra.methods.COMMON_KEYS): Hinton's term added
#: to any method, ``add_kd_weight * T^2 KL`` at ``add_kd_temperature`` (RepDistiller's -a/--kd_T); 0: off.
LOSS_COMMON_DEFAULTS = {"add_kd_weight": 0.0, "add_kd_temperature": 4.0}


@dataclass
class RootConfig:
    mode: Mode = MISSING
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
    optimized_metric: str = MISSING  # what a sweep that optimises (Optuna) maximises; see kd_hydra.config.objective


def register_configs() -> None:
    """Store the root schema ``base_config``, the ``teacher``/``student`` options made from ``conf/model``
    (:mod:`kd_hydra.models.model_configs`) and the ``kd_cpu_count`` and ``kd_env`` resolvers.

    A method's ``loss.*`` keys have no schema here: they are checked against its class's signature in
    :func:`validate` (so no ``loss`` option exists but the YAML files, and users' classes check the same way).
    """
    from kd_hydra.config.sources import config_source
    from kd_hydra.models.model_configs import register_model_groups

    store = ConfigStore.instance()
    store.store(name="base_config", node=RootConfig)
    register_model_groups(store, config_source())
    OmegaConf.register_new_resolver("kd_cpu_count", lambda: os.cpu_count() or 1, replace=True)
    OmegaConf.register_new_resolver("kd_env", env_or_default, replace=True)
