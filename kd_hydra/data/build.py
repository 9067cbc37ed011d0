"""The batch pipeline a dataset node asks for: in memory, a DataLoader over image files, or random-resized crops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kd_hydra.data.augment import channel_mean_std
from kd_hydra.data.crop_pipeline import ResizedCropPipeline
from kd_hydra.data.crop_pool import CropPool
from kd_hydra.data.pipeline import AugmentConfig, InMemoryPipeline, LoaderPipeline
from kd_hydra.data.types import ArrayData, FolderData
from kd_hydra.errors import ConfigError, DataError
from kd_hydra.train.distributed import SINGLE, Workers


def _augment_config(node: Mapping[str, Any] | None) -> AugmentConfig:
    """The validated ``dataset.augment`` node (:func:`kd_hydra.data.config.check_dataset`) as an AugmentConfig."""
    node = {} if node is None else node
    defaults = AugmentConfig()
    return AugmentConfig(
        enabled=node.get("enabled", defaults.enabled),
        crop_padding=node.get("crop_padding", defaults.crop_padding),
        horizontal_flip=node.get("horizontal_flip", defaults.horizontal_flip),
    )


def _normalize_stats(
    node: Mapping[str, Any] | None, data: ArrayData | FolderData
) -> tuple[Sequence[float], Sequence[float]]:
    node = {} if node is None else node
    mean, std = node.get("mean"), node.get("std")  # both set or both null (check_dataset)
    if mean is not None:
        return list(mean), list(std)
    if isinstance(data, FolderData):
        raise ConfigError(
            "dataset.normalize.mean",
            f"is null; {data.spec.name} is read from image files, so give per-channel mean and std lists",
        )
    return channel_mean_std(data.x_train)


def check_crop_pool(crops_per_image: int | None, data: ArrayData | FolderData, augment_enabled: bool) -> None:
    """``soft_label_cache.crops_per_image`` needs random-resized crops (variable-size image files, augmentation on);
    a one-line :class:`ConfigError` naming it otherwise."""
    if crops_per_image is None:
        return
    if not (isinstance(data, FolderData) and data.variable_size):
        raise ConfigError(
            "soft_label_cache.crops_per_image",
            f"is {crops_per_image}, but dataset {data.spec.name} has no random-resized crops (images of one size); "
            "it is allowed only with dataset=imagenet (a tree read by kd_hydra.data.load_imagenet), else null",
        )
    if not augment_enabled:
        raise ConfigError(
            "soft_label_cache.crops_per_image",
            f"is {crops_per_image}, but dataset.augment.enabled is false (no random-resized crops to pool); "
            "set it null or enable augmentation",
        )


def build_pipeline(
    data: ArrayData | FolderData,
    dataset_cfg: Mapping[str, Any],
    batch_size: int,
    device: torch.device | str,
    seed: int,
    channels_last: bool = False,
    eval_batch_size: int | None = None,
    num_workers: int | None = None,
    drop_last: bool = False,
    workers: Workers = SINGLE,
    crop_pool: CropPool | None = None,
) -> InMemoryPipeline | LoaderPipeline:
    """The pipeline for `data` configured by the dataset node's `augment` and `normalize` (with `crop_pool`, each
    training sample's crop drawn from the pool: random-resized-crop data only, :func:`check_crop_pool`).

    Null statistics are computed from the training split (without any validation part).
    """
    augment = _augment_config(dataset_cfg.get("augment"))
    check_crop_pool(None if crop_pool is None else crop_pool.crops_per_image, data, augment.enabled)
    mean, std = _normalize_stats(dataset_cfg.get("normalize"), data)
    common = dict(
        augment=augment,
        mean=mean,
        std=std,
        batch_size=batch_size,
        device=device,
        seed=seed,
        channels_last=channels_last,
        eval_batch_size=eval_batch_size,
        drop_last=drop_last,
        workers=workers,
    )
    if isinstance(data, ArrayData):
        return InMemoryPipeline(data, **common)
    if isinstance(data, FolderData) and data.variable_size:
        return ResizedCropPipeline(data, num_workers=num_workers, crop_pool=crop_pool, **common)
    if isinstance(data, FolderData):
        return LoaderPipeline(data, num_workers=num_workers, **common)
    raise DataError(f"dataset loader returned a {type(data).__name__}; expected ArrayData or FolderData")
