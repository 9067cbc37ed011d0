"""One call from a `dataset` config node to the data a run trains on (loader + validation split)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from kd_hydra.data.split import with_subset, with_validation
from kd_hydra.data.types import ArrayData, DatasetSpec, FolderData
from kd_hydra.errors import ConfigError, DataError
from kd_hydra.instantiate import build

DEFAULT_VAL_FRACTION = 0.0
DEFAULT_VAL_SEED = 0


def check_required(node: DictConfig, prefix: str = "dataset") -> None:
    """A ConfigError naming the first `???` key of `node` (or one its values interpolate); call before resolving."""
    for key in node:
        full = f"{prefix}.{key}"
        if OmegaConf.is_missing(node, key):
            raise ConfigError(full, f"is required but not set (???); give it on the command line, e.g. {full}=...")
        try:
            value = node[key]
        except MissingMandatoryValue as error:  # an interpolation to a ??? key
            match = re.search(r"Missing mandatory value: (\S+)", str(error))
            missing = match.group(1) if match else full
            raise ConfigError(
                missing, f"is required but not set (???); give it on the command line, e.g. {missing}=..."
            ) from None
        if isinstance(value, DictConfig):
            check_required(value, full)


def instantiate_loader(loader_cfg: DictConfig) -> ArrayData | FolderData:
    """hydra.utils.instantiate of the loader node; our own errors come out as themselves, not wrapped by Hydra."""
    data = build(loader_cfg)
    if not isinstance(data, (ArrayData, FolderData)):
        raise DataError(
            f"dataset.loader: {loader_cfg.get('_target_')} returned a {type(data).__name__}; "
            "expected ArrayData or FolderData"
        )
    return data


def load_dataset(dataset_cfg: Mapping[str, Any] | DictConfig) -> ArrayData | FolderData:
    """The dataset of a run: `dataset_cfg.loader` instantiated, then `val_fraction`/`val_seed` and `subset` applied.

    `dataset_cfg` is the composed `dataset` node (interpolations such as `${paths.cache_dir}` resolvable), its
    values checked by :func:`kd_hydra.config.checks.validate` (:func:`check_required`, ``check_dataset``).
    """
    if not isinstance(dataset_cfg, DictConfig):
        dataset_cfg = OmegaConf.create(dict(dataset_cfg))
    if "loader" not in dataset_cfg:
        raise ConfigError("dataset.loader", "is missing; expected a node with _target_ naming a loader function")
    data = instantiate_loader(dataset_cfg.loader)
    fraction = dataset_cfg.get("val_fraction", DEFAULT_VAL_FRACTION)
    seed = dataset_cfg.get("val_seed", DEFAULT_VAL_SEED)
    data = with_validation(
        data, DEFAULT_VAL_FRACTION if fraction is None else fraction, DEFAULT_VAL_SEED if seed is None else seed
    )
    return with_subset(data, dataset_cfg.get("subset"))


def channel_count_error(key: str, count: int, spec: DatasetSpec) -> ConfigError:
    """``dataset.normalize.<key>`` holds ``count`` values where the data has ``spec.channels`` channels."""
    return ConfigError(
        f"dataset.normalize.{key}",
        f"{count} values for a {spec.channels}-channel dataset ({spec.name}); expected one per channel",
    )


def check_fits_data(dataset: DictConfig, spec: DatasetSpec) -> None:
    """The values of ``dataset`` that its data must agree with (normalisation per channel, image size, class
    count), against the loaded data's description; a :class:`ConfigError` naming the key and both values."""
    normalize = dataset.get("normalize")
    for key in ("mean", "std"):
        values = normalize.get(key) if isinstance(normalize, DictConfig) else None
        if values is not None and len(values) != spec.channels:
            raise channel_count_error(key, len(values), spec)
    size, classes = dataset.get("image_size"), dataset.get("num_classes")
    if size is not None and size != spec.image_size:
        raise ConfigError(
            "dataset.image_size", f"is {size} for a dataset of {spec.image_size}x{spec.image_size} images ({spec.name})"
        )
    if classes is not None and classes != spec.num_classes:
        raise ConfigError(
            "dataset.num_classes", f"is {classes} for a dataset of {spec.num_classes} classes ({spec.name})"
        )
