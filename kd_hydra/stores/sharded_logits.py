"""The soft-label cache at ImageNet scale: fixed-size records in a handful of shard files per epoch, memory-mapped
and decoded one batch at a time; never an (N, C) tensor.

Sample i's record holds its top-k logits (the storage dtype), their class indices (int16 up to 32,767 classes) and
the mean of the other logits, as :func:`~kd_hydra.stores.logit_cache.encode_logits` computes them (every
logit when top-k is off or >= the class count): 4k + 2 bytes at float16, 42 bytes at k = 10. Epoch e's records
are ``epoch_EEEE.shard_SS.bin``: shard s holds samples [s * rows, (s + 1) * rows) at fixed offsets, so a fill
split into ranges of plan positions (:func:`fill_range`, :func:`split_ranges`) by several workers writes the same
bytes as one worker: each range's batches are the same batches, each record lands at its sample's offset. The
shards are sealed (SHA-256 of each) once every range is written; a reader verifies them before mapping them.

With a crop pool (``soft_label_cache.crops_per_image=K``, :mod:`kd_hydra.data.crop_pool`) the entry holds instead
the records of the pool's N x K crops in ``pool.shard_SS.bin`` (record ``i * K + j``: crop j of image i), filled
once and read by every epoch, seed and logit method (:class:`PooledTeacher`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kd_hydra.records.files import reserve_blocks, write_error
from kd_hydra.stores.cache_entry import CacheEntry, file_sha256
from kd_hydra.stores.logit_cache import AugmentedBatches, CachedTeacher, decode_logits, encode_logits
from kd_hydra.train.batches import TeacherOutput
from kd_hydra.train.runtime import Runtime

log = logging.getLogger(__name__)

#: Shard files per epoch (fewer when an epoch has fewer samples than this).
NUM_SHARDS = 4
BYTES_PER_MB = 1e6


@dataclass(frozen=True)
class RecordLayout:
    """The bytes of one sample's record: top-k values, their indices, the rest's mean (or all C values)."""

    num_classes: int
    top_k: int | None
    dtype: torch.dtype

    @property
    def full(self) -> bool:
        """Whether every logit is stored (top-k off or >= the class count)."""
        return self.top_k is None or self.top_k >= self.num_classes

    @property
    def k(self) -> int:
        return self.num_classes if self.full else int(self.top_k)

    @property
    def index_dtype(self) -> torch.dtype:
        return torch.int16 if self.num_classes <= torch.iinfo(torch.int16).max else torch.int32

    @property
    def value_bytes(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    @property
    def record_bytes(self) -> int:
        """Bytes per sample: 42 at k = 10 in float16."""
        if self.full:
            return self.k * self.value_bytes
        index_bytes = torch.empty(0, dtype=self.index_dtype).element_size()
        return self.k * (self.value_bytes + index_bytes) + self.value_bytes

    def encode(self, logits: Tensor) -> np.ndarray:
        """uint8 (B, record_bytes) records of float (B, C) logits."""
        stored = encode_logits(logits, self.dtype, None if self.full else self.top_k)
        parts = [stored["values"]] if self.full else [stored["values"], stored["indices"], stored["rest_mean"][:, None]]
        return torch.cat([part.contiguous().view(torch.uint8) for part in parts], dim=1).numpy()

    def decode(self, records: np.ndarray) -> Tensor:
        """Float32 (B, C) logits of uint8 (B, record_bytes) records (the rest get their mean)."""
        raw = torch.from_numpy(np.ascontiguousarray(records))
        values_end = self.k * self.value_bytes
        stored = {"values": raw[:, :values_end].contiguous().view(self.dtype)}
        if not self.full:
            indices_end = values_end + self.k * torch.empty(0, dtype=self.index_dtype).element_size()
            stored["indices"] = raw[:, values_end:indices_end].contiguous().view(self.index_dtype)
            stored["rest_mean"] = raw[:, indices_end:].contiguous().view(self.dtype)[:, 0]
        return decode_logits(stored, self.num_classes)


class ShardedEpoch:
    """Epoch ``epoch``'s records of ``num`` samples in ``entry``: shard files at fixed offsets, named
    ``<stem>.shard_SS.bin`` (``stem``: ``epoch_EEEE`` unless given)."""

    def __init__(
        self,
        entry: CacheEntry,
        epoch: int,
        num: int,
        layout: RecordLayout,
        shards: int = NUM_SHARDS,
        stem: str | None = None,
    ) -> None:
        self.entry, self.epoch, self.num, self.layout = entry, epoch, num, layout
        self.stem = stem or f"epoch_{epoch:04d}"
        self.rows = max(1, math.ceil(num / max(1, shards)))
        self.num_shards = math.ceil(num / self.rows)
        self._maps: list[np.memmap] | None = None

    @property
    def names(self) -> list[str]:
        return [f"{self.stem}.shard_{shard:02d}.bin" for shard in range(self.num_shards)]

    @property
    def nbytes(self) -> int:
        """Bytes of the epoch's shards together: samples x record bytes."""
        return self.num * self.layout.record_bytes

    def _shard_rows(self, shard: int) -> int:
        return min(self.rows, self.num - shard * self.rows)

    def allocate(self) -> None:
        """Create every shard file at its full size (zeros) if absent: writers of any range then fill their records.
        Its blocks are reserved here, so that a full disk is a one-line :class:`WriteError` naming the shard (the file
        removed), never a fault while the mapped records are written."""
        self.entry.path.mkdir(parents=True, exist_ok=True)
        for shard, name in enumerate(self.names):
            path, size = self.entry.file(name), self._shard_rows(shard) * self.layout.record_bytes
            if not path.is_file() or path.stat().st_size != size:
                try:
                    with open(path, "wb") as handle:
                        handle.truncate(size)
                    reserve_blocks(path)
                except OSError as error:
                    if path.is_file():
                        path.unlink()
                    raise write_error(path, error) from None

    def _mapped(self, mode: str) -> list[np.memmap]:
        width = self.layout.record_bytes
        return [
            np.memmap(self.entry.file(name), dtype=np.uint8, mode=mode, shape=(self._shard_rows(shard), width))
            for shard, name in enumerate(self.names)
        ]

    def write(self, sample_indices: Tensor, records: np.ndarray) -> None:
        """Write ``records`` (uint8 (B, record_bytes)) at the offsets of ``sample_indices``."""
        maps = self._mapped("r+")
        indices = sample_indices.cpu().numpy()
        shard, row = np.divmod(indices, self.rows)
        for number in np.unique(shard):
            chosen = shard == number
            maps[number][row[chosen]] = records[chosen]
        for mapped in maps:
            mapped.flush()

    def seal(self, description: dict[str, Any]) -> None:
        """Add every shard (its SHA-256) to the entry's seal; hold the entry's lock."""
        for name in self.names:
            with open(self.entry.file(name), "rb") as handle:
                os.fsync(handle.fileno())
        self.entry.add_files_to_seal({name: file_sha256(self.entry.file(name)) for name in self.names}, description)

    def open(self) -> bool:
        """Map the shards read-only when the seal lists every one with its content; False when they must be filled."""
        files = self.entry.sealed_files()
        for name in self.names:
            path = self.entry.file(name)
            if name not in files or not path.is_file() or path.stat().st_size % self.layout.record_bytes:
                return False
            if file_sha256(path) != files[name]:
                log.warning("soft-label shard %s changed since it was sealed; recomputing the epoch", path)
                return False
        self._maps = self._mapped("r")
        return True

    def read(self, sample_indices: Tensor) -> np.ndarray:
        """uint8 (B, record_bytes) records of ``sample_indices`` (a copy out of the mapped shards)."""
        assert self._maps is not None, "open() first"
        indices = sample_indices.cpu().numpy()
        shard, row = np.divmod(indices, self.rows)
        out = np.empty((len(indices), self.layout.record_bytes), dtype=np.uint8)
        for number in np.unique(shard):
            chosen = shard == number
            out[chosen] = self._maps[number][row[chosen]]
        return out


def split_ranges(num: int, parts: int, batch_size: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ranges of plan positions covering [0, num), each starting at a multiple of
    ``batch_size``: filled by separate workers, they compute the same batches as one worker (the same bytes)."""
    batches = math.ceil(num / batch_size)
    bounds = [min(num, round(batches * part / parts) * batch_size) for part in range(parts + 1)]
    return [(bounds[p], bounds[p + 1]) for p in range(parts) if bounds[p] < bounds[p + 1]]


def range_batches(
    pipeline: AugmentedBatches, epoch: int, batch_size: int, start: int, stop: int
) -> Iterator[tuple[Tensor, ...]]:
    """The augmented batches at plan positions [start, stop) of ``epoch``."""
    if start % batch_size:
        raise ValueError(f"range start {start} is not a multiple of the fill batch size {batch_size}")
    return pipeline.augmented_train_range(epoch, batch_size, start, stop)


def fill_range(
    store: ShardedEpoch,
    teacher: nn.Module,
    pipeline: AugmentedBatches,
    runtime: Runtime,
    batch_size: int,
    start: int,
    stop: int,
) -> None:
    """Compute the teacher's logits for plan positions [start, stop) of the store's epoch and write their records
    (the shards allocated beforehand; seal them once every range is written)."""
    fill_records(store, teacher, range_batches(pipeline, store.epoch, batch_size, start, stop), runtime)


def fill_records(
    store: ShardedEpoch, teacher: nn.Module, batches: Iterator[tuple[Tensor, ...]], runtime: Runtime
) -> None:
    """Write the records of the teacher's logits of each batch ``(images, labels, record indices)`` of ``batches``."""
    with torch.no_grad(), runtime.autocast():
        for images, _, records in batches:
            store.write(records, store.layout.encode(teacher(images).float()))


class ShardedTeacher(CachedTeacher):
    """The soft-label cache in shards (:class:`ShardedEpoch`): each batch's logits decoded from the mapped records."""

    _epoch: ShardedEpoch | None = None  # the shards that begin_epoch mapped

    @functools.cached_property
    def layout(self) -> RecordLayout:
        """One sample's fixed-size record: the top-k logits in the storage dtype, their indices, the rest's mean."""
        return RecordLayout(self.num_classes, self.top_k, self.dtype)

    def epoch_store(self, epoch: int) -> ShardedEpoch:
        """The shards of ``epoch`` in this entry."""
        return ShardedEpoch(self.entry, epoch, self.pipeline.num_train, self.layout)

    def begin_epoch(self, epoch: int) -> None:
        self._epoch = self._ready(self.epoch_store(epoch))

    def _fill(self, store: ShardedEpoch, start: int, stop: int) -> None:
        """Write the records [start, stop) of ``store`` (plan positions of its epoch)."""
        fill_range(store, self.teacher, self.pipeline, self.runtime, self.batch_size, start, stop)

    def _ready(self, store: ShardedEpoch) -> ShardedEpoch:
        """``store`` mapped for reading: read as sealed, or filled (by this process, or each data-parallel worker its
        range) and sealed first."""
        if self.workers.parallel:
            return self._shards_together(store)
        with self.entry.locked("computing these soft labels"):
            self._check_entry()
            if store.open():
                self.epochs_read += 1
            else:
                self._make_room(store)
                started = time.perf_counter()
                store.allocate()
                self._fill(store, 0, store.num)
                store.seal(self.description)
                self.fill_seconds += time.perf_counter() - started
                self.epochs_computed += 1
                if not store.open():
                    raise OSError(f"{self.entry.path}: soft-label shards unusable right after writing them")
        os.utime(self.entry.path)
        return store

    def _what(self, store: ShardedEpoch) -> tuple[str, str]:
        """What ``store``'s records are and their count, for the line logged before they are written."""
        return f"epoch {store.epoch}", f"{store.num} samples"

    def _make_room(self, store: ShardedEpoch) -> None:
        """Say what the shards take, then evict older entries to fit them under ``max_gb``."""
        what, count = self._what(store)
        log.info(
            "soft-label cache: %s takes %.1f MB (%s x %d bytes, %s) in %d shards at %s; "
            "counted against soft_label_cache.max_gb=%.3g",
            what, store.nbytes / BYTES_PER_MB, count, self.layout.record_bytes,
            f"top-{self.layout.k}" if not self.layout.full else "all logits", store.num_shards,
            self.entry.path, self.max_bytes / 1024**3,
        )  # fmt: skip
        self._evict(reserve=store.nbytes)

    def _shards_together(self, store: ShardedEpoch) -> ShardedEpoch:
        """Shards for data-parallel workers: the leader opens them, or allocates them; then each worker fills its
        range of the fill's batches (:func:`split_ranges`: the bytes of one process) and the leader seals."""
        workers = self.workers
        found = False
        if workers.leader:
            with self.entry.locked("computing these soft labels"):
                self._check_entry()
                found = store.open()
                if not found:
                    self._make_room(store)
                    store.allocate()
        if workers.broadcast(found):
            self.epochs_read += 1
        else:
            started = time.perf_counter()
            ranges = split_ranges(store.num, workers.world, self.batch_size)
            if workers.rank < len(ranges):
                self._fill(store, *ranges[workers.rank])
            workers.barrier()
            if workers.leader:
                with self.entry.locked("sealing these soft labels"):
                    store.seal(self.description)
            workers.barrier()
            self.fill_seconds += time.perf_counter() - started
            self.epochs_computed += 1
        if not store.open():
            raise OSError(f"{self.entry.path}: the soft-label shards {store.stem}.* cannot be read")
        return store

    def __call__(self, images: Tensor, sample_indices: Tensor) -> TeacherOutput:
        assert self._epoch is not None, "begin_epoch() must be called first"
        logits = self.layout.decode(self._epoch.read(sample_indices))
        return TeacherOutput(logits.to(self.runtime.device, non_blocking=True))


def crop_pool_description(
    teacher_sha256: str,
    dataset_content: str,
    crops: Mapping[str, Any],
    normalize: Any,
    dtype: torch.dtype,
    top_k: int | None,
    teacher_precision: torch.dtype | None,
    channels_last: bool,
) -> dict[str, Any]:
    """Everything that determines a crop pool's records (its entry's key): the teacher, the images, the pool's crops
    (``crops``: size, scale, ratio, flip, K, pool seed) and how logits are computed and stored; never the run's seed,
    epochs or method."""
    return {
        "format": 1,
        "kind": "crop-pool",
        "teacher_sha256": teacher_sha256,
        "dataset_content": dataset_content,
        "crops": dict(crops),
        "normalize": normalize,
        "dtype": str(dtype).removeprefix("torch."),
        "top_k": top_k,
        "teacher_precision": str(teacher_precision),
        "channels_last": channels_last,
    }


class PooledTeacher(ShardedTeacher):
    """The teacher's logits of the crop pool's N x K crops (``pipeline.crop_pool``), stored once in one entry
    (record ``i * K + j``: crop j of image i; its key :func:`crop_pool_description`) and read at every epoch's choice
    of each sample's crop (``pipeline.epoch_plan(epoch).choice``)."""

    _records: Tensor | None = None  # each sample's record in this epoch

    @property
    def crops_per_image(self) -> int:
        """K: the pool's crops per image."""
        return int(self.pipeline.crop_pool.crops_per_image)

    def pool_store(self) -> ShardedEpoch:
        """The pool's shards in this entry: N x K records."""
        return ShardedEpoch(self.entry, 0, self.pipeline.num_train * self.crops_per_image, self.layout, stem="pool")

    def begin_epoch(self, epoch: int) -> None:
        if self._epoch is None:
            self._epoch = self._ready(self.pool_store())
        else:
            os.utime(self.entry.path)  # recency for eviction
        samples = torch.arange(self.pipeline.num_train, dtype=torch.int64)
        self._records = samples * self.crops_per_image + self.pipeline.epoch_plan(epoch).choice

    def _fill(self, store: ShardedEpoch, start: int, stop: int) -> None:
        """Write the records of pool positions [start, stop)."""
        fill_records(store, self.teacher, self.pipeline.pool_range(self.batch_size, start, stop), self.runtime)

    def _what(self, store: ShardedEpoch) -> tuple[str, str]:
        return "the crop pool", f"{self.pipeline.num_train} images x {self.crops_per_image} crops"

    def __call__(self, images: Tensor, sample_indices: Tensor) -> TeacherOutput:
        assert self._epoch is not None and self._records is not None, "begin_epoch() must be called first"
        logits = self.layout.decode(self._epoch.read(self._records[sample_indices.cpu()]))
        return TeacherOutput(logits.to(self.runtime.device, non_blocking=True))
