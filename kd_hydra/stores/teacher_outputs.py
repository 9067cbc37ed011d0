"""A distill run's teacher outputs: live (the teacher runs on every batch) or cached (the soft-label cache), the
two :class:`~kd_hydra.train.batches.TeacherSource` implementations.

:func:`teacher_outputs` chooses: methods that read features, folder data on the DataLoader path and a
disabled cache run the teacher live; logit methods read the soft-label cache: dense per epoch on in-memory data
(:class:`~kd_hydra.stores.logit_cache.CachedTeacher`), fixed-size records in shards with ``top_k`` or on image
files (:class:`~kd_hydra.stores.sharded_logits.ShardedTeacher`), the logits of the crop pool's N x K crops once for
every epoch, seed and logit method when the pipeline has a crop pool
(:class:`~kd_hydra.stores.sharded_logits.PooledTeacher`). It takes plain typed arguments
(:class:`TeacherNeeds`, :class:`SoftLabelCacheSettings`, :class:`TrainingBatchesKey`, a
:class:`~kd_hydra.train.runtime.Runtime`), built from the config by the run (:mod:`kd_hydra.run.context`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_hydra.stores.logit_cache import AugmentedBatches, CachedTeacher, cache_description
from kd_hydra.stores.sharded_logits import PooledTeacher, ShardedTeacher, crop_pool_description
from kd_hydra.train.batches import TeacherOutput
from kd_hydra.train.distributed import SINGLE, Workers
from kd_hydra.train.runtime import Runtime

log = logging.getLogger(__name__)

#: Teacher batch size of the cache-filling pass when ``soft_label_cache.batch_size`` is null, by device type:
#: 64 was the fastest on the CPU for every zoo model (benchmarks/cpu_defaults.py); large batches elsewhere.
DEFAULT_FILL_BATCH = {"cpu": 64}
ACCELERATOR_FILL_BATCH = 1024


class LiveTeacher:
    """Runs the frozen teacher on every batch, recording ``feature_names`` (feature methods, folder data).

    With ``batch_statistics`` (methods whose ``teacher_batch_statistics`` is set, OFD) the teacher's BatchNorms
    normalise with each batch's statistics, as in train mode, without updating their running statistics.
    """

    def __init__(
        self, teacher: nn.Module, runtime: Runtime, feature_names: Sequence[str] = (), batch_statistics: bool = False
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        if batch_statistics:
            for module in teacher.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
                    module.track_running_stats = False  # batch statistics, running ones left as they are
        self.runtime = runtime
        self.recorder = None
        if feature_names:
            from kd_hydra.models.features import FeatureRecorder

            self.recorder = FeatureRecorder(teacher, list(feature_names))

    def begin_epoch(self, epoch: int) -> None:
        pass

    def __call__(self, images: Tensor, sample_indices: Tensor) -> TeacherOutput:
        with torch.no_grad(), self.runtime.autocast():
            logits = self.teacher(images).float()
        features = dict(self.recorder.features) if self.recorder is not None else {}
        return TeacherOutput(logits, features)


def fill_batch_size(configured: int | None, device: torch.device) -> int:
    """``soft_label_cache.batch_size``, or the measured default for ``device`` when it is null."""
    return configured if configured is not None else DEFAULT_FILL_BATCH.get(device.type, ACCELERATOR_FILL_BATCH)


CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
BYTES_PER_GB = 1024**3


@dataclass(frozen=True)
class TeacherNeeds:
    """What a method needs of the teacher: the feature points it reads, whether it reads anything the cache cannot
    hold (features, a strongly augmented view), and batch statistics in the teacher's BatchNorms (OFD)."""

    feature_names: tuple[str, ...]
    live_only: bool
    batch_statistics: bool


@dataclass(frozen=True)
class SoftLabelCacheSettings:
    """``soft_label_cache.*`` resolved: where entries live, whether they are used, how logits are stored (dtype,
    top-k), the size beyond which the oldest entries are evicted, and the teacher's batch while filling
    (None: the measured default for the device, :func:`fill_batch_size`)."""

    root: Path
    enabled: bool
    dtype: torch.dtype
    top_k: int | None
    max_bytes: int
    fill_batch_size: int | None


@dataclass(frozen=True)
class TrainingBatchesKey:
    """What determines the augmented training batches of every epoch: the data's content digest, its
    augmentation and normalisation (plain values) and the seed of the run."""

    content: str
    augment: Any
    normalize: Any
    seed: int


@dataclass(frozen=True)
class TeacherOutputs:
    """The chosen source of a distill run's teacher outputs."""

    source: LiveTeacher | CachedTeacher

    @property
    def kind(self) -> str:
        """``cache`` (the soft-label cache) or ``live`` (the teacher runs on every batch): metrics.json's
        ``teacher_outputs``."""
        return "cache" if isinstance(self.source, CachedTeacher) else "live"

    @property
    def cache_status(self) -> str:
        """``off`` for a live teacher, else ``cold``/``warm`` (meaningful once training ran)."""
        return self.source.status if isinstance(self.source, CachedTeacher) else "off"

    @property
    def fill_seconds(self) -> float | None:
        """Seconds this run spent filling the cache (0 when it read every epoch); None for a live teacher."""
        return self.source.fill_seconds if isinstance(self.source, CachedTeacher) else None


def teacher_outputs(
    teacher: nn.Module,
    teacher_sha256: str,
    needs: TeacherNeeds,
    pipeline: AugmentedBatches,
    batches: TrainingBatchesKey,
    num_classes: int,
    cache: SoftLabelCacheSettings,
    runtime: Runtime,
    workers: Workers = SINGLE,
) -> TeacherOutputs:
    """The soft-label cache for logit methods on in-memory data (when enabled), else the live teacher.

    Methods that read features or a strongly augmented view (MLKD) always get the live teacher (with batch
    statistics for OFD). A pipeline without ``supports_logit_cache`` (the DataLoader path) gets it too. With
    ``top_k``, or a pipeline whose ``in_memory`` is false, the cache is the sharded one (:mod:`.sharded_logits`); with
    the pipeline's ``crop_pool``, the pool's (keyed by :func:`~.sharded_logits.crop_pool_description`, never the seed).
    The live teacher sees the pipeline's batches: with a crop pool, the pool's crops.
    """
    source: LiveTeacher | CachedTeacher
    sharded = cache.top_k is not None or not pipeline.in_memory
    pool = pipeline.crop_pool
    if needs.live_only or needs.feature_names:
        log.info(
            "the method reads features or a strong view: the teacher runs on every batch%s",
            "" if pool is None else f" (on the crop pool's crops, {pool.crops_per_image} per image)",
        )
        source = LiveTeacher(teacher, runtime, list(needs.feature_names), needs.batch_statistics)
    elif not cache.enabled:
        source = LiveTeacher(teacher, runtime)
    elif not pipeline.supports_logit_cache:
        log.info("soft-label cache does not apply to this dataset pipeline: the teacher runs on every batch")
        source = LiveTeacher(teacher, runtime)
    elif pool is not None:  # the crop pool's logits: N x K records in one entry, for every epoch and seed
        description = crop_pool_description(
            teacher_sha256,
            batches.content,
            pipeline.pool_description(),
            batches.normalize,
            cache.dtype,
            cache.top_k,
            runtime.autocast_dtype,
            runtime.channels_last,
        )
        source = _cached(PooledTeacher, description, teacher, pipeline, num_classes, cache, runtime, workers)
    else:
        description = cache_description(
            teacher_sha256,
            batches.content,
            batches.augment,
            batches.normalize,
            batches.seed,
            cache.dtype,
            cache.top_k,
            runtime.autocast_dtype,
            runtime.channels_last,
        )
        if sharded:  # top-k, or image files: fixed-size records in shards, never an (N, C) tensor
            cached_class: type[CachedTeacher] = ShardedTeacher
        else:
            cached_class = CachedTeacher
        source = _cached(cached_class, description, teacher, pipeline, num_classes, cache, runtime, workers)
    if runtime.compile:
        source.teacher = torch.compile(source.teacher)
    return TeacherOutputs(source)


def _cached(
    cached_class: type[CachedTeacher],
    description: dict[str, Any],
    teacher: nn.Module,
    pipeline: AugmentedBatches,
    num_classes: int,
    cache: SoftLabelCacheSettings,
    runtime: Runtime,
    workers: Workers,
) -> CachedTeacher:
    """A ``cached_class`` source of the entry ``description`` names, with the cache's settings."""
    return cached_class(
        cache.root,
        description,
        teacher,
        pipeline,
        runtime,
        num_classes=num_classes,
        dtype=cache.dtype,
        top_k=cache.top_k,
        batch_size=fill_batch_size(cache.fill_batch_size, runtime.device),
        max_bytes=cache.max_bytes,
        workers=workers,
    )
