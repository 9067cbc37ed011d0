"""Training and evaluation batches: augmented per an epoch plan, normalised on the target device.

Both pipelines are the training loop's :class:`~kd_hydra.train.batches.BatchSource`.

Both pipelines draw one `EpochPlan` per epoch from a generator seeded by (seed, epoch) only, so
sample i of epoch e gets the same crop/flip whatever the batch size, device or worker count.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kd_hydra.data.augment import (
    crop_flip,
    normalization_constants,
    normalize,
    sample_crop_flip,
)
from kd_hydra.data.load import channel_count_error
from kd_hydra.data.types import ArrayData, DatasetSpec, FolderData
from kd_hydra.errors import ConfigError, DataError
from kd_hydra.train.distributed import SINGLE, Workers

#: Part of every epoch seed: bump it when the way plans are drawn changes.
PLAN_VERSION = 1
_SEED_BITS = 63
MAX_DEFAULT_WORKERS = 4

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class AugmentConfig:
    """Random crop with zero padding and horizontal flip, as torchvision RandomCrop + RandomHorizontalFlip."""

    enabled: bool = True
    crop_padding: int = 4
    horizontal_flip: bool = True

    @property
    def padding(self) -> int:
        """The padding actually applied (0 when disabled)."""
        return self.crop_padding if self.enabled else 0

    @property
    def flip(self) -> bool:
        """Whether flips are actually drawn."""
        return self.enabled and self.horizontal_flip

    @property
    def active(self) -> bool:
        """Whether any image can change."""
        return self.padding > 0 or self.flip


@dataclass(frozen=True)
class EpochPlan:
    """One epoch on CPU: `order` (N,) is the sample order; dy[i], dx[i], flip[i] belong to sample i."""

    epoch: int
    order: torch.Tensor
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor


def epoch_seed(seed: int, epoch: int) -> int:
    """A stable 63-bit seed from (seed, epoch) alone (same on every platform and Python run)."""
    digest = hashlib.blake2b(f"kd-hydra/epoch-plan/v{PLAN_VERSION}/{seed}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def make_epoch_plan(num: int, augment: AugmentConfig, seed: int, epoch: int) -> EpochPlan:
    """The permutation and per-sample crop/flip of `epoch`, drawn in that order from `epoch_seed(seed, epoch)`."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(num, generator=generator)
    dy, dx, flip = sample_crop_flip(num, augment.padding, augment.flip, generator)
    return EpochPlan(epoch=epoch, order=order, dy=dy, dx=dx, flip=flip)


def _check_stats(
    spec: DatasetSpec, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != spec.channels:
            raise channel_count_error(key, len(values), spec)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"dataset.normalize.{key}", f"is {list(values)}; expected finite numbers")
    if min(std) <= 0:
        raise ConfigError("dataset.normalize.std", f"is {list(std)}; expected every std > 0")
    return mean, std


def _num_batches(num: int, batch_size: int, drop_last: bool) -> int:
    return num // batch_size if drop_last else -(-num // batch_size)


class _Pipeline:
    """What both pipelines share: statistics, batch sizes, device, seed, and the per-epoch plan; each pipeline
    takes its data in :meth:`_attach`."""

    #: Whether an epoch's soft labels fit the dense cache (false: image files, records in shards on disk).
    in_memory = True
    #: The crop pool whose crops the training batches take (random-resized crops only; None: fresh crops).
    crop_pool: Any = None

    def __init__(
        self,
        data: ArrayData | FolderData,
        augment: AugmentConfig,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        device: torch.device | str,
        seed: int,
        channels_last: bool = False,
        eval_batch_size: int | None = None,
        drop_last: bool = False,
        workers: Workers = SINGLE,
    ) -> None:
        spec = data.spec
        self.spec = spec
        self.augment = augment
        self.mean, self.std = _check_stats(spec, mean, std)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.workers = workers
        self.num_train = spec.num_train
        self.num_test = spec.num_test
        self.num_val = spec.num_val
        self._scale, self._shift = normalization_constants(self.mean, self.std, self.device)
        self._attach(data)

    def _attach(self, data: ArrayData | FolderData) -> None:
        raise NotImplementedError

    @property
    def has_val(self) -> bool:
        """Whether the data has a validation part (`dataset.val_fraction` > 0): `val_batches` needs one."""
        return self.num_val > 0

    def _require_val(self) -> None:
        if not self.has_val:
            raise ConfigError(
                "dataset.val_fraction",
                f"is 0, so {self.spec.name} has no validation split; expected a fraction in (0, 1) to evaluate on one",
            )

    @property
    def num_train_batches(self) -> int:
        """Number of batches `train_batches` yields per epoch."""
        return _num_batches(self.num_train, self.batch_size, self.drop_last)

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """The sample order and per-sample crop/flip of `epoch` (a function of seed and epoch only)."""
        return make_epoch_plan(self.num_train, self.augment, self.seed, epoch)


class InMemoryPipeline(_Pipeline):
    """The whole split as one uint8 tensor on `device`; batches are augmented and normalised there."""

    supports_logit_cache = True

    def _attach(self, data: ArrayData) -> None:
        self._x_train = data.x_train.to(self.device)
        self._y_train = data.y_train.to(self.device)
        self._x_test = data.x_test.to(self.device)
        self._y_test = data.y_test.to(self.device)
        self._x_val = None if data.x_val is None else data.x_val.to(self.device)
        self._y_val = None if data.y_val is None else data.y_val.to(self.device)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """(x normalised, y, sample idx) on the device, in plan order, `batch_size` at a time (this worker's rows
        of each batch when there are several)."""
        return self._planned_batches(epoch, self.batch_size, self.drop_last, self.workers)

    def augmented_train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """Like `train_batches` (same per-sample inputs) with another batch size; never drops a sample."""
        return self._planned_batches(epoch, batch_size, drop_last=False)

    def augmented_train_range(self, epoch: int, batch_size: int, start: int, stop: int) -> Iterator[Batch]:
        """The `augmented_train_batches` at plan positions [start, stop) (``start`` a multiple of ``batch_size``)."""
        return islice(self.augmented_train_batches(epoch, batch_size), start // batch_size, -(-stop // batch_size))

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x normalised, y) of the test split in order, `eval_batch_size` at a time, no augmentation."""
        return self._eval_batches(self._x_test, self._y_test)

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x normalised, y) of the validation part in order, like `test_batches`; needs `has_val`."""
        self._require_val()
        return self._eval_batches(self._x_val, self._y_val)

    def _eval_batches(self, x_all: torch.Tensor, y_all: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size, workers = self.eval_batch_size, self.workers
        for start in range(workers.rank * size, len(x_all), workers.world * size):  # this worker's batches
            x = x_all[start : start + self.eval_batch_size]
            yield self._normalize(x), y_all[start : start + self.eval_batch_size]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self._scale, self._shift, torch.float32, self.channels_last)

    def _planned_batches(
        self, epoch: int, batch_size: int, drop_last: bool, workers: Workers = SINGLE
    ) -> Iterator[Batch]:
        plan = self.epoch_plan(epoch)
        order = plan.order.to(self.device)
        augment = self.augment.active
        if augment:
            # Crop/flip parameters re-ordered into plan order once, so each batch takes a slice.
            dy, dx, flip = (t[plan.order].to(self.device) for t in (plan.dy, plan.dx, plan.flip))
        stop = self.num_train - self.num_train % batch_size if drop_last else self.num_train
        for start in range(0, stop, batch_size):
            rows = workers.rows(min(batch_size, stop - start))
            batch = slice(start + rows.start, start + rows.stop)
            idx = order[batch]
            x = self._x_train.index_select(0, idx)
            if augment:
                x = crop_flip(x, dy[batch], dx[batch], flip[batch] if self.augment.flip else None, self.augment.padding)
            yield self._normalize(x), self._y_train.index_select(0, idx), idx


class _PlanSampler(Sampler[tuple[int, int, int, bool]]):
    """Yields (sample index, dy, dx, flip) in plan order for the epoch set by `set_epoch`."""

    def __init__(self, num: int, augment: AugmentConfig, seed: int, epoch: int = 0) -> None:
        self.num, self.augment, self.seed, self.epoch = num, augment, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num

    def __iter__(self) -> Iterator[tuple[int, int, int, bool]]:
        plan = make_epoch_plan(self.num, self.augment, self.seed, self.epoch)
        order = plan.order
        return zip(order.tolist(), plan.dy[order].tolist(), plan.dx[order].tolist(), plan.flip[order].tolist())


class WorkerRows(Sampler[list]):
    """Batches of ``batch_size`` items of ``items`` in its order; of each, the rows of ``workers``' rank."""

    def __init__(self, items: Sampler, batch_size: int, drop_last: bool = False, workers: Workers = SINGLE) -> None:
        self.items, self.batch_size, self.drop_last, self.workers = items, batch_size, drop_last, workers

    def __len__(self) -> int:
        return _num_batches(len(self.items), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[list]:
        keys = list(self.items)
        stop = len(keys) - len(keys) % self.batch_size if self.drop_last else len(keys)
        for start in range(0, stop, self.batch_size):
            batch = keys[start : min(start + self.batch_size, stop)]
            yield batch[self.workers.rows(len(batch))]


class WorkerBatches(Sampler[list]):
    """Items 0..num-1 in order, ``batch_size`` at a time; of the batches, every ``world``-th from the rank's."""

    def __init__(self, num: int, batch_size: int, workers: Workers) -> None:
        self.num, self.batch_size, self.workers = num, batch_size, workers

    def __len__(self) -> int:
        return len(range(self.workers.rank, _num_batches(self.num, self.batch_size, False), self.workers.world))

    def __iter__(self) -> Iterator[list]:
        step = self.batch_size * self.workers.world
        for start in range(self.workers.rank * self.batch_size, self.num, step):
            yield list(range(start, min(start + self.batch_size, self.num)))


class PlannedItems(Dataset):
    """Item (index, dy, dx, flip) -> (image cropped/flipped with torchvision's v2 ops, label, index)."""

    def __init__(self, base: Dataset, image_size: int, padding: int) -> None:
        self.base, self.image_size, self.padding = base, image_size, padding

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int, bool] | int) -> tuple[torch.Tensor, int, int]:
        from torchvision.transforms.v2 import functional as TF  # on use (workers only): slow to import

        index, dy, dx, flip = (key, 0, 0, False) if isinstance(key, int) else key
        image, label = self.base[index]
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            where = self.base.path(index) if hasattr(self.base, "path") else f"item {index}"
            raise DataError(
                f"{where}: image is {image.shape[-1]}x{image.shape[-2]}; "
                f"expected {self.image_size}x{self.image_size} like the rest of the dataset"
            )
        if self.padding:
            image = TF.crop(TF.pad(image, [self.padding], fill=0), dy, dx, self.image_size, self.image_size)
        if flip:
            image = TF.horizontal_flip(image)
        return image, label, index


class LoaderPipeline(_Pipeline):
    """Image files decoded and cropped/flipped in DataLoader workers; batches are normalised on `device`.

    Per-sample augmentation follows the same `EpochPlan` as `InMemoryPipeline` (the sampler sends it).
    """

    supports_logit_cache = False

    def __init__(self, data: FolderData, *settings: Any, num_workers: int | None = None, **options: Any) -> None:
        """Every pipeline's settings (:class:`_Pipeline`) and the DataLoader's ``num_workers`` (None: min(4, cores))."""
        self.num_workers = min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        super().__init__(data, *settings, **options)

    def _attach(self, data: FolderData) -> None:
        augment, workers = self.augment, self.workers
        self._train_items = PlannedItems(data.train, data.spec.image_size, augment.padding)
        self._test_items = PlannedItems(data.test, data.spec.image_size, 0)
        self._sampler = _PlanSampler(self.num_train, augment, self.seed)
        train_batches = WorkerRows(self._sampler, self.batch_size, self.drop_last, workers)
        self._train_loader = self._loader(self._train_items, train_batches, persistent=True)
        self._test_loader = self._eval_loader(self._test_items)
        self._val_loader = None
        if data.val is not None:
            self._val_loader = self._eval_loader(PlannedItems(data.val, data.spec.image_size, 0))

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """(x normalised, y, sample idx) on the device, in plan order, `batch_size` at a time."""
        self._sampler.set_epoch(epoch)
        return self._to_device(self._train_loader)

    def augmented_train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """Like `train_batches` (same per-sample inputs) with another batch size, through a one-off loader."""
        sampler = _PlanSampler(self.num_train, self.augment, self.seed, epoch)
        loader = self._loader(self._train_items, WorkerRows(sampler, batch_size), persistent=False)
        return self._to_device(loader)

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x normalised, y) of the test split in order, `eval_batch_size` at a time, no augmentation."""
        for x, y, _ in self._to_device(self._test_loader):
            yield x, y

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x normalised, y) of the validation part in order, like `test_batches`; needs `has_val`."""
        self._require_val()
        return ((x, y) for x, y, _ in self._to_device(self._val_loader))

    def _loader(self, items: Dataset, batches: Sampler[list], persistent: bool) -> DataLoader:
        return DataLoader(
            items,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and self.num_workers > 0,
            generator=self._loader_generator(),
        )

    def _loader_generator(self) -> torch.Generator | None:
        """Where the DataLoader draws its workers' seeds: the global RNG (None) here."""
        return None

    def _eval_loader(self, items: Dataset) -> DataLoader:
        """The split in order, ``eval_batch_size`` at a time: this worker's batches when there are several."""
        return self._loader(items, WorkerBatches(len(items), self.eval_batch_size, self.workers), persistent=True)

    def _to_device(self, loader: DataLoader) -> Iterator[Batch]:
        for x, y, idx in loader:
            x = x.to(self.device, non_blocking=True)
            x = normalize(x, self._scale, self._shift, torch.float32, self.channels_last)
            yield x, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)
