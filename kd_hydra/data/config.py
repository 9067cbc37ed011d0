"""The typed ``dataset`` node: one schema for every dataset YAML, its ranges checked before any data is read.

Types (and unknown keys) are checked by Hydra when it composes the config; :func:`check_dataset`
checks values and combinations. Every dataset has the same keys; a key its loader does not read
(``dataset.in_memory`` of ``cifar10``) keeps its default, and setting it is refused. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from kd_hydra.errors import ConfigError

#: Default most pixels an image file may declare (PIL's decompression-bomb threshold); kd_hydra.data.images.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Keys only some loaders read: each is used when the loader node has that argument (``key: ${..key}``).
LOADER_KEYS = ("path", "num_classes", "image_size", "eval_resize", "in_memory", "max_memory_gb", "max_image_pixels")
#: Loader keys that must be set when the loader reads them (a YAML's ``???`` does not survive the merge
#: into the schema's default, so the requirement is checked here).
REQUIRED_WHEN_READ = ("path",)


@dataclass
class AugmentSchema:
    """Random crop with zero padding plus horizontal flip, on the training split."""

    enabled: bool = True
    crop_padding: int = 4
    horizontal_flip: bool = True


@dataclass
class NormalizeSchema:
    """Per-channel statistics; both null: computed from the training split."""

    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class DatasetSchema:
    """The ``dataset`` node of every dataset YAML (conf/dataset/*.yaml)."""

    name: str = MISSING
    loader: Any = MISSING  # _target_ + the loader function's arguments
    path: str | None = None  # arrays: the .npz; folder: the image folder
    num_classes: int | None = None  # arrays: null is max label + 1
    image_size: int | None = None  # side every image has (resized to it when decoded)
    eval_resize: int | None = None  # imagenet: evaluation's shorter side before the central image_size crop
    in_memory: bool = True  # image files: decode once into the store (true) or stream them (false)
    max_memory_gb: float | None = None  # budget of the decoded store; null: half the RAM
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # most pixels one image file may declare
    val_fraction: float = 0.0
    val_seed: int = 0
    subset: int | None = None  # at most this many images of each split, every class in turn (smoke tests)
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    normalize: NormalizeSchema | None = field(default_factory=NormalizeSchema)


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"dataset.{key}", message)


def loader_takes(dataset: DictConfig, key: str) -> bool:
    """Whether the loader node has an argument ``key`` (usually ``${..key}``, the dataset's own value)."""
    loader = dataset.get("loader")
    return isinstance(loader, DictConfig) and key in loader


def _check_unused_and_required(dataset: DictConfig) -> None:
    defaults = DatasetSchema()
    for key in REQUIRED_WHEN_READ:
        if loader_takes(dataset, key) and dataset.loader.get(key) in (None, ""):
            _fail(key, f"is required but not set (???); give it on the command line, e.g. dataset.{key}=...")
    for key in LOADER_KEYS:
        if key not in dataset or OmegaConf.is_missing(dataset, key) or loader_takes(dataset, key):
            continue
        value = dataset.get(key)
        if value != getattr(defaults, key):
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            _fail(key, f"is {shown}, but dataset {dataset.get('name')} does not use it; leave it out")


def _check_ranges(dataset: DictConfig) -> None:
    for key in ("image_size", "num_classes", "eval_resize"):
        value = dataset.get(key)
        if value is not None and value < 1:
            _fail(key, f"is {value}; expected a positive integer or null")
    if dataset.get("max_image_pixels", 1) < 1:
        _fail("max_image_pixels", f"is {dataset.max_image_pixels}; expected a positive integer (width x height)")
    budget = dataset.get("max_memory_gb")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        _fail("max_memory_gb", f"is {budget}; expected a positive number of GB or null (half the physical memory)")
    subset = dataset.get("subset")
    if subset is not None and subset < 1:
        _fail("subset", f"is {subset}; expected a positive number of images per split, or null (all)")
    fraction = dataset.get("val_fraction", 0.0)
    if not (math.isfinite(fraction) and 0 <= fraction < 1):
        _fail("val_fraction", f"is {fraction}; expected a fraction in [0, 1) (0: no validation split)")
    augment = dataset.get("augment")
    if isinstance(augment, DictConfig) and augment.get("crop_padding", 0) < 0:
        _fail("augment.crop_padding", f"is {augment.crop_padding}; expected an integer >= 0 (pixels)")


def _check_normalize(dataset: DictConfig) -> None:
    normalize = dataset.get("normalize")
    mean = normalize.get("mean") if isinstance(normalize, DictConfig) else None
    std = normalize.get("std") if isinstance(normalize, DictConfig) else None
    if (mean is None) != (std is None):
        missing = "mean" if mean is None else "std"
        _fail(f"normalize.{missing}", "is null while the other is set; expected both lists or both null (computed)")
    if mean is not None:
        if len(mean) != len(std) or not len(mean):
            _fail("normalize", f"mean has {len(mean)} values and std {len(std)}; expected one per channel in each")
        if not all(math.isfinite(v) for v in [*mean, *std]):
            _fail("normalize", "holds a value that is not a finite number")
        if not all(v > 0 for v in std):
            _fail("normalize.std", f"is {list(std)}; expected every std > 0")
    streamed = loader_takes(dataset, "in_memory") and dataset.loader.get("in_memory") is False
    if streamed and mean is None:
        _fail(
            "normalize",
            "is null (computed from the training split), which needs dataset.in_memory=true; "
            "with in_memory=false give per-channel mean and std lists",
        )


def check_dataset(dataset: Any) -> None:
    """Values and combinations of a composed ``dataset`` node; a :class:`ConfigError` naming the first bad key."""
    if not isinstance(dataset, DictConfig):
        return
    _check_unused_and_required(dataset)
    _check_ranges(dataset)
    _check_normalize(dataset)
