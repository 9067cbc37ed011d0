"""One job of kd-hydra, as a short recipe per mode: ``train_teacher``, ``train_baseline``, ``distill``, ``evaluate``.

:func:`run` checks everything it can before any work (values, data, networks, the method's feature points,
the run directory's record), claims the directory, then runs the mode's recipe. A failure writes a failed
``metrics.json`` (never over another run's record) and re-raises.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from kd_hydra.config.checks import validate
from kd_hydra.data.load import check_fits_data
from kd_hydra.enums import Mode, Resume
from kd_hydra.errors import ConfigError, DataError, KDHydraError
from kd_hydra.methods import DistillMethod, FeatureRequest, build_method
from kd_hydra.methods.ce import CrossEntropy
from kd_hydra.methods.contract import probe_method
from kd_hydra.models import count_parameters
from kd_hydra.models.checkpoints import save_checkpoint
from kd_hydra.models.published import published_problem
from kd_hydra.records import schema
from kd_hydra.records.files import HistoryLog, headline
from kd_hydra.records.identity import (
    batchnorm_batch,
    dataset_config_digest,
    digest,
    evaluated_role,
    plain,
    run_identity,
    teacher_id,
    training_settings,
)
from kd_hydra.records.ledger import announce_job, record_outcome
from kd_hydra.records.run_directory import (
    CHECKPOINTS_DIR,
    MODEL_FILE,
    RunDirectory,
    checkpoint_problems,
    failure_reason,
    write_completed,
    write_failed,
)
from kd_hydra.run.context import RunContext, open_context
from kd_hydra.run.evaluation import evaluate_classes, write_evaluation
from kd_hydra.run.fit_warnings import announce, run_warnings
from kd_hydra.run.measures import student_measures, teacher_measures
from kd_hydra.run.workers import WorkerJob, launch, lead
from kd_hydra.stores.teacher_outputs import TeacherNeeds, teacher_outputs
from kd_hydra.stores.teachers import Teacher, TeacherStore, checkpoint_teacher, load_external
from kd_hydra.trackers.base import tracker_run_name
from kd_hydra.trackers.fanout import build_loggers
from kd_hydra.train.batches import BatchAssembler
from kd_hydra.train.distributed import SINGLE, Workers, launched_world
from kd_hydra.train.runtime import Runtime, with_precision
from kd_hydra.train.stages import Stage, initialization_stage, training_stage
from kd_hydra.train.trainer import WALL_SECONDS, Checkpointing, DivergedError, FitResult, Snapshots, Trainer

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
    """What a run trains, built and checked before any training: networks, method, the run's identity."""

    mode: Mode
    identity: dict[str, Any]
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    teacher_sha256: str | None = None  # an external teacher.checkpoint's
    method: DistillMethod | None = None
    request: FeatureRequest = FeatureRequest()
    warnings: tuple[str, ...] = ()  # settings that do not fit the run (kd_hydra.run.fit_warnings)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and write its files; a completed run of the same identity is reported and left alone.

    The run holds its directory's exclusive claim throughout (another writer waits); a directory holding files
    kd-hydra did not write, or (for an evaluation) a training run's record, is refused before anything is written.
    """
    started = time.perf_counter()
    directory = RunDirectory(Path(HydraConfig.get().runtime.output_dir))
    with directory.claimed():
        directory.refuse_foreign(evaluation=OmegaConf.select(cfg, "mode") == Mode.eval.value)
        return run_claimed(cfg, directory, started)


def record_failure(directory: RunDirectory, cfg: DictConfig, started: float, reason: str, identity: Any = None) -> None:
    """A failed metrics.json; when even that cannot be written (a full disk), a warning: the run's error stands."""
    try:
        write_failed(directory.path, cfg, time.perf_counter() - started, reason, identity)
    except OSError as error:
        log.warning("could not record the failure: %s", error)


def run_claimed(cfg: DictConfig, directory: RunDirectory, started: float) -> dict[str, Any]:
    """:func:`run` once the directory is claimed."""
    never = Resume(cfg.trainer.resume) is Resume.never
    try:
        adopt_launched_world(cfg)
        validate(cfg)
        ctx = open_context(cfg, directory.path, started)
        check_fits_data(cfg.dataset, ctx.spec)
        plan = plan_run(ctx)
        completed = directory.completed_record(plan.identity, overwrite=never)
        if completed is None:
            resumed = checkpointing(ctx, directory.path / schema.TRAIN_STATE_FILE, plan.identity).load() or {}
            ctx = dataclasses.replace(ctx, started=ctx.started - float(resumed.get(WALL_SECONDS, 0.0)))
    except Exception as error:  # nothing of another run's record changes: a failed record only in a new directory
        if not directory.holds_record():
            try:
                claim(directory, cfg, fresh=False)
            except OSError as unwritable:
                log.warning("could not record the failure: %s", unwritable)
            else:
                record_failure(directory, cfg, started, failure_reason(error))
        record_outcome(directory.path, schema.STATUS_FAILED, failure_reason(error))
        raise
    if completed is not None:
        for problem in checkpoint_problems(completed):
            log.warning("%s: metrics.json names a checkpoint that is not usable (%s)", directory.path, problem)
        print(headline(completed, directory.path, prefix="already completed, left alone: "), flush=True)
        record_outcome(directory.path, schema.STATUS_COMPLETED, None)
        return completed
    announce(plan.warnings)
    claim(directory, cfg, fresh=never)
    announce_job(directory.path)
    if cfg.trainer.devices > 1:
        return run_on_workers(ctx, plan)
    tracker_names = tracker_run_name(HydraConfig.get(), cfg.paths.output_dir)
    return run_recipe(cfg, directory.path, ctx.started, SINGLE, tracker_names, ctx=ctx, plan=plan)


def adopt_launched_world(cfg: DictConfig) -> None:
    """Under torchrun, ``trainer.devices`` is the launcher's world size (1 is read as "as many as launched")."""
    world = launched_world()
    if world == 1 or cfg.trainer.devices == world:
        return
    if cfg.trainer.devices != 1:
        raise ConfigError(
            "trainer.devices",
            f"is {cfg.trainer.devices} but torchrun started {world} workers; leave it at 1 or set {world}",
        )
    with open_dict(cfg):
        cfg.trainer.devices = world


def run_on_workers(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """Run the claimed job on ``trainer.devices`` data-parallel workers: started here by torch.distributed's
    launcher, or (under torchrun) this process as rank 0 with the others; a failure the leader did not record is
    recorded here."""
    cfg, out_dir = ctx.cfg, ctx.out_dir
    job = WorkerJob.of(cfg, out_dir, ctx.started, tracker_run_name(HydraConfig.get(), cfg.paths.output_dir))
    try:
        if launched_world() > 1:
            record = lead(job, run_recipe)
        else:
            # the workers' leader prints the job's headline
            record = launch(job, run_recipe, cfg.trainer.devices, cfg.trainer.max_restarts)
        return record
    except Exception as error:
        if job.recorded_failure() is None:  # the leader recorded none since the job started
            record_failure(RunDirectory(out_dir), cfg, ctx.started, failure_reason(error), plan.identity)
            record_outcome(out_dir, schema.STATUS_FAILED, failure_reason(error))
        raise


def run_recipe(
    cfg: DictConfig,
    out_dir: Path,
    started: float,
    workers: Workers,
    tracker_names: tuple[str, str | None],
    ctx: RunContext | None = None,
    plan: Plan | None = None,
) -> dict[str, Any] | None:
    """Run the mode's recipe of a claimed job as one of ``workers`` (its context and plan built here unless given);
    the leader starts the trackers and, on a failure, records it. Returns the leader's record (None elsewhere)."""
    if ctx is None or plan is None:
        ctx = open_context(cfg, out_dir, started, workers)
        plan = plan_run(ctx)
    if workers.leader:
        ctx = dataclasses.replace(ctx, trackers=start_trackers(cfg, out_dir, tracker_names))
    try:
        return RECIPES[plan.mode](ctx, plan)
    except Exception as error:  # interrupts (Ctrl-C, a scheduler's preemption) are not failures: no metrics.json
        # A worker's failure that is not kd-hydra's (a peer died: the launcher restarts the workers) is not recorded
        if workers.leader and (isinstance(error, KDHydraError) or not workers.parallel):
            if isinstance(error, DivergedError):  # nothing a diverged run trained is kept
                for name in (schema.TRAIN_STATE_FILE, MODEL_FILE):
                    (out_dir / name).unlink(missing_ok=True)
            record_failure(RunDirectory(out_dir), cfg, ctx.started, failure_reason(error), plan.identity)
            record_outcome(out_dir, schema.STATUS_FAILED, failure_reason(error))
            ctx.trackers.close(schema.STATUS_FAILED)
        raise


def plan_run(ctx: RunContext) -> Plan:
    """Build the untrained networks and the method (feature points and shapes checked); name the teacher; list
    the settings that do not fit the run."""
    plan = plan_networks(ctx)
    return dataclasses.replace(plan, warnings=tuple(run_warnings(ctx.cfg, ctx.spec, plan.method, plan.student)))


def plan_networks(ctx: RunContext) -> Plan:
    cfg, mode = ctx.cfg, Mode(ctx.cfg.mode)
    settings = training_settings(cfg)
    if mode is Mode.eval and evaluated_role(cfg.student.get("checkpoint")) == "student":
        student = ctx.network("student")
        sha256 = load_external(student, Path(cfg.student.checkpoint), ctx.arch("student"), "student.checkpoint")
        identity = run_identity(settings, ctx.data_digest, teacher_id(cfg, ctx.data_digest, sha256))
        return Plan(mode, identity, student=student)
    if mode is Mode.student:
        student, method = ctx.network("student"), CrossEntropy()
        request = setup_method(ctx, method, student, None)
        identity = run_identity(settings, ctx.data_digest, None)
        return Plan(mode, identity, student=student, method=method, request=request)
    teacher = ctx.network("teacher")
    student = method = None
    request = FeatureRequest()
    if mode is Mode.distill:
        student, method = ctx.network("student"), build_method(cfg.loss)
        request = setup_method(ctx, method, student, teacher)
    sha256 = None
    if cfg.teacher.get("checkpoint") and mode is not Mode.teacher:
        sha256 = load_external(teacher, Path(cfg.teacher.checkpoint), ctx.arch("teacher"))
    identity = run_identity(settings, ctx.data_digest, teacher_id(cfg, ctx.data_digest, sha256))
    return Plan(mode, identity, student, teacher, sha256, method, request)


@dataclasses.dataclass(frozen=True)
class PlanChecks:
    """A sweep's jobs planned without training: the jobs that cannot run (number -> error), and each job's warnings."""

    errors: dict[int, KDHydraError]
    warnings: list[list[str]]


def check_plans(configs: list[DictConfig]) -> PlanChecks:
    """Plan every job of a sweep on its data without training (networks, method, feature points and shapes).

    Each distinct dataset is loaded once, first: one that cannot be loaded (missing, offline, malformed) is
    raised as the one error of the whole sweep. A job whose dataset values do not fit its data (normalisation per
    channel, image size, class count), or a distill job whose networks and method do not fit, gets its error;
    every other job its warnings (:func:`kd_hydra.run.fit_warnings.run_warnings`).
    """
    contexts: dict[str, RunContext] = {}
    for cfg in configs:
        data_key = dataset_config_digest(cfg.dataset)
        if data_key not in contexts:
            try:
                contexts[data_key] = open_context(cfg, Path.cwd(), planning="the sweep's jobs")
            except KDHydraError:
                raise
            except Exception as error:  # an unexpected failure of the loader: one line naming the dataset
                raise DataError(f"dataset {cfg.dataset.name}: {type(error).__name__}: {error}") from error
    outcomes: dict[str, Plan | KDHydraError] = {}
    errors: dict[int, KDHydraError] = {}
    warnings: list[list[str]] = []
    for number, cfg in enumerate(configs):
        ctx = dataclasses.replace(contexts[dataset_config_digest(cfg.dataset)], cfg=cfg)
        try:
            check_fits_data(cfg.dataset, ctx.spec)
        except KDHydraError as error:
            errors[number] = error
            warnings.append([])
            continue
        method = student = None
        if Mode(cfg.mode) is Mode.distill:
            key = digest([plain(cfg[node]) for node in ("dataset", "teacher", "student", "loss")])
            if key not in outcomes:
                try:
                    outcomes[key] = plan_networks(ctx)
                except KDHydraError as error:
                    outcomes[key] = error
                except Exception as error:  # a network or method that cannot be built: one line, like the rest
                    outcomes[key] = KDHydraError(f"{type(error).__name__}: {error}")
            outcome = outcomes[key]
            if isinstance(outcome, KDHydraError):
                errors[number] = outcome
                warnings.append([])
                continue
            method, student = outcome.method, outcome.student
        warnings.append(run_warnings(cfg, ctx.spec, method, student))
    return PlanChecks(errors, warnings)


def setup_method(
    ctx: RunContext, method: DistillMethod, student: nn.Module, teacher: nn.Module | None
) -> FeatureRequest:
    """Ask the method which feature points it reads, probe their shapes, and let it build its parts."""
    request, student_shapes, teacher_shapes = FeatureRequest(), {}, {}
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
    if teacher is not None:
        method.setup_teacher(teacher)  # checked now on the untrained network, set again once it is trained
    probe_method(method, student_shapes, teacher_shapes, ctx.spec.num_classes)
    return request


# -- the recipes -------------------------------------------------------------------------------------------


def train_teacher(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=teacher: find the teacher in the store or train and store it; the run dir gets its history."""
    teacher = obtain_teacher(ctx, plan)
    if not ctx.workers.leader:
        return None
    if teacher.history_path is not None:
        (ctx.out_dir / schema.HISTORY_FILE).write_bytes(teacher.history_path.read_bytes())
    summary = {key: teacher.summary.get(key) for key in SUMMARY_KEYS if key != "resumed_from_epoch"}
    params = count_parameters(teacher.model)
    return finish(
        ctx,
        plan,
        model=ctx.cfg.teacher.name,
        method=CrossEntropy.name,
        teacher_source=teacher.source,
        model_params=params,
        checkpoint=str(teacher.weights_path),
        **summary,
        **teacher_measures(ctx, teacher),
    )


def train_baseline(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=student: the labels-only student of the same data, architecture and recipe."""
    return train_student(ctx, plan, teacher=None)


def distill(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=distill: the teacher (store, training, or checkpoint), then the student through the method."""
    return train_student(ctx, plan, teacher=obtain_teacher(ctx, plan))


def evaluate(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """mode=eval: ``student.checkpoint`` (or ``teacher.checkpoint``) on the test split: top-1, top-5, per-class
    accuracy, confusion matrix."""
    role = evaluated_role(ctx.cfg.student.get("checkpoint"))
    model = ctx.runtime.prepare(plan.student if role == "student" else plan.teacher)
    batches = ctx.pipeline(ctx.cfg.trainer.eval_batch_size, ctx.cfg.trainer.seed).test_batches()
    result = evaluate_classes(model, batches, ctx.runtime, ctx.spec.num_classes)
    write_evaluation(ctx.out_dir, result, ctx.spec.classes)
    top5 = result.top5 if ctx.top5 else None
    return finish(
        ctx,
        plan,
        model=ctx.cfg[role].name,
        final_test_acc=result.top1,
        final_test_acc_top5=top5,
        model_params=count_parameters(model),
        checkpoint=str(ctx.cfg[role].checkpoint),
        epochs=0,
        teacher_source="checkpoint" if role == "teacher" else None,
    )


RECIPES = {Mode.teacher: train_teacher, Mode.student: train_baseline, Mode.distill: distill, Mode.eval: evaluate}


# -- building blocks -------------------------------------------------------------------------------------


def obtain_teacher(ctx: RunContext, plan: Plan) -> Teacher:
    """The run's teacher, frozen on the run's device: an external checkpoint, or the store's (trained once)."""
    identity = ctx.teacher_identity()

    def train(model: nn.Module, entry_dir: Path) -> Mapping[str, Any]:
        recipe, started = ctx.cfg.teacher_training, time.perf_counter()
        log.info("training the teacher %s: %d epochs, stored for every later run", ctx.cfg.teacher.name, recipe.epochs)
        runtime = with_precision(ctx.runtime, plain(recipe.precision))
        model, method = runtime.prepare(model), CrossEntropy()
        stage = recipe_stage("teacher", recipe, recipe.epochs, model, method, "teacher_training.optimizer.lr")
        history = history_log(ctx, entry_dir, method)
        state = checkpointing(ctx, entry_dir / schema.TRAIN_STATE_FILE, identity)
        trainer = make_trainer(ctx, recipe.seed, state, runtime=runtime)
        batches = BatchAssembler(step_model(runtime, model), runtime)
        result = trainer.fit(method, ctx.pipeline(recipe.batch_size, recipe.seed), batches, [stage], history)
        log.info("teacher trained in %.1fs (test acc %.2f%%)", time.perf_counter() - started, result.final_test_acc)
        return summary_of(result)

    def test_accuracy(model: nn.Module) -> float:
        from kd_hydra.train.trainer import evaluate

        pipeline = ctx.pipeline(ctx.cfg.trainer.batch_size, ctx.cfg.trainer.seed, shared=False)
        return evaluate(ctx.runtime.prepare(model), pipeline.test_batches(), ctx.runtime).acc

    if plan.teacher_sha256 is None:
        store = TeacherStore(ctx.cache_path("teachers"))
        label, arch = ctx.teacher_label(), ctx.arch("teacher")
        if ctx.workers.parallel:
            teacher = store.get_or_train_together(ctx.workers, identity, label, plan.teacher, arch, train)
        else:
            teacher = store.get_or_train(identity, label, plan.teacher, arch, train)
    else:
        checkpoint = ctx.teacher_checkpoint(plan.teacher_sha256)
        evaluations = ctx.cache_path("teacher_evals") if ctx.workers.leader else None  # the leader records it
        teacher = checkpoint_teacher(plan.teacher, checkpoint, evaluations, test_accuracy)
    teacher = dataclasses.replace(teacher, model=ctx.runtime.prepare(teacher.model))
    teacher.model.eval().requires_grad_(False)
    return teacher


def train_student(ctx: RunContext, plan: Plan, teacher: Teacher | None) -> dict[str, Any]:
    """Train the student through the plan's method (reading ``teacher``'s outputs when there is one), after the
    method's initialization stage if it declares one."""
    cfg, method = ctx.cfg, plan.method
    student = ctx.runtime.prepare(plan.student)
    method.to(ctx.runtime.device)
    pipeline = ctx.pipeline(cfg.trainer.batch_size, cfg.trainer.seed, crop_pool=ctx.crop_pool())
    outputs = None
    if teacher is not None:
        method.setup_teacher(teacher.model)  # with the teacher's trained weights (OFD's margins)
        needs = TeacherNeeds(
            tuple(plan.request.teacher),
            method.uses_features or method.needs_strong_view,
            method.teacher_batch_statistics,
        )
        outputs = teacher_outputs(
            teacher.model,
            teacher.sha256,
            needs,
            pipeline,
            ctx.training_batches(cfg.trainer.seed),
            ctx.spec.num_classes,
            ctx.soft_label_cache(),
            ctx.runtime,
            ctx.workers,
        )
    strong = strong_views(pipeline) if method.needs_strong_view else None
    source = outputs.source if outputs is not None else None
    batches = BatchAssembler(step_model(ctx.runtime, student), ctx.runtime, source, plan.request.student, strong)
    stages = [
        initialization_stage(method, student, instantiate(cfg.optimizer, _convert_="all")),
        recipe_stage("student", cfg, cfg.trainer.epochs, student, method, "optimizer.lr"),
    ]
    history = history_log(ctx, ctx.out_dir, method)
    state = checkpointing(ctx, ctx.out_dir / schema.TRAIN_STATE_FILE, plan.identity)
    keep = snapshots(ctx, student, method)
    trainer = make_trainer(ctx, cfg.trainer.seed, state, snapshots=keep, on_epoch=ctx.trackers.log_epoch)
    result = trainer.fit(method, pipeline, batches, [stage for stage in stages if stage is not None], history)
    if not ctx.workers.leader:
        return None
    model_file = None
    if cfg.trainer.save_checkpoint:
        model_file = ctx.out_dir / MODEL_FILE
        keep.save(model_file)
    values = {**summary_of(result), **snapshot_values(keep, result)}
    fill_seconds = outputs.fill_seconds if teacher is not None else None
    values.update(student_measures(ctx, student, method, plan.request, teacher, result.history.rows, fill_seconds))
    if teacher is not None:
        values.update(
            teacher=cfg.teacher.name,
            teacher_test_acc=teacher.test_acc,
            teacher_source=teacher.source,
            teacher_params=count_parameters(teacher.model),
            soft_label_cache=outputs.cache_status,
            teacher_outputs=outputs.kind,
            teacher_published=teacher.published,
        )
        if teacher.published is not None and not teacher.published["agrees"]:
            plan = dataclasses.replace(plan, warnings=(*plan.warnings, published_problem(teacher.published)))
    record = finish(
        ctx,
        plan,
        model=cfg.student.name,
        method=method.name,
        model_params=count_parameters(student),
        method_params=count_parameters(method),
        checkpoint=str(model_file) if model_file else None,
        **values,
    )
    state.remove()
    return record


def strong_views(pipeline: Any) -> Any:
    """The strongly augmented view of a training batch (MLKD), drawn from the global RNG (checkpointed: a
    resumed run draws the same views)."""
    from kd_hydra.data.strong_augment import strong_view

    return lambda images: strong_view(images, pipeline.mean, pipeline.std)


def snapshots(ctx: RunContext, student: nn.Module, method: DistillMethod) -> Snapshots:
    """Where the student's weights go: ``model.pt``, and ``checkpoints/`` when ``trainer.save_best/save_every``."""
    arch = ctx.arch("student")
    has_parts = any(True for _ in method.state_dict())

    def save(path: Path) -> None:
        save_checkpoint(path, student, arch, method=method if has_parts else None)

    trainer = ctx.cfg.trainer
    return Snapshots(ctx.out_dir / CHECKPOINTS_DIR, save, best=trainer.save_best, every=trainer.save_every)


def snapshot_values(keep: Snapshots, result: FitResult) -> dict[str, Any]:
    if not keep.best:
        return {}
    split, epoch = ("val", result.best_val_epoch) if result.best_val_acc is not None else ("test", result.best_epoch)
    path = keep.directory / Snapshots.BEST_FILE
    return {"best_checkpoint": str(path), "best_checkpoint_split": split, "best_checkpoint_epoch": epoch}


def make_trainer(ctx: RunContext, seed: int, state: Checkpointing, **options: Any) -> Trainer:
    trainer = ctx.cfg.trainer
    options.setdefault("runtime", ctx.runtime)
    return Trainer(
        seed=seed,
        eval_every=trainer.eval_every,
        progress=trainer.progress and ctx.workers.leader,
        top5=ctx.top5,
        checkpointing=state,
        workers=ctx.workers,
        gather_batch=bool(trainer.gather_batch),
        **options,
    )


def history_log(ctx: RunContext, directory: Path, method: DistillMethod) -> HistoryLog:
    """The history of a fit: ``directory``'s history.csv on the leader, kept in memory by the other workers."""
    path = directory / schema.HISTORY_FILE if ctx.workers.leader else None
    return HistoryLog(path, schema.history_columns(method.parts))


def recipe_stage(
    name: str, recipe: DictConfig, epochs: int, model: nn.Module, method: DistillMethod, divergence_key: str
) -> Stage:
    """The recorded stage training ``model`` through ``method`` with ``recipe``'s optimizer and scheduler
    (``recipe``: the root config, or ``teacher_training``)."""
    optimizer = instantiate(recipe.optimizer, _convert_="all")
    scheduler = instantiate(recipe.scheduler, _convert_="all")
    return training_stage(name, epochs, model, method, optimizer, scheduler, divergence_key)


def step_model(runtime: Runtime, model: nn.Module) -> nn.Module:
    """The module the training steps call: ``model``, compiled when ``trainer.compile``."""
    return torch.compile(model) if runtime.compile else model


def checkpointing(ctx: RunContext, path: Path, identity: Mapping[str, Any]) -> Checkpointing:
    trainer = ctx.cfg.trainer
    resume = Resume(trainer.resume) is Resume.auto
    return Checkpointing(
        path=path, identity=identity, every=trainer.checkpoint_every, resume=resume, started=ctx.started
    )


def summary_of(result: FitResult) -> dict[str, Any]:
    return {key: getattr(result, key) for key in SUMMARY_KEYS}


# -- the run directory -----------------------------------------------------------------------------------


def claim(directory: RunDirectory, cfg: DictConfig, fresh: bool) -> None:
    hydra_node = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = list(OmegaConf.select(hydra_node, "overrides.task", default=[]) or []) if hydra_node else []
    directory.claim(cfg, hydra_node, overrides, fresh=fresh)


def start_trackers(cfg: DictConfig, out_dir: Path, names: tuple[str, str | None]) -> Any:
    run_name, group = names
    trackers = build_loggers(cfg.get("logger"), run_name, group, out_dir)
    trackers.log_hparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return trackers


def topology(ctx: RunContext) -> dict[str, Any]:
    """Where the run computed: workers (data-parallel processes), nodes, backend, device type, and the samples
    per BatchNorm batch of its training (metrics.json's ``topology``)."""
    cfg, workers = ctx.cfg, ctx.workers
    backend = torch.distributed.get_backend() if workers.parallel else None
    nodes = os.environ.get("GROUP_WORLD_SIZE") or os.environ.get("SLURM_JOB_NUM_NODES") if workers.parallel else None
    synchronized = bool(cfg.trainer.sync_batchnorm) and workers.parallel
    batch = cfg.teacher_training.batch_size if Mode(cfg.mode) is Mode.teacher else cfg.trainer.batch_size
    return {
        "workers": workers.world,
        "nodes": int(nodes or 1),
        "backend": backend,
        "device": ctx.runtime.device.type,
        "batchnorm_batch": batchnorm_batch(batch, workers.world, synchronized),
    }


def finish(ctx: RunContext, plan: Plan, **values: Any) -> dict[str, Any]:
    """Write metrics.json (last file of the run), tell the trackers and print the run's one-line summary."""
    wall = time.perf_counter() - ctx.started
    warnings = list(plan.warnings)
    record = write_completed(
        ctx.out_dir,
        ctx.cfg,
        plan.identity,
        dataset=ctx.spec.name,
        wall_seconds=wall,
        warnings=warnings,
        topology=topology(ctx),
        **values,
    )
    record_outcome(ctx.out_dir, schema.STATUS_COMPLETED, None, seconds=wall)
    ctx.trackers.log_summary(record)
    ctx.trackers.close(schema.STATUS_COMPLETED)
    print(headline(record, ctx.out_dir), flush=True)
    return record
