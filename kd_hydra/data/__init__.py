"""Datasets (loaders returning `ArrayData` / `FolderData`) and the batch pipelines that feed training.

A loader is any function that a dataset YAML's `loader._target_` names (kd-hydra's below, or one of your
own on `PYTHONPATH`: docs/extending.md); `load_dataset` calls it and applies the validation split.

The names below are served on first use (``kd_hydra.data.load_cifar`` in a YAML ``_target_`` imports its module
then), so importing a submodule such as :mod:`kd_hydra.data.config` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "ArrayData": "types",
    "AugmentConfig": "pipeline",
    "CropPool": "crop_pool",
    "DatasetSpec": "types",
    "EpochPlan": "pipeline",
    "FolderData": "types",
    "ImageFileDataset": "types",
    "InMemoryPipeline": "pipeline",
    "LoaderPipeline": "pipeline",
    "ResizedCropPipeline": "crop_pipeline",
    "build_pipeline": "build",
    "channel_mean_std": "augment",
    "check_required": "load",
    "crop_flip": "augment",
    "epoch_seed": "pipeline",
    "instantiate_loader": "load",
    "load_arrays": "arrays",
    "load_cifar": "cifar",
    "load_dataset": "load",
    "load_digits": "digits",
    "load_folder": "folder",
    "load_imagenet": "imagenet",
    "load_synthetic": "synthetic",
    "load_tiny_imagenet": "tiny_imagenet",
    "make_epoch_plan": "pipeline",
    "normalization_constants": "augment",
    "normalize": "augment",
    "sample_crop_flip": "augment",
    "stratified_split": "split",
    "with_validation": "split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
