"""What a sweep will cost before it starts: epochs and device seconds of every planned job.

Seconds come from a calibration on the device at hand: each distinct network of the sweep (architecture, data
shape, batch size) runs a few training steps and a few no-grad forwards on random images of the data's shape,
with the jobs' thread count, precision and memory format (:class:`Calibrator`). A job is then the sum of its
parts, per training image and epoch:

- a teacher or a labels-only student: one training step of its network, plus a forward per evaluated image;
- a distill job: the student's step, plus the teacher's forward when the method runs the teacher live (feature
  methods); a logit method reads the soft-label cache, whose first job (in launch order) of each cache key
  (teacher, seed, data) pays the teacher's forward over every epoch and the others read it (the saving);
- a method's initialization stage (``loss.init_epochs``) adds its epochs of student step and teacher forward.

Not counted: a method's own modules (connectors, CRD's memory: a few percent for most methods, up to ~2x for
kdsvd, mlkd and reviewkd, README "What each costs"), data loading and model set-up (a few seconds per job).
"""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from kd_hydra.enums import Mode
from kd_hydra.errors import ConfigError
from kd_hydra.instantiate import build
from kd_hydra.methods import DistillMethod
from kd_hydra.records.identity import dataset_config_digest, digest
from kd_hydra.train.runtime import configure_threads, resolve_runtime

#: Training steps and forwards timed per network (after one untimed step of each, which warms the allocator).
CALIBRATION_BATCHES = 3

#: Split sizes of the torchvision datasets (the loader variant -> (train, test, classes)), known without the files.
TORCHVISION_SIZES = {"cifar10": (50_000, 10_000, 10), "cifar100": (50_000, 10_000, 100)}
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class DataShape:
    """What the cost of a job depends on in its data: split sizes and one image's shape."""

    train: int
    val: int
    test: int
    classes: int
    channels: int
    image_size: int


def _npz_member_shape(archive: zipfile.ZipFile, key: str) -> tuple[int, ...]:
    with archive.open(f"{key}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(handle)[0])


def _raw_shape(dataset: DictConfig) -> tuple[int, int, int, int, int]:
    """(train, test, classes, channels, image size) of ``dataset`` before subset and validation split."""
    loader = dataset.loader
    target = str(OmegaConf.select(loader, "_target_", default=""))
    if target.endswith("load_synthetic"):
        return (
            int(loader.num_train),
            int(loader.num_test),
            int(loader.num_classes),
            int(loader.channels),
            int(loader.image_size),
        )
    if target.endswith("load_cifar"):
        variant = str(OmegaConf.select(loader, "variant", default=dataset.name))
        if variant in TORCHVISION_SIZES:
            train, test, classes = TORCHVISION_SIZES[variant]
            return train, test, classes, 3, 32
    if target.endswith("load_arrays") and dataset.path:
        path = Path(str(dataset.path))
        try:
            with zipfile.ZipFile(path) as archive:
                x_train, x_test = _npz_member_shape(archive, "x_train"), _npz_member_shape(archive, "x_test")
            classes = dataset.num_classes
            if classes is None:
                with np.load(path) as arrays:
                    classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise ConfigError("dataset.path", f"{path}: cannot read the split sizes: {error}") from None
        return x_train[0], x_test[0], int(classes), x_train[3], x_train[1]
    raise ConfigError("dataset", f"{dataset.name}: its size is known only once loaded; the estimate covers "
                      "synthetic, cifar10, cifar100 and arrays datasets")  # fmt: skip


def data_shape(dataset: DictConfig) -> DataShape:
    """The :class:`DataShape` of a dataset config, without loading it (``dataset.subset``, ``val_fraction`` applied)."""
    train, test, classes, channels, size = _raw_shape(dataset)
    subset = dataset.get("subset")
    if subset:
        train, test = min(train, int(subset)), min(test, int(subset))
    val = int(round(train * float(dataset.get("val_fraction") or 0.0)))
    image_size = int(dataset.image_size) if dataset.get("image_size") else size
    return DataShape(train - val, val, test, classes, channels, image_size)


@dataclass(frozen=True)
class NetTimes:
    """Seconds per image of one network on the device at hand: a training step, and a no-grad forward."""

    step: float
    forward: float


@dataclass
class Calibrator:
    """Times each distinct network once (memoised); ``clock`` and ``batches`` are for tests."""

    batches: int = CALIBRATION_BATCHES
    clock: Callable[[], float] = time.perf_counter
    times: dict[str, NetTimes] = field(default_factory=dict)
    device: str = ""

    def network(
        self, node: DictConfig, data: DataShape, batch_size: int, trainer: DictConfig, precision: str
    ) -> NetTimes:
        """The :class:`NetTimes` of network ``node`` at ``batch_size`` with the job's runtime settings."""
        runtime = [str(trainer.device), trainer.channels_last, trainer.num_threads, precision]
        key = digest([OmegaConf.to_container(node, resolve=True), data.classes, data.channels, data.image_size,
                      batch_size, runtime])  # fmt: skip
        if key not in self.times:
            self.times[key] = self._measure(node, data, batch_size, trainer, precision)
        return self.times[key]

    def _measure(
        self, node: DictConfig, data: DataShape, batch_size: int, trainer: DictConfig, precision: str
    ) -> NetTimes:
        runtime = resolve_runtime(str(trainer.device), precision, trainer.channels_last, False)
        self.device = str(runtime.device)
        threads = torch.get_num_threads()
        configure_threads(trainer.num_threads)
        try:
            torch.manual_seed(0)
            model = runtime.prepare(
                build(node, num_classes=data.classes, in_channels=data.channels, image_size=data.image_size)
            )
            images = torch.randn(batch_size, data.channels, data.image_size, data.image_size, device=runtime.device)
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, data.classes, (batch_size,), device=runtime.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

            def step() -> None:
                with runtime.autocast():
                    loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            def forward() -> None:
                with torch.no_grad(), runtime.autocast():
                    model(images)

            model.train()
            step_seconds = self._timed(step, runtime)
            model.eval()
            forward_seconds = self._timed(forward, runtime)
        finally:
            torch.set_num_threads(threads)
        return NetTimes(step_seconds / batch_size, forward_seconds / batch_size)

    def _timed(self, work: Callable[[], None], runtime: Any) -> float:
        """Seconds of one call of ``work``: the mean of :attr:`batches` calls after an untimed one."""
        work()
        runtime.synchronize()
        start = self.clock()
        for _ in range(self.batches):
            work()
        runtime.synchronize()
        return (self.clock() - start) / self.batches


def _value(setting: Any) -> str:
    """A config value as text: an enum (a structured config's ``Precision``) by its value."""
    return str(setting.value if isinstance(setting, Enum) else setting)


@dataclass
class JobCost:
    """One planned job's estimate: its kind (teacher, baseline, or the method), epochs and seconds."""

    name: str
    kind: str
    epochs: int
    seconds: float
    cache: str = ""  # distill: "fill", "warm" or "live"
    saved: float = 0.0  # seconds the soft-label cache saves this job (warm) against running the teacher live


def evaluations(epochs: int, every: int) -> int:
    """Evaluated epochs of a run: every ``every``-th and always the last."""
    return len(set(range(every, epochs + 1, max(every, 1))) | {epochs}) if epochs > 0 else 0


def runs_teacher_live(loss: DictConfig) -> bool:
    """Whether the method of ``loss`` runs the teacher on every batch (features, a strong view, batch statistics)
    instead of reading the soft-label cache."""
    method = get_class(str(loss._target_))
    return (
        method.feature_request is not DistillMethod.feature_request
        or method.needs_strong_view
        or method.teacher_batch_statistics
    )


def cache_key(cfg: DictConfig) -> str:
    """Jobs with equal keys share one soft-label cache entry (as ``kd_hydra.stores.logit_cache.cache_description``
    says: the teacher, the data, the seed and the cache's format; a crop pool's entry, every seed)."""
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    pooled = OmegaConf.select(cfg, "soft_label_cache.crops_per_image", default=None) is not None
    return digest([teacher, OmegaConf.to_container(cfg.teacher_training, resolve=True),
                   dataset_config_digest(cfg.dataset), None if pooled else int(cfg.trainer.seed),
                   OmegaConf.to_container(cfg.soft_label_cache, resolve=True)])  # fmt: skip


def job_cost(name: str, cfg: DictConfig, calibrator: Calibrator, filled: set[str]) -> JobCost:
    """The estimate of one job (``filled``: cache keys a job before this one fills; this job's key is added)."""
    data = data_shape(cfg.dataset)
    evaluated = data.val + data.test
    mode = Mode(cfg.mode)
    trainer = cfg.trainer
    if mode is Mode.teacher:
        recipe = cfg.teacher_training
        teacher = calibrator.network(cfg.teacher, data, int(recipe.batch_size), trainer, _value(recipe.precision))
        epochs = int(recipe.epochs)
        seconds = epochs * data.train * teacher.step
        seconds += evaluations(epochs, int(trainer.eval_every)) * evaluated * teacher.forward
        return JobCost(name, "teacher", epochs, seconds)
    student = calibrator.network(cfg.student, data, int(trainer.batch_size), trainer, _value(trainer.precision))
    epochs = int(trainer.epochs)
    seconds = epochs * data.train * student.step
    seconds += evaluations(epochs, int(trainer.eval_every)) * evaluated * student.forward
    if mode is Mode.student:
        return JobCost(name, "baseline", epochs, seconds)
    recipe = cfg.teacher_training
    teacher = calibrator.network(cfg.teacher, data, int(trainer.batch_size), trainer, _value(recipe.precision))
    init = int(OmegaConf.select(cfg, "loss.init_epochs", default=0) or 0)
    seconds += init * data.train * (student.step + teacher.forward) + data.test * teacher.forward
    teacher_epochs = epochs * data.train * teacher.forward
    crops = OmegaConf.select(cfg, "soft_label_cache.crops_per_image", default=None)
    fill = teacher_epochs if crops is None else int(crops) * data.train * teacher.forward  # a pool: K crops an image
    cost = JobCost(name, str(cfg.loss.name), epochs + init, seconds)
    if runs_teacher_live(cfg.loss) or not cfg.soft_label_cache.enabled:
        cost.seconds += teacher_epochs
        cost.cache = "live"
    elif (key := cache_key(cfg)) in filled:
        cost.cache, cost.saved = "warm", teacher_epochs
    else:
        filled.add(key)
        cost.seconds += fill
        cost.cache = "fill"
    return cost


def estimate(jobs: Iterable[tuple[str, DictConfig]], calibrator: Calibrator) -> list[JobCost]:
    """The cost of each ``(directory name, composed config)`` job, in launch order (which fills the cache)."""
    filled: set[str] = set()
    return [job_cost(name, cfg, calibrator, filled) for name, cfg in jobs]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def hours(seconds: float) -> str:
    """``12.3 device-hours (12h18m)``, with enough digits for small sweeps."""
    value = seconds / SECONDS_PER_HOUR
    shown = f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"
    return f"{shown} device-hours ({_duration(seconds)})"


def plan_lines(costs: list[JobCost], device: str, skipped: int = 0) -> list[str]:
    """The plan printed before any job: one line per kind of job (jobs, epochs, estimate), then the total."""
    kinds: dict[str, list[JobCost]] = {}
    for cost in costs:
        kinds.setdefault(cost.kind, []).append(cost)
    total = sum(c.seconds for c in costs)
    lines = [f"plan: {len(costs)} jobs to run" + (f" ({skipped} already completed, skipped)" if skipped else "")
             + f", {sum(c.epochs for c in costs)} epochs; estimated on {device or 'this device'} from a calibration "
             f"of {CALIBRATION_BATCHES} batches per network:"]  # fmt: skip
    for kind, group in kinds.items():
        epochs = sorted({c.epochs for c in group})
        epoch_text = "/".join(map(str, epochs))
        seconds = sum(c.seconds for c in group)
        lines.append(f"  {kind:<12} {len(group):>4} jobs x {epoch_text:>5} epochs  {hours(seconds)}")
    cached = [c for c in costs if c.cache in ("fill", "warm")]
    if cached:
        fills = sum(c.cache == "fill" for c in cached)
        saved = sum(c.saved for c in costs)
        lines.append(f"  soft-label cache: {fills} of {len(cached)} logit-method jobs fill it, the others read it "
                     f"(saves {hours(saved)})")  # fmt: skip
    lines.append(f"  total: {hours(total)}")
    return lines


def cost_record(costs: list[JobCost], device: str) -> dict[str, Any]:
    """The estimate as the sweep's ledger keeps it (``kd_hydra.records.ledger.write_estimate``)."""
    return {
        "device": device,
        "calibration_batches": CALIBRATION_BATCHES,
        "total_seconds": sum(c.seconds for c in costs),
        "jobs": {c.name: {"kind": c.kind, "epochs": c.epochs, "seconds": c.seconds, "cache": c.cache} for c in costs},
    }


def over_budget(costs: list[JobCost], budget_hours: float | None) -> str | None:
    """The one-line refusal when the estimate exceeds ``budget_hours`` (None: no budget), else None."""
    if budget_hours is None:
        return None
    total = sum(c.seconds for c in costs)
    if total / SECONDS_PER_HOUR <= budget_hours or math.isclose(total / SECONDS_PER_HOUR, budget_hours):
        return None
    return (f"hydra.sweeper.budget_hours: the sweep's estimate, {hours(total)}, exceeds the budget of "
            f"{budget_hours:g} device-hours; no job was started")  # fmt: skip


def estimate_or_reason(jobs: list[tuple[str, DictConfig]], calibrator: Calibrator) -> list[JobCost] | str:
    """:func:`estimate`, or the one-line reason why the jobs cannot be estimated (a dataset of unknown size)."""
    try:
        return estimate(jobs, calibrator)
    except ConfigError as error:
        return str(error)
