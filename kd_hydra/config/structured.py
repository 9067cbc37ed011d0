"""Structured-config schemas (Hydra ConfigStore): types and required keys, checked when Hydra composes.

The values' defaults live in the YAML files of ``conf/`` only; these dataclasses give the types.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from kd_hydra.data.config import DatasetSchema
from kd_hydra.enums import CacheDtype, Mode, Precision, Resume


def required_fields(name: str, doc: str, types: Mapping[str, Any]) -> type:
    """A structured-config dataclass whose every field (key -> type) is required (``MISSING``): its values, defaults
    included, come from the YAML of ``conf/``."""
    fields = [(key, kind, MISSING) for key, kind in types.items()]
    return make_dataclass(name, fields, namespace={"__doc__": doc, "__module__": __name__})


TrainerConfig = required_fields("TrainerConfig", "``trainer``: the training loop (conf/trainer/default.yaml).", {
    "epochs": int, "batch_size": int, "eval_batch_size": int, "eval_every": int,
    "device": str, "precision": Precision, "channels_last": bool | None, "compile": bool, "seed": int,
    "num_threads": int | None, "num_workers": int | None,
    "devices": int, "sync_batchnorm": bool, "gather_batch": bool, "max_restarts": int,
    "save_checkpoint": bool, "save_best": bool, "save_every": int, "checkpoint_every": int, "resume": Resume,
    "progress": bool,
})  # fmt: skip
PathsConfig = required_fields("PathsConfig", "``paths``: every location (conf/paths/default.yaml).", {
    "data_dir": str, "output_dir": str, "cache_dir": str,
})  # fmt: skip
SoftLabelCacheConfig = required_fields("SoftLabelCacheConfig", "``soft_label_cache`` (conf/config.yaml).", {
    "enabled": bool, "dtype": CacheDtype, "top_k": int | None, "max_gb": float, "batch_size": int | None,
    "crops_per_image": int | None, "pool_seed": int,
})  # fmt: skip
TeacherTrainingConfig = required_fields(
    "TeacherTrainingConfig",
    "``teacher_training``: the teacher's own recipe, part of its identity (conf/config.yaml); optimizer and scheduler "
    "come from their groups.",
    {"epochs": int, "batch_size": int, "seed": int, "precision": Precision, "optimizer": Any, "scheduler": Any},
)


def env_or_default(name: str, default: str) -> str:
    """The ``kd_env`` resolver: environment variable ``name``, or ``default`` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value.strip() else default


@dataclass
class RootConfig:
    mode: Mode = MISSING
    dataset: DatasetSchema = MISSING  # kd_hydra.data.config: the same keys for every dataset
    teacher: Any = MISSING
    student: Any = MISSING
    loss: Any = MISSING  # the keys every method shares (conf/config.yaml), then conf/loss/<name>.yaml
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    teacher_training: TeacherTrainingConfig = field(default_factory=TeacherTrainingConfig)
    soft_label_cache: SoftLabelCacheConfig = field(default_factory=SoftLabelCacheConfig)
    logger: Any = None  # {tracker name: its node} from conf/logger (kd_hydra.trackers)
    optimized_metric: str = MISSING  # what a sweep that optimises (Optuna) maximises; see kd_hydra.config.objective
    table: Any = None  # a published table the sweep reproduces (conf/table/; kd_hydra.sweeps.table): no job reads it


def register_configs(config_dir: str | os.PathLike | None = None) -> None:
    """Store the root schema ``base_config``, the ``teacher``/``student`` options made from ``conf/model``
    and ``<config_dir>/model`` (:mod:`kd_hydra.models.model_configs`) and the ``kd_cpu_count``, ``kd_env`` and
    ``kd_usage_groups`` resolvers. ``config_dir`` is the ``--config-dir`` of the session.

    A method's ``loss.*`` keys have no schema here: they are checked against its class's signature in
    :func:`validate` (so no ``loss`` option exists but the YAML files, and users' classes check the same way).
    """
    from kd_hydra.config.sources import config_source
    from kd_hydra.config.usage import usage_groups
    from kd_hydra.models.model_configs import register_model_groups

    store = ConfigStore.instance()
    store.store(name="base_config", node=RootConfig)
    register_model_groups(store, config_source(), *([str(Path(config_dir).absolute())] if config_dir else []))
    OmegaConf.register_new_resolver("kd_cpu_count", lambda: os.cpu_count() or 1, replace=True)
    OmegaConf.register_new_resolver("kd_env", env_or_default, replace=True)
    OmegaConf.register_new_resolver("kd_usage_groups", usage_groups, replace=True)  # the --help text
