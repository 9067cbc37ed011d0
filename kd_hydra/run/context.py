"""The run context: everything a run's recipe reads, built once before any training and never changed."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kd_hydra.data import (
    ArrayData,
    DatasetSpec,
    FolderData,
    InMemoryPipeline,
    LoaderPipeline,
    build_pipeline,
    load_dataset,
)
from kd_hydra.data.build import check_crop_pool
from kd_hydra.data.crop_pool import CropPool
from kd_hydra.errors import ConfigError
from kd_hydra.instantiate import build
from kd_hydra.models.checkpoints import ArchSignature
from kd_hydra.models.features import PROBE_BATCH
from kd_hydra.records import schema
from kd_hydra.records.identity import plain, teacher_id, teacher_identity
from kd_hydra.stores.teacher_outputs import BYTES_PER_GB, CACHE_DTYPES, SoftLabelCacheSettings, TrainingBatchesKey
from kd_hydra.stores.teachers import TeacherCheckpoint
from kd_hydra.trackers.fanout import RunLoggers
from kd_hydra.train.distributed import SINGLE, Workers
from kd_hydra.train.runtime import Runtime, configure_threads, resolve_runtime, spread_over_gpus

log = logging.getLogger(__name__)

#: Which config node builds each role's network, and which seed initialises it.
ROLE_SEEDS = {"teacher": "teacher_training.seed", "student": "trainer.seed"}


@dataclass(frozen=True)
class RunContext:
    """A run's settings, where it writes, how it computes, the data it reads and its trackers."""

    cfg: DictConfig
    out_dir: Path
    runtime: Runtime
    data: ArrayData | FolderData
    data_digest: str
    started: float
    trackers: RunLoggers
    #: This process's place among the job's data-parallel workers (one process: :data:`SINGLE`).
    workers: Workers = SINGLE

    @property
    def spec(self) -> DatasetSpec:
        return self.data.spec

    @property
    def top5(self) -> bool:
        return self.spec.num_classes >= schema.TOP5_MIN_CLASSES

    def cache_path(self, name: str) -> Path:
        """``<paths.cache_dir>/<name>``: the teacher store, soft labels, teacher evaluations."""
        return Path(self.cfg.paths.cache_dir) / name

    def arch(self, role: str) -> ArchSignature:
        node, spec = self.cfg[role], self.spec
        return ArchSignature(
            name=node.name,
            source=node.get("source", "zoo"),
            num_classes=spec.num_classes,
            in_channels=spec.channels,
            image_size=spec.image_size,
        )

    def network(self, role: str) -> nn.Module:
        """The ``teacher`` or ``student`` network for this dataset's shape, seeded, checked by a probe forward."""
        node, spec = self.cfg[role], self.spec
        torch.manual_seed(OmegaConf.select(self.cfg, ROLE_SEEDS[role]))
        try:
            model = build(node, num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.image_size)
        except ConfigError as error:
            raise ConfigError(f"{role}.{error.key}", str(error).split(": ", 1)[-1]) from error
        except Exception as error:
            raise ConfigError(role, f"{node.name} cannot be built: {error}") from error
        shape = f"{spec.channels}x{spec.image_size}x{spec.image_size}, {spec.num_classes} classes"
        probe = torch.zeros(PROBE_BATCH, spec.channels, spec.image_size, spec.image_size)
        model.eval()
        if self.workers.parallel and self.cfg.trainer.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        try:
            with torch.no_grad():
                logits = model(probe)
        except Exception as error:
            raise ConfigError(role, f"{node.name} does not fit dataset {spec.name} ({shape}): {error}") from error
        if tuple(logits.shape) != (PROBE_BATCH, spec.num_classes):
            raise ConfigError(
                role,
                f"{node.name} gives logits of shape {tuple(logits.shape)[1:]} on dataset "
                f"{spec.name} ({shape}); expected ({spec.num_classes},)",
            )
        return model

    def pipeline(
        self, batch_size: int, seed: int, shared: bool = True, crop_pool: CropPool | None = None
    ) -> InMemoryPipeline | LoaderPipeline:
        """Training and evaluation batches of this run's data on its device: this worker's share of each
        (``shared``), or all of them; with ``crop_pool``, training crops drawn from the pool."""
        trainer = self.cfg.trainer
        return build_pipeline(
            self.data,
            self.cfg.dataset,
            batch_size=batch_size,
            device=self.runtime.device,
            seed=seed,
            channels_last=self.runtime.channels_last,
            eval_batch_size=trainer.eval_batch_size,
            num_workers=trainer.num_workers,
            workers=self.workers if shared else SINGLE,
            crop_pool=crop_pool,
        )

    def crop_pool(self) -> CropPool | None:
        """``soft_label_cache.crops_per_image`` and ``.pool_seed`` as the pipeline takes them (None: no pool)."""
        crops = OmegaConf.select(self.cfg, "soft_label_cache.crops_per_image", default=None)
        seed = OmegaConf.select(self.cfg, "soft_label_cache.pool_seed", default=0)
        return None if crops is None else CropPool(int(crops), int(seed))

    # -- the stores' arguments, from the config ---------------------------------------------------------

    def teacher_identity(self) -> dict[str, Any]:
        """The key of this run's teacher in the store (:func:`kd_hydra.records.identity.teacher_identity`)."""
        return teacher_identity(self.cfg, self.data_digest)

    def teacher_label(self) -> str:
        """The readable part of the teacher's store entry: ``<arch>-<dataset>``."""
        return f"{self.cfg.teacher.name}-{self.spec.name}"

    def teacher_checkpoint(self, sha256: str) -> TeacherCheckpoint:
        """``teacher.checkpoint`` (SHA-256 ``sha256``) and the data its test accuracy is evaluated on."""
        return TeacherCheckpoint(
            path=Path(self.cfg.teacher.checkpoint),
            sha256=sha256,
            teacher_id=teacher_id(self.cfg, self.data_digest, sha256),
            data={"dataset_content": self.data_digest, "normalize": plain(self.cfg.dataset.normalize)},
            test_size=(self.spec.num_test, self.spec.num_classes),
        )

    def soft_label_cache(self) -> SoftLabelCacheSettings:
        """``soft_label_cache.*`` as the soft-label cache takes it."""
        cache = self.cfg.soft_label_cache
        return SoftLabelCacheSettings(
            root=self.cache_path("soft_labels"),
            enabled=cache.enabled,
            dtype=CACHE_DTYPES[str(plain(cache.dtype))],
            top_k=cache.top_k,
            max_bytes=int(cache.max_gb * BYTES_PER_GB),
            fill_batch_size=cache.batch_size,
        )

    def training_batches(self, seed: int) -> TrainingBatchesKey:
        """What determines this run's augmented training batches at ``seed``."""
        dataset = self.cfg.dataset
        return TrainingBatchesKey(self.data_digest, plain(dataset.augment), plain(dataset.normalize), seed)


def launcher_parallel_jobs() -> int:
    """How many jobs the Hydra launcher runs at once (1 outside Hydra or for a sequential launcher)."""
    if not HydraConfig.initialized():
        return 1
    n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if not isinstance(n_jobs, int):
        return 1

    return (os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)


def open_context(
    cfg: DictConfig,
    out_dir: Path,
    started: float | None = None,
    workers: Workers = SINGLE,
    planning: str | None = None,
) -> RunContext:
    """Resolve the runtime (a worker's own CUDA device), use the CPU threads, and load the data (with its content
    digest). ``planning`` names what a context that writes nothing is for (a sweep's plan), instead of its output."""
    threads = configure_threads(cfg.trainer.num_threads, launcher_parallel_jobs())
    trainer = cfg.trainer
    runtime = resolve_runtime(trainer.device, plain(trainer.precision), trainer.channels_last, trainer.compile)
    if workers.parallel and runtime.device.type == "cuda":
        runtime = dataclasses.replace(runtime, device=torch.device("cuda", workers.local_rank))
    elif os.environ.get("SUBMITIT_EXECUTOR") == "local" and runtime.device.type == "cuda":  # hydra/launcher=local_gpu
        job = int(OmegaConf.select(HydraConfig.get(), "job.num", default=0) or 0) if HydraConfig.initialized() else 0
        device = spread_over_gpus(runtime.device, job, torch.cuda.device_count())
        runtime = dataclasses.replace(runtime, device=device)
    if workers.parallel and trainer.sync_batchnorm and runtime.device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm", f"needs CUDA devices (this job runs on {runtime.device})")
    log.info(
        "mode=%s device=%s precision=%s threads=%d %s",
        plain(cfg.mode),
        runtime.device,
        runtime.autocast_dtype or "fp32",
        threads,
        f"output={out_dir}" if planning is None else f"(planning {planning})",
    )
    data = load_dataset(cfg.dataset)
    augment_enabled = bool(OmegaConf.select(cfg, "dataset.augment.enabled", default=True))
    check_crop_pool(OmegaConf.select(cfg, "soft_label_cache.crops_per_image", default=None), data, augment_enabled)
    spec = data.spec
    log.info(
        "dataset %s: %d train / %d validation / %d test images, %dx%dx%d, %d classes",
        spec.name,
        spec.num_train,
        spec.num_val,
        spec.num_test,
        spec.channels,
        spec.image_size,
        spec.image_size,
        spec.num_classes,
    )
    return RunContext(
        cfg=cfg,
        out_dir=out_dir,
        runtime=runtime,
        data=data,
        data_digest=data.fingerprint(),
        started=time.perf_counter() if started is None else started,
        trackers=RunLoggers(),
        workers=workers,
    )
