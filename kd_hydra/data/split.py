"""A stratified, seeded validation part held out of the training split (`dataset.val_fraction`), and a
subset of every split (`dataset.subset`, for smoke tests)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from kd_hydra.data.types import ArrayData, FolderData, ImageFileDataset
from kd_hydra.errors import ConfigError


def check_val_settings(fraction: object, seed: object) -> tuple[float, int]:
    """`dataset.val_fraction` in [0, 1) and `dataset.val_seed` an integer, or a ConfigError naming the key."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 <= fraction < 1.0
        or not math.isfinite(fraction)
    ):
        raise ConfigError(
            "dataset.val_fraction", f"is {fraction!r}; expected a fraction in [0, 1) (0: no validation split)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("dataset.val_seed", f"is {seed!r}; expected an integer >= 0")
    return float(fraction), int(seed)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), each ascending: round(fraction * n_c) random samples of each class c go to val.

    Deterministic given (labels, fraction, seed). Every class present must keep >= 1 sample on each side.
    """
    labels = np.asarray(labels)
    generator = np.random.Generator(np.random.PCG64(seed))
    val_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if count < 1 or count >= len(members):
            name = classes[int(label)] if classes is not None else str(int(label))
            raise ConfigError(
                "dataset.val_fraction",
                f"is {fraction:g}; class '{name}' has {len(members)} training images, which gives "
                f"{count} for validation and {len(members) - count} for training; expected at least "
                "one on each side (change the fraction, or 0 for no validation split)",
            )
        val_parts.append(generator.permutation(members)[:count])
    val = np.sort(np.concatenate(val_parts))
    keep = np.ones(len(labels), dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep), val


def with_validation(data: ArrayData | FolderData, fraction: float, seed: int) -> ArrayData | FolderData:
    """`data` with a stratified validation part of `fraction` held out of its training split (as is for 0)."""
    fraction, seed = check_val_settings(fraction, seed)
    if fraction == 0.0:
        return data
    if data.has_val:
        raise ConfigError(
            "dataset.val_fraction", f"is {fraction:g} but {data.spec.name} already has a validation part; expected 0"
        )
    if isinstance(data, ArrayData):
        labels = data.y_train.numpy()
    else:
        labels = data.train.labels
    train_idx, val_idx = stratified_split(labels, fraction, seed, data.spec.classes)
    spec = dataclasses.replace(data.spec, num_train=len(train_idx), num_val=len(val_idx))
    if isinstance(data, ArrayData):
        train_t, val_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        return ArrayData(
            data.x_train[train_t],
            data.y_train[train_t],
            data.x_test,
            data.y_test,
            spec,
            x_val=data.x_train[val_t],
            y_val=data.y_train[val_t],
        )
    return dataclasses.replace(data, train=data.train.subset(train_idx), spec=spec, val=data.train.subset(val_idx))


def class_round_robin(labels: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` indices taking each class in turn (its samples in their order), ascending."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts  # position of each sample within its class
    chosen = np.lexsort((labels, rank))[:count]
    return np.sort(chosen)


def files_subset(files: ImageFileDataset, subset: int | None) -> ImageFileDataset:
    """At most ``subset`` of a split's image files, every class in turn (:func:`with_subset`'s pick), before any of
    them is decoded; None: all."""
    return files if subset is None else files.subset(class_round_robin(files.labels, subset))


def with_subset(data: ArrayData | FolderData, subset: int | None) -> ArrayData | FolderData:
    """`data` with at most `subset` images of each split (train, validation, test), every class in turn; None: all."""
    if subset is None:
        return data
    if isinstance(data, ArrayData):
        splits = {"train": data.y_train, "test": data.y_test, "val": data.y_val}
        picks = {k: torch.from_numpy(class_round_robin(y.numpy(), subset)) for k, y in splits.items() if y is not None}
        val = {"x_val": data.x_val[picks["val"]], "y_val": data.y_val[picks["val"]]} if "val" in picks else {}
        spec = dataclasses.replace(
            data.spec, num_train=len(picks["train"]), num_test=len(picks["test"]), num_val=len(picks.get("val", ()))
        )
        train, test = picks["train"], picks["test"]
        return ArrayData(data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test], spec, **val)
    parts = {"train": data.train, "test": data.test, "val": data.val}
    kept = {k: part.subset(class_round_robin(part.labels, subset)) for k, part in parts.items() if part is not None}
    spec = dataclasses.replace(
        data.spec, num_train=len(kept["train"]), num_test=len(kept["test"]), num_val=len(kept.get("val", ()))
    )
    test_images = None if data.test_images is None else data.test_images[class_round_robin(data.test.labels, subset)]
    return dataclasses.replace(
        data, train=kept["train"], test=kept["test"], spec=spec, val=kept.get("val"), test_images=test_images
    )
