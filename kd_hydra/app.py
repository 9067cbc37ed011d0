"""One job of kd-hydra: validate the config, load data, train what ``mode`` asks, write the run files."""

from __future__ import annotations

import functools
import json
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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kd_hydra import schema
from kd_hydra.config import CacheDtype, Mode, Resume, validate
from kd_hydra.data import build_pipeline, load_dataset
from kd_hydra.errors import ConfigError, KDHydraError
from kd_hydra.instantiate import build
from kd_hydra.loggers import RunLoggers, build_loggers, run_identity
from kd_hydra.methods import DistillMethod, FeatureRequest, build_method
from kd_hydra.methods.ce import CrossEntropy
from kd_hydra.models import count_parameters
from kd_hydra.outputs import HistoryLog, metrics_record, write_json
from kd_hydra.soft_labels import CachedTeacher, cache_description, fill_batch_size
from kd_hydra.teachers import (
    MODEL_FILE,
    ArchSignature,
    StoredTeacher,
    TeacherStore,
    config_digest,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from kd_hydra.train import Checkpointing, FitResult, LiveTeacher, TeacherSource, evaluate, fit, resolve_runtime

log = logging.getLogger(__name__)

CACHE_DTYPES = {
    CacheDtype.float16: torch.float16,
    CacheDtype.bfloat16: torch.bfloat16,
    CacheDtype.float32: torch.float32,
}
BYTES_PER_GB = 1024**3
PROBE_BATCH = 2
#: Config keys that do not change what a run computes: they may differ between a run and its resumption.
NON_TRAINING_KEYS = (
    "paths",
    "logger",
    "hydra",
    "optimized_metric",
    "trainer.resume",
    "trainer.checkpoint_every",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.num_workers",
    "trainer.save_checkpoint",
    "trainer.eval_batch_size",
    "soft_label_cache.max_gb",
)


def output_dir() -> Path:
    """The Hydra output directory of the current job."""
    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write its files; a failure still writes ``metrics.json`` (status failed), then re-raises.

    A run directory that already holds a completed run of the same settings is reported and left alone.
    """
    started = time.perf_counter()
    out_dir = output_dir()
    completed = completed_run(cfg, out_dir)
    if completed is not None:
        print(headline(completed, out_dir, prefix="already completed, left alone: "), flush=True)
        return completed
    job = Job(cfg, out_dir, started)
    try:
        return job.run()
    except Exception as error:  # interrupts (Ctrl-C, a scheduler's preemption) are not failures: no metrics.json
        reason = str(error) if isinstance(error, KDHydraError) else f"{type(error).__name__}: {error}"
        write_json(
            out_dir / schema.METRICS_FILE,
            metrics_record(
                status=schema.STATUS_FAILED,
                reason=reason or type(error).__name__,
                mode=plain_value(cfg.get("mode")),
                dataset=OmegaConf.select(cfg, "dataset.name"),
                settings=settings_of(cfg),
                config_digest=safe_digest(cfg),
                wall_seconds=time.perf_counter() - started,
            ),
        )
        job.trackers.close(schema.STATUS_FAILED)
        raise


def completed_run(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """The metrics of a completed run in ``out_dir`` with this config's settings (None: train).

    A completed run of other settings is refused (its results are never overwritten) unless
    ``trainer.resume=never``.
    """
    path = out_dir / schema.METRICS_FILE
    if OmegaConf.select(cfg, "trainer.resume") == Resume.never or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != schema.STATUS_COMPLETED:
        return None
    if record.get("config_digest") != safe_digest(cfg):
        raise ConfigError(
            "trainer.resume",
            f"{out_dir} already holds a completed run of other settings; use another "
            "run directory, or trainer.resume=never to overwrite it",
        )
    return record


def training_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys, without the keys that do not change what is computed."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if any(dotted == skip or dotted.startswith(skip + ".") for skip in NON_TRAINING_KEYS):
                continue
            if isinstance(value, dict):
                walk(value, dotted + ".")
            else:
                flat[dotted] = value

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


def safe_digest(cfg: DictConfig) -> str | None:
    """``config_digest`` of the training settings, or None for a config that cannot be resolved."""
    try:
        return config_digest(training_settings(cfg))
    except Exception:  # a broken config (e.g. a missing interpolation) still gets its failed metrics.json
        return None


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """``schema.SETTINGS_KEYS`` plus every ``loss.*`` key, resolved (None where absent or unused).

    Teacher and baseline runs train with CE: their ``loss.*`` settings are None, not the unused method's values.
    """
    uses_loss_group = plain_value(cfg.get("mode")) == Mode.distill.value
    loss_keys = [f"loss.{key}" for key in (cfg.get("loss") or {}) if key != "_target_"]
    values = {}
    for key in dict.fromkeys((*schema.SETTINGS_KEYS, *loss_keys)):
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
        model = build(model_cfg, num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.image_size)
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
        raise ConfigError(
            key,
            f"{model_cfg.name} gives logits of shape {tuple(logits.shape)[1:]} on dataset "
            f"{spec.name} ({shape}); expected ({spec.num_classes},)",
        )
    return model


def arch_signature(model_cfg: DictConfig, spec: Any) -> ArchSignature:
    return ArchSignature(
        name=model_cfg.name,
        source=model_cfg.get("source", "zoo"),
        num_classes=spec.num_classes,
        in_channels=spec.channels,
        image_size=spec.image_size,
    )


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def train_targets(data: Any) -> torch.Tensor:
    """Labels of the training split by sample index (CPU int64), for methods with per-sample state."""
    if hasattr(data, "y_train"):
        return data.y_train
    return torch.as_tensor(data.train.labels, dtype=torch.int64)


class Job:
    """The work of one run directory, in the order: validate, data, models, teacher, training, files."""

    def __init__(self, cfg: DictConfig, out_dir: Path, started: float) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.started = started
        self.trackers = RunLoggers()

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        validate(cfg)
        run_name, group = run_identity(HydraConfig.get(), cfg.paths.output_dir)
        self.trackers = build_loggers(cfg.get("logger"), run_name, group, self.out_dir)
        self.trackers.log_hparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        self.mode = Mode(cfg.mode)
        threads = configure_threads(cfg.trainer.num_threads)
        self.runtime = resolve_runtime(
            cfg.trainer.device, cfg.trainer.precision, cfg.trainer.channels_last, cfg.trainer.compile
        )
        log.info(
            "mode=%s device=%s precision=%s threads=%d output=%s",
            self.mode.value,
            self.runtime.device,
            self.runtime.autocast_dtype or "fp32",
            threads,
            self.out_dir,
        )
        self.data = load_dataset(cfg.dataset)
        self.spec = self.data.spec
        log.info(
            "dataset %s: %d train / %d validation / %d test images, %dx%dx%d, %d classes",
            self.spec.name,
            self.spec.num_train,
            self.spec.num_val,
            self.spec.num_test,
            self.spec.channels,
            self.spec.image_size,
            self.spec.image_size,
            self.spec.num_classes,
        )
        if self.mode is Mode.teacher:
            return self.run_teacher()
        if self.mode is Mode.student:
            return self.run_student(CrossEntropy())
        return self.run_distill()

    # -- building blocks -------------------------------------------------------------------------

    @functools.cached_property
    def data_fingerprint(self) -> str:
        """Content hash of the dataset (part of the teacher-store and soft-label-cache keys)."""
        return self.data.fingerprint()

    @property
    def top5(self) -> bool:
        return self.spec.num_classes >= schema.TOP5_MIN_CLASSES

    def pipeline(self, batch_size: int, seed: int) -> Any:
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
        )

    def train(
        self,
        model: nn.Module,
        pipeline: Any,
        method: DistillMethod,
        optimizer_cfg: DictConfig,
        scheduler_cfg: DictConfig,
        epochs: int,
        seed: int,
        history: HistoryLog,
        label: str,
        checkpointing: Checkpointing,
        teacher: TeacherSource | None = None,
        student_features: Any = None,
        lr_key: str = "optimizer.lr",
    ) -> FitResult:
        model = self.runtime.prepare(model)
        method.to(self.runtime.device)
        groups = [{"params": list(model.parameters())}]
        method_parameters = [p for p in method.parameters() if p.requires_grad]
        if method_parameters:
            groups.append({"params": method_parameters})
        optimizer = instantiate(optimizer_cfg, _convert_="all")(groups)
        scheduler = instantiate(scheduler_cfg, _convert_="all")(optimizer, epochs=epochs)
        step_model = torch.compile(model) if self.runtime.compile else model
        torch.manual_seed(seed)  # dropout draws do not depend on what ran before in this process
        return fit(
            step_model,
            pipeline,
            method,
            optimizer,
            scheduler,
            epochs,
            self.runtime,
            history,
            teacher=teacher,
            student_features=student_features,
            eval_every=self.cfg.trainer.eval_every,
            progress=self.cfg.trainer.progress,
            label=label,
            checkpointing=checkpointing,
            lr_key=lr_key,
            top5=self.top5,
            on_epoch=self.trackers.log_epoch if label == "student" else None,
        )

    def checkpointing(self, path: Path, settings: Mapping[str, Any]) -> Checkpointing:
        trainer = self.cfg.trainer
        return Checkpointing(
            path=path, settings=settings, every=trainer.checkpoint_every, resume=Resume(trainer.resume) is Resume.auto
        )

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
        """The stored teacher for this config, trained now (once, under a lock) if the store has none.

        Its training checkpoints into the store entry, so a killed teacher training resumes there.
        """
        cfg = self.cfg
        training = cfg.teacher_training
        description = self.teacher_description()

        def train_teacher(model: nn.Module, entry_dir: Path) -> Mapping[str, Any]:
            pipeline = self.pipeline(training.batch_size, training.seed)
            method = CrossEntropy()
            history = HistoryLog(entry_dir / schema.HISTORY_FILE, schema.history_columns(method.parts))
            result = self.train(
                model,
                pipeline,
                method,
                training.optimizer,
                training.scheduler,
                training.epochs,
                training.seed,
                history,
                label="teacher",
                checkpointing=self.checkpointing(entry_dir / schema.TRAIN_STATE_FILE, description),
                lr_key="teacher_training.optimizer.lr",
            )
            return summary_of(result)

        store = TeacherStore(Path(cfg.paths.cache_dir) / "teachers")
        label = f"{cfg.teacher.name}-{self.spec.name}"
        return store.get_or_train(description, label, teacher, arch_signature(cfg.teacher, self.spec), train_teacher)

    # -- modes -----------------------------------------------------------------------------------

    def run_teacher(self) -> dict[str, Any]:
        cfg = self.cfg
        teacher = build_network(cfg.teacher, "teacher", self.spec, cfg.teacher_training.seed)
        stored = self.obtain_teacher(teacher)
        store_history = stored.model_path.parent / schema.HISTORY_FILE
        if store_history.is_file():
            shutil.copyfile(store_history, self.out_dir / schema.HISTORY_FILE)
        result = dict(stored.result)
        return self.finish(
            model=cfg.teacher.name,
            teacher=None,
            method=CrossEntropy.name,
            model_params=count_parameters(teacher),
            teacher_source=stored.source,
            checkpoint=str(stored.model_path),
            **{key: result.get(key) for key in SUMMARY_KEYS if key != "resumed_from_epoch"},
        )

    def run_distill(self) -> dict[str, Any]:
        cfg = self.cfg
        teacher = build_network(cfg.teacher, "teacher", self.spec, cfg.teacher_training.seed)
        student = build_network(cfg.student, "student", self.spec, cfg.trainer.seed)  # probe before training
        method = build_method(cfg.loss)
        checkpoint = cfg.teacher.get("checkpoint")
        if checkpoint:
            load_checkpoint(teacher, Path(checkpoint), arch_signature(cfg.teacher, self.spec))
            teacher_sha = file_sha256(Path(checkpoint))
            teacher = self.runtime.prepare(teacher)
            teacher_acc = self.checkpoint_teacher_accuracy(teacher, teacher_sha)
            source = "checkpoint"
            log.info("teacher loaded from %s (test acc %.2f%%)", checkpoint, teacher_acc)
        else:
            stored = self.obtain_teacher(teacher)
            teacher_sha, teacher_acc, source = stored.sha256, stored.test_acc, stored.source
            teacher = self.runtime.prepare(teacher)
        teacher.eval().requires_grad_(False)
        teacher_info = {
            "teacher": cfg.teacher.name,
            "teacher_test_acc": teacher_acc,
            "teacher_source": source,
            "teacher_params": count_parameters(teacher),
        }
        return self.run_student(
            method, student=student, teacher=teacher, teacher_sha=teacher_sha, teacher_info=teacher_info
        )

    def checkpoint_teacher_accuracy(self, teacher: nn.Module, teacher_sha: str) -> float:
        """Test accuracy of an external teacher, evaluated once per (checkpoint, data) and kept in the cache dir."""
        cfg = self.cfg
        key = config_digest(
            {
                "teacher_sha256": teacher_sha,
                "dataset_content": self.data_fingerprint,
                "normalize": plain(cfg.dataset.normalize),
            }
        )
        record = Path(cfg.paths.cache_dir) / "teacher_evals" / f"{key[:24]}.json"
        try:
            return float(json.loads(record.read_text())["test_acc"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        accuracy = evaluate(
            teacher, self.pipeline(cfg.trainer.batch_size, cfg.trainer.seed).test_batches(), self.runtime
        ).acc
        try:
            write_json(record, {"test_acc": accuracy, "teacher_sha256": teacher_sha})
        except OSError as error:  # a read-only cache: evaluate again next time
            log.warning("could not keep the teacher's test accuracy at %s (%s)", record, error)
        return accuracy

    def run_student(
        self,
        method: DistillMethod,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        teacher_sha: str = "",
        teacher_info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        cfg = self.cfg
        trainer = cfg.trainer
        if student is None:
            student = build_network(cfg.student, "student", self.spec, trainer.seed)
        request = self.setup_method(method, student, teacher)
        pipeline = self.pipeline(trainer.batch_size, trainer.seed)
        teacher_source, cache_status, outputs = None, None, None
        if teacher is not None:
            teacher_source, cache_status, outputs = self.teacher_source(teacher, teacher_sha, pipeline, method, request)
            if self.runtime.compile:
                teacher_source.teacher = torch.compile(teacher_source.teacher)
        recorder = None
        if request.student:
            from kd_hydra.models.features import FeatureRecorder

            recorder = FeatureRecorder(student, list(request.student))
        history = HistoryLog(self.out_dir / schema.HISTORY_FILE, schema.history_columns(method.parts))
        checkpointing = self.checkpointing(self.out_dir / schema.TRAIN_STATE_FILE, training_settings(cfg))
        result = self.train(
            student,
            pipeline,
            method,
            cfg.optimizer,
            cfg.scheduler,
            trainer.epochs,
            trainer.seed,
            history,
            label="student",
            checkpointing=checkpointing,
            teacher=teacher_source,
            student_features=(lambda: recorder.features) if recorder is not None else None,
        )
        if isinstance(teacher_source, CachedTeacher):
            cache_status = teacher_source.status
        checkpoint = None
        if trainer.save_checkpoint:
            checkpoint = self.out_dir / MODEL_FILE
            has_parts = any(True for _ in method.state_dict())
            save_checkpoint(
                checkpoint, student, arch_signature(cfg.student, self.spec), method=method if has_parts else None
            )
        record = self.finish(
            model=cfg.student.name,
            method=method.name,
            **summary_of(result),
            model_params=count_parameters(student),
            method_params=count_parameters(method),
            soft_label_cache=cache_status,
            teacher_outputs=outputs,
            checkpoint=str(checkpoint) if checkpoint else None,
            **(teacher_info or {}),
        )
        checkpointing.remove()
        return record

    def setup_method(self, method: DistillMethod, student: nn.Module, teacher: nn.Module | None) -> FeatureRequest:
        """Ask the method which feature points it reads, probe their shapes, and let it build its parts."""
        request = FeatureRequest()
        student_shapes: dict[str, tuple[int, ...]] = {}
        teacher_shapes: dict[str, tuple[int, ...]] = {}
        if method.uses_features and teacher is not None:
            from kd_hydra.models.features import feature_points, probe_feature_shapes

            request = method.feature_request(list(feature_points(student)), list(feature_points(teacher)))
            image_shape = (self.spec.channels, self.spec.image_size, self.spec.image_size)
            student_shapes = probe_feature_shapes(student, list(request.student), image_shape)
            teacher_shapes = probe_feature_shapes(teacher, list(request.teacher), image_shape)
        torch.manual_seed(self.cfg.trainer.seed)  # the method's own parts start the same in every run
        method.setup(student_shapes, teacher_shapes, train_targets(self.data), self.spec.num_classes)
        return request

    def teacher_source(
        self, teacher: nn.Module, teacher_sha: str, pipeline: Any, method: DistillMethod, request: FeatureRequest
    ) -> tuple[TeacherSource, str, str]:
        """The soft-label cache for logit methods on in-memory data (when enabled), else the live teacher.

        Returns the source, the cache status (off/cold) and which teacher outputs were used (cache/live).
        """
        cfg = self.cfg
        cache = cfg.soft_label_cache
        if request.teacher or method.uses_features:
            log.info("%s reads teacher features: the teacher runs on every batch", method.name)
            return LiveTeacher(teacher, self.runtime, list(request.teacher)), "off", "live"
        if not cache.enabled:
            return LiveTeacher(teacher, self.runtime), "off", "live"
        if not getattr(pipeline, "supports_logit_cache", False):
            log.info("soft-label cache does not apply to this dataset pipeline: the teacher runs on every batch")
            return LiveTeacher(teacher, self.runtime), "off", "live"
        dtype = CACHE_DTYPES[CacheDtype(cache.dtype)]
        description = cache_description(
            teacher_sha,
            self.data_fingerprint,
            plain(cfg.dataset.augment),
            plain(cfg.dataset.normalize),
            cfg.trainer.seed,
            dtype,
            cache.top_k,
            self.runtime.autocast_dtype,
            self.runtime.channels_last,
        )
        cached = CachedTeacher(
            Path(cfg.paths.cache_dir) / "soft_labels",
            description,
            teacher,
            pipeline,
            self.runtime,
            num_classes=self.spec.num_classes,
            dtype=dtype,
            top_k=cache.top_k,
            batch_size=fill_batch_size(cache.batch_size, self.runtime.device),
            max_bytes=int(cache.max_gb * BYTES_PER_GB),
        )
        return cached, "cold", "cache"

    def finish(self, **values: Any) -> dict[str, Any]:
        """Write metrics.json (last file of the run) and print the run's one-line summary."""
        record = metrics_record(
            status=schema.STATUS_COMPLETED,
            mode=self.mode.value,
            dataset=self.spec.name,
            settings=settings_of(self.cfg),
            config_digest=safe_digest(self.cfg),
            wall_seconds=time.perf_counter() - self.started,
            **values,
        )
        write_json(self.out_dir / schema.METRICS_FILE, record)
        self.trackers.log_summary(record)
        self.trackers.close(schema.STATUS_COMPLETED)
        print(headline(record, self.out_dir), flush=True)
        return record


SUMMARY_KEYS = (
    "final_test_acc",
    "best_test_acc",
    "best_epoch",
    "epochs",
    "train_images_per_second",
    "final_test_acc_top5",
    "final_val_acc",
    "best_val_acc",
    "best_val_epoch",
    "resumed_from_epoch",
)


def summary_of(result: FitResult) -> dict[str, Any]:
    return {key: getattr(result, key) for key in SUMMARY_KEYS}


#: Short names of loss keys in the headline.
HEADLINE_KEY_NAMES = {"temperature": "T"}


def method_description(settings: Mapping[str, Any]) -> str:
    """``kd T=4 alpha=0.9`` from the ``loss.*`` settings of a distill run (true booleans by name only)."""
    parts = [str(settings.get("loss.name"))]
    added_kd_off = not settings.get("loss.add_kd_weight")  # Hinton's term on top of the method: off at weight 0
    for key, value in settings.items():
        name = key.removeprefix("loss.")
        if not key.startswith("loss.") or name == "name" or value is None or value is False:
            continue
        if added_kd_off and name.startswith("add_kd_"):
            continue
        shown = HEADLINE_KEY_NAMES.get(name, name)
        parts.append(
            shown if value is True else f"{shown}={value:g}" if isinstance(value, float) else f"{shown}={value}"
        )
    return " ".join(parts)


def headline(record: Mapping[str, Any], out_dir: Path, prefix: str = "") -> str:
    """One line with the numbers that matter, e.g. for the end of a terminal session or a CI log."""
    what = record["model"] if record["teacher"] is None else f"{record['teacher']} -> {record['model']}"
    loss = ""
    if record["mode"] == Mode.distill.value:
        loss = " " + method_description(record["settings"])
    teacher = "" if record["teacher_test_acc"] is None else f", teacher {record['teacher_test_acc']:.2f}%"
    val = "" if record.get("final_val_acc") is None else f", val {record['final_val_acc']:.2f}%"
    return (
        f"[kd-hydra] {prefix}{record['mode']} {what} on {record['dataset']}{loss}: test acc "
        f"{record['final_test_acc']:.2f}% (best {record['best_test_acc']:.2f}% @ epoch {record['best_epoch']})"
        f"{val}{teacher}, {record['epochs']} epochs, {record['wall_seconds']:.1f}s, "
        f"{record['train_images_per_second']:.0f} img/s -> {out_dir}"
    )
