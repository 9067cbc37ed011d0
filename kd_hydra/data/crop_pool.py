"""The crop pool (``soft_label_cache.crops_per_image=K``): K random-resized crops per training image, fixed once, of
which each epoch's plan picks one per sample.

Crop j of image i (its crop seed and flip) is a hash of ``(pool seed, i, j)`` alone (:func:`pool_keys`), turned into
torchvision's RandomResizedCrop box by the image's header size as every plan crop is
(:func:`~kd_hydra.data.resized_crop.crop_box`): never of the run's seed or epoch, so every run of every seed and
method sees the same pool, and the teacher's logits of its N x K crops are computed once
(:class:`~kd_hydra.stores.sharded_logits.PooledTeacher`). An epoch's plan (:func:`make_pool_plan`) draws the sample
order and, per sample, which of its K crops it uses from ``epoch_seed(seed, epoch)``. Pool position ``i * K + j``
names crop j of image i (the order of the teacher's records).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from kd_hydra.data.pipeline import epoch_seed
from kd_hydra.data.resized_crop import CROP_SEED_BITS

#: Part of every pool's description: bump it when the way pool crops are drawn changes.
POOL_VERSION = 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)

#: (image index, crop seed, flip, position): an item of a pool fill, returned with its pool position.
PoolKey = tuple[int, int, bool, int]


@dataclass(frozen=True)
class CropPool:
    """``soft_label_cache.crops_per_image`` (K >= 1) and ``soft_label_cache.pool_seed`` (>= 0)."""

    crops_per_image: int
    seed: int = 0

    def description(self) -> dict[str, Any]:
        """What determines the pool's crops besides the images and the crop settings: part of its cache key."""
        return {"crops_per_image": self.crops_per_image, "pool_seed": self.seed, "version": POOL_VERSION}


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's step on uint64 values: a bijection that spreads every input bit over the output (wraps)."""
    with np.errstate(over="ignore"):
        z = values + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def pool_keys(pool_seed: int, images: np.ndarray, crops: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crop seeds (int64 in [0, 2**62)) and flips (bool; all False without ``flip``) of crops ``crops[n]`` of images
    ``images[n]``: a function of ``(pool_seed, image, crop)`` only."""
    images = np.asarray(images, dtype=np.uint64)
    crops = np.asarray(crops, dtype=np.uint64)
    seeded = _mix(np.full(images.shape, pool_seed, dtype=np.uint64))
    hashed = _mix(_mix(seeded ^ images) ^ crops)
    crop_seeds = (hashed >> np.uint64(64 - CROP_SEED_BITS)).astype(np.int64)
    flips = (hashed & np.uint64(1)).astype(bool) if flip else np.zeros(images.shape, dtype=bool)
    return crop_seeds, flips


@dataclass(frozen=True)
class PoolPlan:
    """One epoch on CPU with a crop pool: `order` (N,) is the sample order; sample i uses its crop choice[i], whose
    crop seed and flip are crop_seed[i] and flip[i]."""

    epoch: int
    order: torch.Tensor
    choice: torch.Tensor
    crop_seed: torch.Tensor
    flip: torch.Tensor


def make_pool_plan(num: int, pool: CropPool, flip: bool, seed: int, epoch: int) -> PoolPlan:
    """The permutation of `epoch` (the same as without a pool) and each sample's pool crop in [0, K), drawn in that
    order from ``epoch_seed(seed, epoch)``."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(num, generator=generator)
    choice = torch.randint(0, pool.crops_per_image, (num,), generator=generator, dtype=torch.int64)
    crop_seed, flips = pool_keys(pool.seed, np.arange(num), choice.numpy(), flip)
    return PoolPlan(epoch, order, choice, torch.from_numpy(crop_seed), torch.from_numpy(flips))


class PoolBatches(Sampler[list]):
    """The pool's crops at positions [start, stop) in order, ``batch_size`` at a time, as :data:`PoolKey` items
    (computed one batch at a time: never a list of N x K keys)."""

    def __init__(self, pool: CropPool, flip: bool, batch_size: int, start: int, stop: int) -> None:
        self.pool, self.flip, self.batch_size, self.start, self.stop = pool, flip, batch_size, start, stop

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[list[PoolKey]]:
        crops = self.pool.crops_per_image
        for first in range(self.start, self.stop, self.batch_size):
            positions = np.arange(first, min(first + self.batch_size, self.stop))
            images, chosen = np.divmod(positions, crops)
            crop_seeds, flips = pool_keys(self.pool.seed, images, chosen, self.flip)
            yield list(zip(images.tolist(), crop_seeds.tolist(), flips.tolist(), positions.tolist()))
