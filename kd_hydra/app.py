"""One job of kd-hydra: validate the config, load data, train what ``mode`` asks, write the run files."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kd_hydra import schema
from kd_hydra.config import CacheDtype, Mode, validate
from kd_hydra.data import build_pipeline
from kd_hydra.errors import ConfigError, KDHydraError
from kd_hydra.losses import CELoss
from kd_hydra.models import count_parameters
from kd_hydra.outputs import HistoryLog, metrics_record, write_json
from kd_hydra.soft_labels import CachedTeacher
from kd_hydra.teachers import (
    MODEL_FILE,
    ArchSignature,
    StoredTeacher,
    TeacherStore,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from kd_hydra.train import FitResult, LiveTeacher, evaluate, fit, resolve_runtime

log = logging.getLogger(__name__)

CACHE_DTYPES = {CacheDtype.float16: torch.float16, CacheDtype.bfloat16: torch.bfloat16,
                CacheDtype.float32: torch.float32}
BYTES_PER_GB = 1024**3
PROBE_BATCH = 2


def output_dir() -> Path:
    """The Hydra output directory of the current job."""
    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write its files; a failure still writes ``metrics.json`` (status failed), then re-raises."""
    started = time.perf_counter()
    out_dir = output_dir()
    try:
        return Job(cfg, out_dir, started).run()
    except BaseException as error:
        reason = str(error) if isinstance(error, KDHydraError) else f"{type(error).__name__}: {error}"
        write_json(out_dir / schema.METRICS_FILE, metrics_record(
            status=schema.STATUS_FAILED, reason=reason or type(error).__name__, mode=plain_value(cfg.get("mode")),
            dataset=OmegaConf.select(cfg, "dataset.name"), settings=settings_of(cfg),
            wall_seconds=time.perf_counter() - started))
        raise


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The dotted keys of ``schema.SETTINGS_KEYS`` with their resolved values (None where absent or unused).

    Teacher and baseline runs train with CE: their ``loss.*`` settings are None, not the unused kd values.
    """
    uses_loss_group = plain_value(cfg.get("mode")) == Mode.distill.value
    values = {}
    for key in schema.SETTINGS_KEYS:
        if key.startswith("loss.") and not uses_loss_group:
            values[key] = None
            continue
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that cannot resolve in a broken config
            value = None
        values[key] = plain_value(value)
    return values


def plain_value(value: Any) -> Any:
    """Enum config values (mode, precision) as their plain strings."""
    return value.value if isinstance(value, Enum) else value


def configure_threads(num_threads: int | None) -> int:
    """Use ``num_threads`` CPU threads, or cores / parallel jobs of the launcher when None."""
    if num_threads is None:
        cores = os.cpu_count() or 1
        parallel_jobs = 1
        if HydraConfig.initialized():
            n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
            if isinstance(n_jobs, int):
                parallel_jobs = cores if n_jobs < 0 else max(1, n_jobs)
        num_threads = max(1, cores // parallel_jobs)
    torch.set_num_threads(num_threads)
    return num_threads


def build_network(model_cfg: DictConfig, key: str, spec: Any, seed: int) -> nn.Module:
    """Instantiate ``model_cfg`` for the dataset's shape and check it with a probe forward pass."""
    torch.manual_seed(seed)
    try:
        model = build(model_cfg, num_classes=spec.num_classes, in_channels=spec.channels,
                            image_size=spec.image_size)
    except ConfigError as error:
        raise ConfigError(f"{key}.{error.key}", str(error).split(": ", 1)[-1]) from error
    except Exception as error:
        raise ConfigError(key, f"{model_cfg.name} cannot be built: {error}") from error
    shape = f"{spec.channels}x{spec.image_size}x{spec.image_size}, {spec.num_classes} classes"
    probe = torch.zeros(PROBE_BATCH, spec.channels, spec.image_size, spec.image_size)
    model.eval()
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as error:
        raise ConfigError(key, f"{model_cfg.name} does not fit dataset {spec.name} ({shape}): {error}") from error
    if tuple(logits.shape) != (PROBE_BATCH, spec.num_classes):
        raise ConfigError(key, f"{model_cfg.name} gives logits of shape {tuple(logits.shape)[1:]} on dataset "
                               f"{spec.name} ({shape}); expected ({spec.num_classes},)")
    return model


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but our own errors come out as themselves, not wrapped by Hydra."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, KDHydraError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def arch_signature(model_cfg: DictConfig, spec: Any) -> ArchSignature:
    return ArchSignature(name=model_cfg.name, source=model_cfg.get("source", "zoo"), num_classes=spec.num_classes,
                         in_channels=spec.channels, image_size=spec.image_size)


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class Job:
    """The work of one run directory, in the order: validate, data, models, teacher, training, files."""

    def __init__(self, cfg: DictConfig, out_dir: Path, started: float) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.started = started

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        validate(cfg)
        self.mode = Mode(cfg.mode)
        threads = configure_threads(cfg.trainer.num_threads)
        self.runtime = resolve_runtime(cfg.trainer.device, cfg.trainer.precision, cfg.trainer.channels_last,
                                       cfg.trainer.compile)
        log.info("mode=%s device=%s precision=%s threads=%d output=%s", self.mode.value, self.runtime.device,
                 self.runtime.autocast_dtype or "fp32", threads, self.out_dir)
        self.data = build(cfg.dataset.loader)
        self.spec = self.data.spec
        log.info("dataset %s: %d train / %d test images, %dx%dx%d, %d classes", self.spec.name, self.spec.num_train,
                 self.spec.num_test, self.spec.channels, self.spec.image_size, self.spec.image_size,
                 self.spec.num_classes)
        if self.mode is Mode.teacher:
            return self.run_teacher()
        if self.mode is Mode.student:
            return self.run_student(teacher=None)
        return self.run_distill()

    # -- building blocks -------------------------------------------------------------------------

    @functools.cached_property
    def data_fingerprint(self) -> str:
        """Content hash of the dataset (part of the teacher-store and soft-label-cache keys)."""
        return self.data.fingerprint()

    def pipeline(self, batch_size: int, seed: int) -> Any:
        trainer = self.cfg.trainer
        return build_pipeline(self.data, self.cfg.dataset, batch_size=batch_size, device=self.runtime.device,
                              seed=seed, channels_last=self.runtime.channels_last,
                              eval_batch_size=trainer.eval_batch_size, num_workers=trainer.num_workers)

    def train(self, model: nn.Module, pipeline: Any, loss_fn: nn.Module, optimizer_cfg: DictConfig,
              scheduler_cfg: DictConfig, epochs: int, seed: int, history: HistoryLog, label: str,
              teacher_logits: Any = None) -> FitResult:
        model = self.runtime.prepare(model)
        optimizer = instantiate(optimizer_cfg, _convert_="all")(model.parameters())
        scheduler = instantiate(scheduler_cfg, _convert_="all")(optimizer, epochs=epochs)
        step_model = torch.compile(model) if self.runtime.compile else model
        torch.manual_seed(seed)  # dropout draws do not depend on what ran before in this process
        return fit(step_model, pipeline, loss_fn, optimizer, scheduler, epochs, self.runtime, history,
                   teacher_logits=teacher_logits, eval_every=self.cfg.trainer.eval_every,
                   progress=self.cfg.trainer.progress, label=label)

    def teacher_description(self) -> dict[str, Any]:
        """Everything that determines a trained teacher: its key in the store."""
        cfg = self.cfg
        arch = {k: v for k, v in plain(cfg.teacher).items() if k not in ("checkpoint", "_target_")}
        return {
            "format": 1,
            "dataset": self.spec.name,
            "dataset_content": self.data_fingerprint,
            "augment": plain(cfg.dataset.augment),
            "normalize": plain(cfg.dataset.normalize),
            "arch": arch,
            "training": plain(cfg.teacher_training),
        }

    def obtain_teacher(self, teacher: nn.Module) -> StoredTeacher:
        """The stored teacher for this config, trained now (once, under a lock) if the store has none."""
        cfg = self.cfg
        training = cfg.teacher_training

        def train_teacher(model: nn.Module, entry_dir: Path) -> Mapping[str, Any]:
            pipeline = self.pipeline(training.batch_size, training.seed)
            result = self.train(model, pipeline, CELoss(), training.optimizer, training.scheduler, training.epochs,
                                training.seed, HistoryLog(entry_dir / schema.HISTORY_FILE), label="teacher")
            return summary_of(result)

        store = TeacherStore(Path(cfg.paths.cache_dir) / "teachers")
        label = f"{cfg.teacher.name}-{self.spec.name}"
        return store.get_or_train(self.teacher_description(), label, teacher,
                                  arch_signature(cfg.teacher, self.spec), train_teacher)

    # -- modes -----------------------------------------------------------------------------------

    def run_teacher(self) -> dict[str, Any]:
        cfg = self.cfg
        teacher = build_network(cfg.teacher, "teacher", self.spec, cfg.teacher_training.seed)
        stored = self.obtain_teacher(teacher)
        store_history = stored.model_path.parent / schema.HISTORY_FILE
        if store_history.is_file():
            shutil.copyfile(store_history, self.out_dir / schema.HISTORY_FILE)
        result = stored.result
        return self.finish(
            model=cfg.teacher.name, teacher=None, final_test_acc=result["final_test_acc"],
            best_test_acc=result["best_test_acc"], best_epoch=result["best_epoch"], epochs=result["epochs"],
            train_images_per_second=result["train_images_per_second"], model_params=count_parameters(teacher),
            teacher_source=stored.source, checkpoint=str(stored.model_path))

    def run_distill(self) -> dict[str, Any]:
        cfg = self.cfg
        teacher = build_network(cfg.teacher, "teacher", self.spec, cfg.teacher_training.seed)
        student = build_network(cfg.student, "student", self.spec, cfg.trainer.seed)  # probe before training
        checkpoint = cfg.teacher.get("checkpoint")
        if checkpoint:
            load_checkpoint(teacher, Path(checkpoint), arch_signature(cfg.teacher, self.spec))
            teacher_sha = file_sha256(Path(checkpoint))
            teacher = self.runtime.prepare(teacher)
            teacher_acc, _ = evaluate(teacher, self.pipeline(cfg.trainer.batch_size, cfg.trainer.seed).test_batches(),
                                      self.runtime)
            source = "checkpoint"
            log.info("teacher loaded from %s (test acc %.2f%%)", checkpoint, teacher_acc)
        else:
            stored = self.obtain_teacher(teacher)
            teacher_sha, teacher_acc, source = stored.sha256, stored.test_acc, stored.source
            teacher = self.runtime.prepare(teacher)
        teacher.eval().requires_grad_(False)
        if self.runtime.compile:
            teacher = torch.compile(teacher)
        return self.run_student(teacher=teacher, student=student, teacher_sha=teacher_sha,
                                teacher_info={"teacher": cfg.teacher.name, "teacher_test_acc": teacher_acc,
                                              "teacher_source": source,
                                              "teacher_params": count_parameters(teacher)})

    def run_student(self, teacher: nn.Module | None, student: nn.Module | None = None, teacher_sha: str = "",
                    teacher_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        trainer = cfg.trainer
        if student is None:
            student = build_network(cfg.student, "student", self.spec, trainer.seed)
        pipeline = self.pipeline(trainer.batch_size, trainer.seed)
        loss_fn = instantiate(cfg.loss) if teacher is not None else CELoss()
        teacher_logits, cache_status = None, None
        if teacher is not None:
            teacher_logits, cache_status = self.teacher_logits(teacher, teacher_sha, pipeline)
        history = HistoryLog(self.out_dir / schema.HISTORY_FILE)
        result = self.train(student, pipeline, loss_fn, cfg.optimizer, cfg.scheduler, trainer.epochs, trainer.seed,
                            history, label="student", teacher_logits=teacher_logits)
        if isinstance(teacher_logits, CachedTeacher):
            cache_status = teacher_logits.status
        checkpoint = None
        if trainer.save_checkpoint:
            checkpoint = self.out_dir / MODEL_FILE
            save_checkpoint(checkpoint, student, arch_signature(cfg.student, self.spec))
        return self.finish(model=cfg.student.name, **summary_of(result), model_params=count_parameters(student),
                           soft_label_cache=cache_status, checkpoint=str(checkpoint) if checkpoint else None,
                           **(teacher_info or {}))

    def teacher_logits(self, teacher: nn.Module, teacher_sha: str, pipeline: Any) -> tuple[Any, str]:
        """The soft-label cache when it applies (in-memory data, enabled), else the live teacher."""
        cfg = self.cfg
        cache = cfg.soft_label_cache
        if not cache.enabled:
            return LiveTeacher(teacher, self.runtime), "off"
        if not getattr(pipeline, "supports_logit_cache", False):
            log.info("soft-label cache does not apply to folder datasets: the teacher runs on every batch")
            return LiveTeacher(teacher, self.runtime), "off"
        description = {
            "format": 1,
            "teacher_sha256": teacher_sha,
            "dataset_content": self.data_fingerprint,
            "augment": plain(cfg.dataset.augment),
            "normalize": plain(cfg.dataset.normalize),
            "seed": cfg.trainer.seed,
            "dtype": CacheDtype(cache.dtype).value,
            "top_k": cache.top_k,
            "teacher_precision": str(self.runtime.autocast_dtype),
        }
        cached = CachedTeacher(Path(cfg.paths.cache_dir) / "soft_labels", description, teacher, pipeline,
                               self.runtime, num_classes=self.spec.num_classes,
                               dtype=CACHE_DTYPES[CacheDtype(cache.dtype)], top_k=cache.top_k,
                               batch_size=cache.batch_size, max_bytes=int(cache.max_gb * BYTES_PER_GB))
        return cached, "cold"

    def finish(self, **values: Any) -> dict[str, Any]:
        """Write metrics.json (last file of the run) and print the run's one-line summary."""
        record = metrics_record(status=schema.STATUS_COMPLETED, mode=self.mode.value, dataset=self.spec.name,
                                settings=settings_of(self.cfg), wall_seconds=time.perf_counter() - self.started,
                                **values)
        write_json(self.out_dir / schema.METRICS_FILE, record)
        print(headline(record, self.out_dir), flush=True)
        return record


def summary_of(result: FitResult) -> dict[str, Any]:
    return {"final_test_acc": result.final_test_acc, "best_test_acc": result.best_test_acc,
            "best_epoch": result.best_epoch, "epochs": result.epochs,
            "train_images_per_second": result.train_images_per_second}


def headline(record: Mapping[str, Any], out_dir: Path) -> str:
    """One line with the numbers that matter, e.g. for the end of a terminal session or a CI log."""
    what = record["model"] if record["teacher"] is None else f"{record['teacher']} -> {record['model']}"
    settings = record["settings"]
    loss = ""
    if record["mode"] == Mode.distill.value:
        loss = f" T={settings['loss.temperature']:g} alpha={settings['loss.alpha']:g}"
    teacher = "" if record["teacher_test_acc"] is None else f", teacher {record['teacher_test_acc']:.2f}%"
    return (f"[kd-hydra] {record['mode']} {what} on {record['dataset']}{loss}: test acc "
            f"{record['final_test_acc']:.2f}% (best {record['best_test_acc']:.2f}% @ epoch {record['best_epoch']})"
            f"{teacher}, {record['epochs']} epochs, {record['wall_seconds']:.1f}s, "
            f"{record['train_images_per_second']:.0f} img/s -> {out_dir}")
