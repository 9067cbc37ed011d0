"""One job of kd-hydra, as a short recipe per mode: ``train_teacher``, ``train_baseline``, ``distill``.

:func:`run` checks everything it can before any work (values, data, networks, the method's feature
points, the run directory's record), claims the directory, then runs the mode's recipe. A failure writes a
failed ``metrics.json`` (never over another run's record) and re-raises.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kd_hydra import schema
from kd_hydra.checkpoints import save_checkpoint
from kd_hydra.config import Mode, Resume, validate
from kd_hydra.context import RunContext, open_context
from kd_hydra.errors import KDHydraError
from kd_hydra.identity import digest, plain, recorded_settings, run_identity, teacher_id, training_settings
from kd_hydra.instantiate import build
from kd_hydra.loggers import build_loggers
from kd_hydra.loggers import run_identity as tracker_identity
from kd_hydra.methods import DistillMethod, FeatureRequest
from kd_hydra.methods.ce import CrossEntropy
from kd_hydra.models import count_parameters
from kd_hydra.outputs import HistoryLog, headline, metrics_record, write_json
from kd_hydra.records import MODEL_FILE, RunDirectory
from kd_hydra.runtime import with_precision
from kd_hydra.sweeper import record_outcome
from kd_hydra.teacher_outputs import teacher_outputs
from kd_hydra.teachers import Teacher, acquire_teacher, teacher_identity_of
from kd_hydra.train import Checkpointing, DivergedError, FitResult, Trainer

log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run trains, built and checked before any training: networks, method, teacher identity."""

    mode: Mode
    identity: dict[str, Any]
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    teacher_sha256: str | None = None  # an external teacher.checkpoint's
    method: DistillMethod | None = None
    request: FeatureRequest = FeatureRequest()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write its files; a completed run of the same identity is reported and left alone."""
    started = time.perf_counter()
    directory = RunDirectory(Path(HydraConfig.get().runtime.output_dir))
    try:
        validate(cfg)
        ctx = open_context(cfg, directory.path, started)
        plan = plan_run(ctx)
        never = Resume(cfg.trainer.resume) is Resume.never
        completed = directory.completed_record(plan.identity, overwrite=never)
        if completed is not None:
            print(headline(completed, directory.path, prefix="already completed, left alone: "), flush=True)
            record_outcome(directory.path, schema.STATUS_COMPLETED, None)
            return completed
        checkpointing(ctx, directory.path / schema.TRAIN_STATE_FILE, plan.identity).load()
    except Exception as error:  # nothing of another run's record changes: a failed record only in a new directory
        if directory.holds_record():
            record_outcome(directory.path, schema.STATUS_FAILED, failure_reason(error))
        else:
            claim(directory, cfg, fresh=False)
            write_failure(cfg, directory.path, started, error)
        raise
    claim(directory, cfg, fresh=never)
    ctx = dataclasses.replace(ctx, trackers=start_trackers(cfg, directory.path))
    try:
        return RECIPES[plan.mode](ctx, plan)
    except Exception as error:  # interrupts (Ctrl-C, a scheduler's preemption) are not failures: no metrics.json
        if isinstance(error, DivergedError):  # nothing a diverged run trained is kept
            for name in (schema.TRAIN_STATE_FILE, MODEL_FILE):
                (directory.path / name).unlink(missing_ok=True)
        write_failure(cfg, directory.path, started, error, plan.identity)
        ctx.trackers.close(schema.STATUS_FAILED)
        raise


def plan_run(ctx: RunContext) -> Plan:
    """Build the untrained networks and the method (feature points and shapes checked); name the teacher."""
    cfg, mode = ctx.cfg, Mode(ctx.cfg.mode)
    settings = training_settings(cfg)
    if mode is Mode.teacher:
        teacher = ctx.network("teacher")
        identity = run_identity(settings, ctx.data_digest, teacher_id(cfg, ctx.data_digest))
        return Plan(mode, identity, teacher=teacher)
    if mode is Mode.student:
        student = ctx.network("student")
        method = CrossEntropy()
        request = setup_method(ctx, method, student, None)
        return Plan(
            mode, run_identity(settings, ctx.data_digest, None), student=student, method=method, request=request
        )
    teacher, student = ctx.network("teacher"), ctx.network("student")
    method = build(cfg.loss)
    request = setup_method(ctx, method, student, teacher)
    sha256 = None
    if cfg.teacher.get("checkpoint"):
        from kd_hydra.teachers import load_external

        sha256 = load_external(teacher, Path(cfg.teacher.checkpoint), ctx.arch("teacher"))
    identity = run_identity(settings, ctx.data_digest, teacher_id(cfg, ctx.data_digest, sha256))
    return Plan(mode, identity, student, teacher, sha256, method, request)


def setup_method(
    ctx: RunContext, method: DistillMethod, student: nn.Module, teacher: nn.Module | None
) -> FeatureRequest:
    """Ask the method which feature points it reads, probe their shapes, and let it build its parts."""
    request = FeatureRequest()
    student_shapes: dict[str, tuple[int, ...]] = {}
    teacher_shapes: dict[str, tuple[int, ...]] = {}
    if method.uses_features and teacher is not None:
        from kd_hydra.models.features import feature_points, probe_feature_shapes

        request = method.feature_request(list(feature_points(student)), list(feature_points(teacher)))
        image_shape = (ctx.spec.channels, ctx.spec.image_size, ctx.spec.image_size)
        student_shapes = probe_feature_shapes(student, list(request.student), image_shape)
        teacher_shapes = probe_feature_shapes(teacher, list(request.teacher), image_shape)
    torch.manual_seed(ctx.cfg.trainer.seed)  # the method's own parts start the same in every run
    data = ctx.data
    targets = data.y_train if hasattr(data, "y_train") else torch.as_tensor(data.train.labels, dtype=torch.int64)
    method.setup(student_shapes, teacher_shapes, targets, ctx.spec.num_classes)
    return request


# -- the recipes -------------------------------------------------------------------------------------------


def train_teacher(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=teacher: find the teacher in the store or train and store it; the run dir gets its history."""
    teacher = obtain_teacher(ctx, plan)
    if teacher.history_path is not None:
        (ctx.out_dir / schema.HISTORY_FILE).write_bytes(teacher.history_path.read_bytes())
    summary = {key: teacher.summary.get(key) for key in SUMMARY_KEYS if key != "resumed_from_epoch"}
    return finish(
        ctx,
        plan,
        model=ctx.cfg.teacher.name,
        method=CrossEntropy.name,
        teacher_source=teacher.source,
        model_params=count_parameters(teacher.model),
        checkpoint=str(teacher.weights_path),
        **summary,
    )


def train_baseline(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=student: the labels-only student of the same data, architecture and recipe."""
    return train_student(ctx, plan, teacher=None)


def distill(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=distill: the teacher (store, training, or checkpoint), then the student through the method."""
    return train_student(ctx, plan, teacher=obtain_teacher(ctx, plan))


RECIPES = {Mode.teacher: train_teacher, Mode.student: train_baseline, Mode.distill: distill}


# -- building blocks -------------------------------------------------------------------------------------


def obtain_teacher(ctx: RunContext, plan: Plan) -> Teacher:
    """The run's teacher, frozen on the run's device: an external checkpoint, or the store's (trained once)."""

    def train(model: nn.Module, entry_dir: Path) -> Mapping[str, Any]:
        recipe = ctx.cfg.teacher_training
        identity = teacher_identity_of(ctx)
        history = HistoryLog(entry_dir / schema.HISTORY_FILE, schema.history_columns(CrossEntropy.parts))
        trainer = make_trainer(
            ctx,
            recipe.epochs,
            "teacher",
            "teacher_training.optimizer.lr",
            checkpointing(ctx, entry_dir / schema.TRAIN_STATE_FILE, identity),
            runtime=with_precision(ctx.runtime, plain(recipe.precision)),
        )
        pipeline = ctx.pipeline(recipe.batch_size, recipe.seed)
        result = fit_model(ctx, trainer, model, CrossEntropy(), pipeline, recipe, recipe.seed, history)
        return summary_of(result)

    teacher = acquire_teacher(ctx, plan.teacher, plan.teacher_sha256, train)
    teacher.model.eval().requires_grad_(False)
    return teacher


def train_student(ctx: RunContext, plan: Plan, teacher: Teacher | None) -> dict[str, Any]:
    """Train the student through the plan's method (reading ``teacher``'s outputs when there is one)."""
    cfg, method, student = ctx.cfg, plan.method, plan.student
    pipeline = ctx.pipeline(cfg.trainer.batch_size, cfg.trainer.seed)
    outputs = None
    if teacher is not None:
        outputs = teacher_outputs(
            teacher.model, teacher.sha256, method.uses_features, plan.request.teacher, pipeline, ctx
        )
    recorder = None
    if plan.request.student:
        from kd_hydra.models.features import FeatureRecorder

        recorder = FeatureRecorder(student, list(plan.request.student))
    history = HistoryLog(ctx.out_dir / schema.HISTORY_FILE, schema.history_columns(method.parts))
    state = checkpointing(ctx, ctx.out_dir / schema.TRAIN_STATE_FILE, plan.identity)
    trainer = make_trainer(ctx, cfg.trainer.epochs, "student", "optimizer.lr", state, on_epoch=ctx.trackers.log_epoch)
    result = fit_model(
        ctx,
        trainer,
        student,
        method,
        pipeline,
        cfg,
        cfg.trainer.seed,
        history,
        teacher=outputs.source if outputs else None,
        student_features=(lambda: recorder.features) if recorder is not None else None,
    )
    model_file = None
    if cfg.trainer.save_checkpoint:
        model_file = ctx.out_dir / MODEL_FILE
        has_parts = any(True for _ in method.state_dict())
        save_checkpoint(model_file, student, ctx.arch("student"), method=method if has_parts else None)
    teacher_info = {}
    if teacher is not None:
        teacher_info = {
            "teacher": cfg.teacher.name,
            "teacher_test_acc": teacher.test_acc,
            "teacher_source": teacher.source,
            "teacher_params": count_parameters(teacher.model),
            "soft_label_cache": outputs.cache_status,
            "teacher_outputs": outputs.kind,
        }
    record = finish(
        ctx,
        plan,
        model=cfg.student.name,
        method=method.name,
        **summary_of(result),
        model_params=count_parameters(student),
        method_params=count_parameters(method),
        checkpoint=str(model_file) if model_file else None,
        **teacher_info,
    )
    state.remove()
    return record


def make_trainer(
    ctx: RunContext, epochs: int, label: str, divergence_key: str, state: Checkpointing, **options: Any
) -> Trainer:
    trainer = ctx.cfg.trainer
    options.setdefault("runtime", ctx.runtime)
    return Trainer(
        epochs=epochs,
        eval_every=trainer.eval_every,
        label=label,
        divergence_key=divergence_key,
        progress=trainer.progress,
        top5=ctx.top5,
        checkpointing=state,
        **options,
    )


def fit_model(
    ctx: RunContext,
    trainer: Trainer,
    model: nn.Module,
    method: DistillMethod,
    pipeline: Any,
    recipe: DictConfig,
    seed: int,
    history: HistoryLog,
    **sources: Any,
) -> FitResult:
    """Move ``model`` and ``method`` to the device, build ``recipe``'s optimizer and scheduler, and fit.

    ``recipe`` is the node holding ``optimizer`` and ``scheduler`` (the root config, or ``teacher_training``).
    """
    model = trainer.runtime.prepare(model)
    method.to(trainer.runtime.device)
    groups = [{"params": list(model.parameters())}]
    method_parameters = [p for p in method.parameters() if p.requires_grad]
    if method_parameters:
        groups.append({"params": method_parameters})
    optimizer = instantiate(recipe.optimizer, _convert_="all")(groups)
    scheduler = instantiate(recipe.scheduler, _convert_="all")(optimizer, epochs=trainer.epochs)
    step_model = torch.compile(model) if trainer.runtime.compile else model
    torch.manual_seed(seed)  # dropout draws do not depend on what ran before in this process
    return trainer.fit(step_model, method, pipeline, optimizer, scheduler, history, **sources)


def checkpointing(ctx: RunContext, path: Path, identity: Mapping[str, Any]) -> Checkpointing:
    trainer = ctx.cfg.trainer
    resume = Resume(trainer.resume) is Resume.auto
    return Checkpointing(path=path, identity=identity, every=trainer.checkpoint_every, resume=resume)


def summary_of(result: FitResult) -> dict[str, Any]:
    return {key: getattr(result, key) for key in SUMMARY_KEYS}


# -- the run directory -----------------------------------------------------------------------------------


def claim(directory: RunDirectory, cfg: DictConfig, fresh: bool) -> None:
    hydra_node = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = list(OmegaConf.select(hydra_node, "overrides.task", default=[]) or []) if hydra_node else []
    directory.claim(cfg, hydra_node, overrides, fresh=fresh)


def start_trackers(cfg: DictConfig, out_dir: Path) -> Any:
    run_name, group = tracker_identity(HydraConfig.get(), cfg.paths.output_dir)
    trackers = build_loggers(cfg.get("logger"), run_name, group, out_dir)
    trackers.log_hparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return trackers


def safe_settings(cfg: DictConfig) -> dict[str, Any] | None:
    try:
        return training_settings(cfg)
    except Exception:  # a broken config (e.g. a missing interpolation) still gets its failed metrics.json
        return None


def failure_reason(error: BaseException) -> str:
    reason = str(error) if isinstance(error, KDHydraError) else f"{type(error).__name__}: {error}"
    return reason or type(error).__name__


def write_failure(
    cfg: DictConfig, out_dir: Path, started: float, error: BaseException, identity: Mapping[str, Any] | None = None
) -> None:
    reason = failure_reason(error)
    settings = safe_settings(cfg)
    write_json(
        out_dir / schema.METRICS_FILE,
        metrics_record(
            status=schema.STATUS_FAILED,
            reason=reason,
            mode=plain(cfg.get("mode")),
            dataset=OmegaConf.select(cfg, "dataset.name", default=None),
            settings=recorded_settings(settings) if settings is not None else None,
            config_digest=digest(identity) if identity is not None else None,
            wall_seconds=time.perf_counter() - started,
        ),
    )
    record_outcome(out_dir, schema.STATUS_FAILED, reason)


def finish(ctx: RunContext, plan: Plan, **values: Any) -> dict[str, Any]:
    """Write metrics.json (last file of the run) and print the run's one-line summary."""
    record = metrics_record(
        status=schema.STATUS_COMPLETED,
        mode=plan.mode.value,
        dataset=ctx.spec.name,
        settings=recorded_settings(training_settings(ctx.cfg)),
        config_digest=digest(plan.identity),
        data_digest=ctx.data_digest,
        teacher_id=plan.identity["teacher_id"],
        wall_seconds=time.perf_counter() - ctx.started,
        **values,
    )
    write_json(ctx.out_dir / schema.METRICS_FILE, record)
    record_outcome(ctx.out_dir, schema.STATUS_COMPLETED, None)
    ctx.trackers.log_summary(record)
    ctx.trackers.close(schema.STATUS_COMPLETED)
    print(headline(record, ctx.out_dir), flush=True)
    return record
