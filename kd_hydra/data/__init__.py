"""Datasets (loaders returning `ArrayData` / `FolderData`) and the batch pipelines that feed training."""

from kd_hydra.data.arrays import load_arrays
from kd_hydra.data.augment import channel_mean_std, crop_flip, normalization_constants, normalize, sample_crop_flip
from kd_hydra.data.cifar import load_cifar
from kd_hydra.data.digits import load_digits
from kd_hydra.data.folder import load_folder
from kd_hydra.data.load import check_required, instantiate_loader, load_dataset
from kd_hydra.data.pipeline import (
    AugmentConfig,
    EpochPlan,
    InMemoryPipeline,
    LoaderPipeline,
    build_pipeline,
    epoch_seed,
    make_epoch_plan,
)
from kd_hydra.data.split import stratified_split, with_validation
from kd_hydra.data.synthetic import load_synthetic
from kd_hydra.data.tiny_imagenet import load_tiny_imagenet
from kd_hydra.data.types import ArrayData, DatasetSpec, FolderData, ImageFileDataset

__all__ = [
    "ArrayData",
    "AugmentConfig",
    "DatasetSpec",
    "EpochPlan",
    "FolderData",
    "ImageFileDataset",
    "InMemoryPipeline",
    "LoaderPipeline",
    "build_pipeline",
    "channel_mean_std",
    "check_required",
    "crop_flip",
    "epoch_seed",
    "instantiate_loader",
    "load_arrays",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_synthetic",
    "load_tiny_imagenet",
    "make_epoch_plan",
    "normalization_constants",
    "normalize",
    "sample_crop_flip",
    "stratified_split",
    "with_validation",
]
