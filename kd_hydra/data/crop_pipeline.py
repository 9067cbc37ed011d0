"""ImageNet's pipeline: variable-size image files decoded in DataLoader workers, each sample's random-resized crop
and flip drawn from the run's plan, evaluation from the decoded store.

The plan of an epoch is the sample order, one crop seed and one flip per sample, all drawn from
``epoch_seed(seed, epoch)`` (:mod:`kd_hydra.data.pipeline`); a worker turns the crop seed and the image's size
into torchvision's RandomResizedCrop box (:mod:`kd_hydra.data.resized_crop`), decodes, crops and resizes to
S x S. The batches are therefore a function of (seed, epoch) only: the soft-label cache serves them.

With a crop pool (:class:`~kd_hydra.data.crop_pool.CropPool`, ``soft_label_cache.crops_per_image``) each sample's
crop is instead the one of its K pool crops that the epoch's plan picks: the teacher's logits of the pool are
computed once (:class:`~kd_hydra.stores.sharded_logits.PooledTeacher`) and read every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from kd_hydra.data.augment import normalize
from kd_hydra.data.crop_pool import CropPool, PoolBatches, PoolPlan, make_pool_plan
from kd_hydra.data.image_header import declared_size
from kd_hydra.data.images import check_pixel_budget, decode_bytes, read_bytes
from kd_hydra.data.pipeline import Batch, LoaderPipeline, PlannedItems, WorkerRows, epoch_seed
from kd_hydra.data.resized_crop import DEFAULT_RATIO, DEFAULT_SCALE, crop_box, crop_resize, draw_crop_plan
from kd_hydra.data.types import FolderData, ImageFileDataset

CropKey = tuple[int, int, bool]


@dataclass(frozen=True)
class CropPlan:
    """One epoch on CPU: `order` (N,) is the sample order; crop_seed[i] and flip[i] belong to sample i."""

    epoch: int
    order: torch.Tensor
    crop_seed: torch.Tensor
    flip: torch.Tensor


def make_crop_plan(num: int, flip: bool, seed: int, epoch: int) -> CropPlan:
    """The permutation and per-sample crop seeds and flips of `epoch`, drawn in that order from
    ``epoch_seed(seed, epoch)``."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(num, generator=generator)
    crop_seed, flips = draw_crop_plan(num, flip, generator)
    return CropPlan(epoch=epoch, order=order, crop_seed=crop_seed, flip=flips)


class _CropSampler(Sampler[CropKey]):
    """Yields (sample index, crop seed, flip) at plan positions [start, stop) of the epoch set by `set_epoch` (each
    sample's crop from `pool` when given)."""

    def __init__(
        self,
        num: int,
        flip: bool,
        seed: int,
        epoch: int = 0,
        start: int = 0,
        stop: int | None = None,
        pool: CropPool | None = None,
    ) -> None:
        self.num, self.flip, self.seed, self.epoch, self.pool = num, flip, seed, epoch, pool
        self.start, self.stop = start, num if stop is None else stop

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[CropKey]:
        if self.pool is None:
            plan: CropPlan | PoolPlan = make_crop_plan(self.num, self.flip, self.seed, self.epoch)
        else:
            plan = make_pool_plan(self.num, self.pool, self.flip, self.seed, self.epoch)
        order = plan.order[self.start : self.stop]
        return zip(order.tolist(), plan.crop_seed[order].tolist(), plan.flip[order].tolist())


class CroppedItems(Dataset):
    """Item (index, crop seed, flip) -> (the image's planned random-resized crop, S x S uint8, label, index); item
    (index, crop seed, flip, position) of a crop pool's fill gives its pool position in place of the index.

    With `crop` false the crop is the evaluation's Resize(`eval_resize`) + CenterCrop(S) (augmentation off).
    """

    def __init__(self, base: ImageFileDataset, size: int, eval_resize: int, crop: bool = True) -> None:
        self.base, self.size, self.eval_resize, self.crop = base, size, eval_resize, crop

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: CropKey | tuple[int, int, bool, int]) -> tuple[torch.Tensor, int, int]:
        from kd_hydra.data.resized_crop import resize_center_crop

        index, crop_seed, flip = key[:3]
        returned = key[3] if len(key) > 3 else index
        path = self.base.path(index)
        data = read_bytes(path)
        check_pixel_budget(path, data, self.base.max_pixels)
        image = decode_bytes(path, data)
        if not self.crop:
            return resize_center_crop(image, self.eval_resize, self.size), int(self.base.labels[index]), returned
        size = declared_size(data) or (int(image.shape[-1]), int(image.shape[-2]))
        box = crop_box(size[0], size[1], crop_seed, DEFAULT_SCALE, DEFAULT_RATIO)
        return crop_resize(image, box, self.size, flip), int(self.base.labels[index]), returned


class ResizedCropPipeline(LoaderPipeline):
    """Variable-size image files (:class:`FolderData` with ``variable_size``): training batches are the plan's
    random-resized crops decoded in DataLoader workers; evaluation reads the decoded store (``test_images``) or
    the files (Resize + CenterCrop). Its batches are a function of (seed, epoch): the soft-label cache serves them.
    With ``crop_pool``, each sample's crop is one of its image's K pool crops (:mod:`kd_hydra.data.crop_pool`)."""

    supports_logit_cache = True
    in_memory = False  # the soft-label cache keeps its records on disk (kd_hydra.stores.sharded_logits)

    def __init__(self, data: FolderData, *settings: Any, crop_pool: CropPool | None = None, **options: Any) -> None:
        """A loader pipeline's settings (:class:`LoaderPipeline`) and the crop pool (None: a fresh crop per epoch)."""
        self.crop_pool = crop_pool
        super().__init__(data, *settings, **options)

    def _attach(self, data: FolderData) -> None:
        size, eval_resize = data.spec.image_size, int(data.test.eval_resize or data.spec.image_size)
        self._flip = self.augment.flip
        self._size = size
        self._train_items = CroppedItems(data.train, size, eval_resize, crop=self.augment.enabled)
        self._sampler = _CropSampler(self.num_train, self._flip, self.seed, pool=self.crop_pool)
        train_batches = WorkerRows(self._sampler, self.batch_size, self.drop_last, self.workers)
        self._train_loader = self._loader(self._train_items, train_batches, persistent=True)
        self._test_images, self._test_labels = data.test_images, torch.from_numpy(data.test.labels)
        self._test_loader = None
        if data.test_images is None:
            self._test_loader = self._eval_loader(PlannedItems(data.test, size, 0))
        self._val_loader = None
        if data.val is not None:
            val = data.val.subset(range(len(data.val)))
            val.eval_resize = eval_resize
            self._val_loader = self._eval_loader(PlannedItems(val, size, 0))

    def _loader_generator(self) -> torch.Generator:
        """A generator of the loader's own for its workers' seeds: filling the soft-label cache (a loader more) leaves
        the global RNG, hence the student's training, as it is (the plan needs no RNG)."""
        return torch.Generator().manual_seed(self.seed)

    def epoch_plan(self, epoch: int) -> CropPlan | PoolPlan:  # type: ignore[override]
        """The sample order and per-sample crop seeds and flips of `epoch` (a function of seed and epoch only; with
        a crop pool, each sample's pool crop too)."""
        if self.crop_pool is not None:
            return make_pool_plan(self.num_train, self.crop_pool, self._flip, self.seed, epoch)
        return make_crop_plan(self.num_train, self._flip, self.seed, epoch)

    def pool_description(self) -> dict[str, Any]:
        """What determines the crop pool's crops besides the images: the crop settings and the pool's own."""
        assert self.crop_pool is not None, "a pipeline with a crop pool"
        return {
            "size": self._size, "scale": list(DEFAULT_SCALE), "ratio": list(DEFAULT_RATIO), "flip": self._flip,
            **self.crop_pool.description(),
        }  # fmt: skip

    def pool_range(self, batch_size: int, start: int, stop: int) -> Iterator[Batch]:
        """The crop pool's crops at pool positions [start, stop) (``i * K + j``: crop j of image i) in order,
        `batch_size` at a time, through a one-off loader; each batch's third part is the positions."""
        assert self.crop_pool is not None, "a pipeline with a crop pool"
        batches = PoolBatches(self.crop_pool, self._flip, batch_size, start, stop)
        return self._to_device(self._loader(self._train_items, batches, persistent=False))

    def augmented_train_batches(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        """Like `train_batches` (same per-sample inputs) with another batch size, through a one-off loader."""
        return self.augmented_train_range(epoch, batch_size, 0, self.num_train)

    def augmented_train_range(self, epoch: int, batch_size: int, start: int, stop: int) -> Iterator[Batch]:
        """The samples at plan positions [start, stop) of `epoch`, `batch_size` at a time (a fill split by range)."""
        sampler = _CropSampler(self.num_train, self._flip, self.seed, epoch, start, stop, self.crop_pool)
        loader = self._loader(self._train_items, WorkerRows(sampler, batch_size), persistent=False)
        return self._to_device(loader)

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x normalised, y) of the test split in order, `eval_batch_size` at a time: from the decoded store."""
        if self._test_images is None:
            yield from super().test_batches()
            return
        size, workers = self.eval_batch_size, self.workers
        for start in range(workers.rank * size, len(self._test_images), workers.world * size):  # this worker's
            x = self._test_images[start : start + self.eval_batch_size].to(self.device, non_blocking=True)
            y = self._test_labels[start : start + self.eval_batch_size].to(self.device, non_blocking=True)
            yield normalize(x, self._scale, self._shift, torch.float32, self.channels_last), y
