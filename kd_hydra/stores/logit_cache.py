"""The soft-label cache: the teacher's logits for every augmented sample of an epoch, on disk.

Every job of a temperature x alpha grid with the same seed sees the same augmented batches
(:class:`~kd_hydra.data.pipeline.InMemoryPipeline` draws them from ``(seed, epoch)`` only), so the
teacher's logits for an epoch are computed once, by whichever job gets there first, and read by
all the others. An entry is ``<cache_dir>/soft_labels/<key>/epoch_NNNN.pt`` (a sealed cache entry); ``key`` hashes the
teacher checkpoint's SHA-256, the dataset content, augmentation, normalisation, seed, storage
dtype, top-k and the teacher's precision.

A run that computes the logits uses exactly what it stores (rounded to the storage dtype), so a
run that reads the cache trains the identical student. The sharded form for top-k and image files is
:class:`~kd_hydra.stores.sharded_logits.ShardedTeacher`.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from filelock import FileLock
from torch import Tensor, nn

from kd_hydra.errors import CheckpointError
from kd_hydra.stores.cache_entry import CacheEntry, entry_name
from kd_hydra.train.batches import TeacherOutput
from kd_hydra.train.distributed import SINGLE, Workers
from kd_hydra.train.runtime import Runtime

log = logging.getLogger(__name__)

CACHE_FORMAT = "kd-hydra/soft-labels-v2"

EVICTION_LOCK = ".eviction.lock"


def encode_logits(logits: Tensor, dtype: torch.dtype, top_k: int | None) -> dict[str, Tensor]:
    """Compact form of ``(N, C)`` logits: all of them in ``dtype``, or the top-k plus the mean of the rest."""
    logits = logits.float()
    num_classes = logits.shape[1]
    if top_k is None or top_k >= num_classes:
        return {"values": logits.to(dtype).cpu()}
    values, indices = logits.topk(top_k, dim=1)
    rest_mean = (logits.sum(dim=1) - values.sum(dim=1)) / (num_classes - top_k)
    index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
    return {
        "values": values.to(dtype).cpu(),
        "indices": indices.to(index_dtype).cpu(),
        "rest_mean": rest_mean.to(dtype).cpu(),
    }


def decode_logits(stored: Mapping[str, Tensor], num_classes: int) -> Tensor:
    """Float32 ``(N, C)`` logits from :func:`encode_logits`' output (top-k: the rest get their mean)."""
    values = stored["values"].float()
    if "indices" not in stored:
        return values
    logits = stored["rest_mean"].float()[:, None].expand(-1, num_classes).clone()
    return logits.scatter_(1, stored["indices"].long(), values)


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cache_description(
    teacher_sha256: str,
    dataset_content: str,
    augment: Any,
    normalize: Any,
    seed: int,
    dtype: torch.dtype,
    top_k: int | None,
    teacher_precision: torch.dtype | None,
    channels_last: bool,
) -> dict[str, Any]:
    """Everything that determines an entry's logits: its key (hashed by :class:`CachedTeacher`).

    The teacher's memory format is part of it: convolution kernels differ in the last bits between layouts.
    """
    return {
        "format": 1,
        "teacher_sha256": teacher_sha256,
        "dataset_content": dataset_content,
        "augment": augment,
        "normalize": normalize,
        "seed": seed,
        "dtype": str(dtype).removeprefix("torch."),
        "top_k": top_k,
        "teacher_precision": str(teacher_precision),
        "channels_last": channels_last,
    }


class AugmentedBatches(Protocol):
    """A training pipeline whose augmented batches are a function of ``(seed, epoch)`` (the cache's premise)."""

    num_train: int
    #: Whether an epoch's logits fit the dense cache (false: the sharded one).
    in_memory: bool
    #: The crop pool whose crops training takes (``crops_per_image``), or None.
    crop_pool: Any

    def augmented_train_batches(self, epoch: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...

    def augmented_train_range(
        self, epoch: int, batch_size: int, start: int, stop: int
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...


class CachedTeacher:
    """Teacher logits served from the cache; missing epochs are computed (under a lock) and stored."""

    def __init__(
        self,
        root: Path,
        description: Mapping[str, Any],
        teacher: nn.Module,
        pipeline: AugmentedBatches,
        runtime: Runtime,
        num_classes: int,
        dtype: torch.dtype,
        top_k: int | None,
        batch_size: int,
        max_bytes: int,
        workers: Workers = SINGLE,
    ) -> None:
        self.root = Path(root)
        self.description = dict(description)
        self.entry = CacheEntry(self.root / entry_name(description, digits=24))
        self.teacher = teacher.eval().requires_grad_(False)
        self.pipeline = pipeline
        self.runtime = runtime
        self.num_classes = num_classes
        self.dtype = dtype
        self.top_k = top_k
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.workers = workers
        self.epochs_computed = 0
        self.epochs_read = 0
        self.fill_seconds = 0.0  # computing and storing this run's missing epochs
        self._current: Tensor | None = None

    @property
    def status(self) -> str:
        """``cold`` if this run computed any epoch's logits, else ``warm``."""
        return "cold" if self.epochs_computed else "warm"

    def begin_epoch(self, epoch: int) -> None:
        name = f"epoch_{epoch:04d}.pt"
        if self.workers.parallel:
            stored = self._epoch_together(epoch, name)
            self._current = decode_logits(stored, self.num_classes).to(self.runtime.device)
            return
        with self.entry.locked("computing these soft labels"):
            self._check_entry()
            stored = self._read(name)
            if stored is None:
                started = time.perf_counter()
                stored = encode_logits(self._compute(epoch), self.dtype, self.top_k)
                self._write(name, stored)
                self.fill_seconds += time.perf_counter() - started
                self.epochs_computed += 1
            else:
                self.epochs_read += 1
        os.utime(self.entry.path)  # recency for eviction
        self._current = decode_logits(stored, self.num_classes).to(self.runtime.device)

    def _epoch_together(self, epoch: int, name: str) -> dict[str, Tensor]:
        """An epoch's stored logits for data-parallel workers: the leader reads the entry; when the epoch is missing,
        each worker computes its share of the fill's batches, the shares are summed, and the leader stores them
        (the same bytes as one process computes: the same batches through the same teacher)."""
        stored = None
        if self.workers.leader:
            with self.entry.locked("computing these soft labels"):
                self._check_entry()
                stored = self._read(name)
        if self.workers.broadcast(stored is not None):
            stored = stored if stored is not None else self._read(name)
            if stored is not None:
                self.epochs_read += 1
                return stored
            raise CheckpointError(f"{self.entry.file(name)}: the leader's soft labels cannot be read")
        started = time.perf_counter()
        logits = self.workers.sum_(self._compute(epoch))
        stored = encode_logits(logits, self.dtype, self.top_k)
        if self.workers.leader:
            with self.entry.locked("storing these soft labels"):
                self._write(name, stored)
        self.fill_seconds += time.perf_counter() - started
        self.epochs_computed += 1
        return stored

    def __call__(self, images: Tensor, sample_indices: Tensor) -> TeacherOutput:
        assert self._current is not None, "begin_epoch() must be called first"
        return TeacherOutput(self._current[sample_indices])

    def _compute(self, epoch: int) -> Tensor:
        """The teacher's logits of every training sample in ``epoch`` (of several workers': each one's share of the
        fill's batches, zeros elsewhere)."""
        workers = self.workers
        allocate = torch.zeros if workers.parallel else torch.empty
        logits = allocate(self.pipeline.num_train, self.num_classes, device=self.runtime.device)
        with torch.no_grad(), self.runtime.autocast():
            batches = self.pipeline.augmented_train_batches(epoch, self.batch_size)
            for number, (images, _, sample_indices) in enumerate(batches):
                if number % workers.world == workers.rank:
                    logits[sample_indices] = self.teacher(images).float()
        return logits

    def _check_entry(self) -> None:
        """Remove the entry when its seal records another description (it was placed under this key, even with a
        file damaged): its logits belong to another teacher or plan and are never served. Call under the entry's lock
        before every epoch's read: the seal alone is read, each file is hashed when it is read."""
        seal = self.entry.read_seal()
        if seal is not None and not self.entry.describes(seal, self.description):
            shutil.rmtree(self.entry.path, ignore_errors=True)

    def _read(self, name: str) -> dict[str, Tensor] | None:
        data = self.entry.read_sealed(name)
        if data is None:
            if self.entry.file(name).is_file() and not self.entry.is_sealed:
                log.info("soft-label cache file %s predates sealed entries; recomputing it", self.entry.file(name))
            return None
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            stored = payload["tensors"]
            if payload["format"] != CACHE_FORMAT or stored["values"].shape[0] != self.pipeline.num_train:
                raise ValueError("format or sample count mismatch")
        except Exception as error:  # unreadable entry: recompute, never use
            log.warning("soft-label cache file %s is unusable (%s); recomputing it", self.entry.file(name), error)
            return None
        return stored

    def _write(self, name: str, stored: dict[str, Tensor]) -> None:
        try:
            payload = _serialize({"format": CACHE_FORMAT, "tensors": stored})
            self.entry.add_sealed(name, payload, description=self.description)
        except OSError as error:  # e.g. evicted by another job meanwhile: keep going without storing
            log.warning("could not store soft labels at %s (%s)", self.entry.file(name), error)
            return
        self._evict()

    def _evict(self, reserve: int = 0) -> None:
        """Delete least recently used entries (never this one) until the cache fits ``max_bytes``, with room for
        ``reserve`` more bytes (an epoch about to be written)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / EVICTION_LOCK)):
            entries = [p for p in self.root.iterdir() if p.is_dir()]
            sizes = {p: _directory_bytes(p) for p in entries}
            total = sum(sizes.values()) + reserve
            for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
                if total <= self.max_bytes:
                    break
                if entry == self.entry.path:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]
                log.info("soft-label cache over its limit: evicted %s", entry.name)
            if total > self.max_bytes:
                log.warning("soft-label cache entry %s alone exceeds soft_label_cache.max_gb", self.entry.path.name)


def _serialize(payload: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    return buffer.getvalue()
