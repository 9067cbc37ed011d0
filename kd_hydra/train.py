"""The epoch loop: train steps through a method, evaluation, history rows and resumable epoch checkpoints.

No host sync happens inside an epoch: loss parts and accuracy are summed on the device and read once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from kd_hydra.config import Precision
from kd_hydra.errors import CheckpointError, ConfigError, KDHydraError
from kd_hydra.methods.base import DistillMethod, MethodBatch
from kd_hydra.outputs import HistoryLog, atomic_write_bytes

log = logging.getLogger(__name__)

TRAIN_STATE_FORMAT = "kd-hydra/train-state-v1"
TOP5 = 5
#: Devices where ``trainer.channels_last=null`` means on: CUDA, and the CPU, where it made the training step of
#: every zoo model 1.13-1.63x faster (benchmarks/cpu_defaults.py, benchmarks/README.md).
CHANNELS_LAST_DEVICES = ("cuda", "cpu")
MAX_LISTED_DIFFERENCES = 4


class DivergedError(KDHydraError):
    """The training loss became NaN or infinite: the run is failed, nothing it trained is kept."""


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed: device, autocast dtype (None = fp32), memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and memory format of this runtime."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit accelerator must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"'{name}' requested but no CUDA device is available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", "'mps' requested but MPS is not available; use auto or cpu")
    return torch.device(name)


def resolve_runtime(device: str, precision: str, channels_last: bool | None, compile: bool) -> Runtime:
    """Turn trainer settings into a :class:`Runtime`; fp16 needs CUDA, ``auto`` means bf16 on CUDA."""
    resolved = resolve_device(device)
    chosen = Precision(precision)
    on_cuda = resolved.type == "cuda"
    if chosen is Precision.auto:
        chosen = Precision.bf16 if on_cuda and torch.cuda.is_bf16_supported() else Precision.fp32
    if chosen is Precision.fp16 and not on_cuda:
        raise ConfigError("trainer.precision", f"fp16 needs a CUDA device (device is {resolved}); use bf16 or fp32")
    dtype = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[chosen]
    return Runtime(
        device=resolved,
        autocast_dtype=dtype,
        channels_last=resolved.type in CHANNELS_LAST_DEVICES if channels_last is None else bool(channels_last),
        compile=compile,
    )


class BatchSource(Protocol):
    """What the loop needs of a data pipeline (see :mod:`kd_hydra.data.pipeline`)."""

    num_train: int

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]: ...


@dataclass
class TeacherOutput:
    """The teacher's view of one training batch: logits, and the feature points a method asked for."""

    logits: Tensor
    features: Mapping[str, Tensor] = field(default_factory=dict)


class TeacherSource(Protocol):
    """Teacher outputs for a training batch: computed now, or read from the soft-label cache."""

    def begin_epoch(self, epoch: int) -> None: ...

    def __call__(self, images: Tensor, sample_indices: Tensor) -> TeacherOutput: ...


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


@dataclass(frozen=True)
class EvalResult:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy of one evaluation pass."""

    acc: float
    top5: float
    loss: float


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], runtime: Runtime) -> EvalResult:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``batches``."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss, top-1, top-5
    count = 0
    for images, targets in batches:
        with runtime.autocast():
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(TOP5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        sums += torch.stack(
            (
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
            )
        )
        count += targets.shape[0]
    if count == 0:
        raise ValueError("evaluation split is empty")
    loss, top1, top5 = (sums / count).tolist()
    return EvalResult(acc=100.0 * top1, top5=100.0 * top5, loss=loss)


def _progress(iterable: Iterator, enabled: bool, total: int | None, description: str) -> Iterator:
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=description, leave=False, disable=not show, dynamic_ncols=True)


def train_epoch(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor, Tensor]],
    method: DistillMethod,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    teacher: TeacherSource | None,
    student_features: Callable[[], Mapping[str, Tensor]] | None = None,
    strong_view: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns the mean loss and parts (``train_<part>``), accuracy (%), image count.

    With ``strong_view`` (methods whose ``needs_strong_view`` is set, MLKD) student and teacher also run on
    ``strong_view(images)``, given to the method as ``strong_student_logits``/``strong_teacher_logits``.
    """
    model.train()
    method.train()
    parts = method.parts
    # running sums of [loss, *parts, correct] weighted by batch size: one host sync per epoch
    sums = torch.zeros(len(parts) + 2, dtype=torch.float64, device=runtime.device)
    seen = 0
    for images, targets, sample_indices in batches:
        teacher_out = teacher(images, sample_indices) if teacher is not None else None
        strong_images = strong_view(images) if strong_view is not None else None
        strong_teacher = teacher(strong_images, sample_indices) if strong_images is not None and teacher else None
        with runtime.autocast():
            logits = model(images)
            features = dict(student_features()) if student_features is not None else {}
            strong_logits = model(strong_images) if strong_images is not None else None
            output = method(
                MethodBatch(
                    student_logits=logits,
                    targets=targets,
                    sample_indices=sample_indices,
                    teacher_logits=teacher_out.logits if teacher_out is not None else None,
                    student_features=features,
                    teacher_features=teacher_out.features if teacher_out is not None else {},
                    strong_student_logits=strong_logits,
                    strong_teacher_logits=strong_teacher.logits if strong_teacher is not None else None,
                )
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(output.total).backward()
        scaler.step(optimizer)
        scaler.update()
        batch = targets.shape[0]
        seen += batch
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == targets).sum()
            values = [output.total.detach(), *(output.parts[name].detach() for name in parts)]
            sums += torch.stack([v.double() * batch for v in values] + [correct.double()])
    means = (sums / max(seen, 1)).tolist()
    stats = {"train_loss": means[0]}
    stats.update({f"train_{name}": value for name, value in zip(parts, means[1:-1])})
    stats["train_acc"] = 100.0 * means[-1]
    stats["images"] = seen
    return stats


@dataclass
class FitResult:
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    epochs: int
    train_images_per_second: float
    history: HistoryLog
    final_test_acc_top5: float | None = None
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    best_val_epoch: int | None = None
    resumed_from_epoch: int | None = None


@dataclass
class Checkpointing:
    """Where a run keeps its resumable training state, how often, and what must match to resume from it."""

    path: Path
    settings: Mapping[str, Any]
    every: int = 1
    resume: bool = True

    def save(self, state: Mapping[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save({"format": TRAIN_STATE_FORMAT, "settings": dict(self.settings), **state}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming applies; a checkpoint of other settings is a one-line error."""
        if not self.resume or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
                raise ValueError("not a kd-hydra training state")
        except Exception as error:  # unreadable: the atomic write makes this a foreign or damaged file
            raise CheckpointError(
                f"{self.path}: cannot resume from it ({type(error).__name__}); delete it or use trainer.resume=never"
            ) from error
        differences = settings_differences(state.get("settings", {}), self.settings)
        if differences:
            raise ConfigError(
                "trainer.resume",
                f"{self.path} was written with other settings ({differences}); rerun "
                "with the same settings, or trainer.resume=never to start over",
            )
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``key: saved -> current`` for the first few keys that differ; empty when they match."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    shown = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys[:MAX_LISTED_DIFFERENCES]]
    if len(keys) > MAX_LISTED_DIFFERENCES:
        shown.append(f"and {len(keys) - MAX_LISTED_DIFFERENCES} more")
    return "; ".join(shown)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(_flatten_python_state(random.getstate()))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten_python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def fit(
    model: nn.Module,
    pipeline: BatchSource,
    method: DistillMethod,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epochs: int,
    runtime: Runtime,
    history: HistoryLog,
    teacher: TeacherSource | None = None,
    student_features: Callable[[], Mapping[str, Tensor]] | None = None,
    eval_every: int = 1,
    progress: bool = True,
    label: str = "train",
    checkpointing: Checkpointing | None = None,
    on_epoch: Callable[[Mapping[str, Any]], None] | None = None,
    lr_key: str = "optimizer.lr",
    top5: bool = False,
    strong_view: Callable[[Tensor], Tensor] | None = None,
) -> FitResult:
    """Train ``model`` with ``method`` for ``epochs``, evaluating every ``eval_every`` epochs and after the last.

    With ``checkpointing``, the whole training state is saved after every ``every``-th epoch and a saved
    state of the same settings is resumed from. A non-finite loss ends the run with :class:`DivergedError`.
    """
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
    num_batches = getattr(pipeline, "num_train_batches", None)
    has_val = bool(getattr(pipeline, "has_val", False))
    track = {
        "best_acc": float("-inf"),
        "best_epoch": 0,
        "final_acc": float("nan"),
        "final_top5": None,
        "best_val": None,
        "best_val_epoch": None,
        "final_val": None,
        "train_seconds": 0.0,
        "train_images": 0,
    }
    start_epoch, resumed_from = 1, None
    saved = checkpointing.load() if checkpointing is not None else None
    if saved is not None:
        _unwrapped(model).load_state_dict(saved["model"])
        method.load_state_dict(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        track.update(saved["track"])
        history.restore(saved["history"])
        _restore_rng(saved["rng"])
        resumed_from = int(saved["epoch"])
        start_epoch = resumed_from + 1
        log.info("%s: resuming from %s after epoch %d of %d", label, checkpointing.path, resumed_from, epochs)
    for epoch in range(start_epoch, epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        method.begin_epoch(epoch, epochs)
        runtime.synchronize()
        loop_start = time.perf_counter()  # teacher logits computed for the cache count as training work
        if teacher is not None:
            teacher.begin_epoch(epoch - 1)
        batches = _progress(pipeline.train_batches(epoch - 1), progress, num_batches, f"{label} {epoch}/{epochs}")
        stats = train_epoch(model, batches, method, optimizer, scaler, runtime, teacher, student_features, strong_view)
        runtime.synchronize()
        track["train_seconds"] += time.perf_counter() - loop_start
        track["train_images"] += int(stats.pop("images"))
        if not math.isfinite(stats["train_loss"]):
            raise DivergedError(
                f"{lr_key}: the {label} training loss became {stats['train_loss']} in epoch {epoch} "
                f"(lr {lr:g}); the run diverged: lower {lr_key} or check the loss.* settings"
            )
        scheduler.step()

        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **stats}
        if epoch % eval_every == 0 or epoch == epochs:
            test = evaluate(model, pipeline.test_batches(), runtime)
            row.update(test_acc=test.acc, test_loss=test.loss, test_acc_top5=test.top5 if top5 else None)
            track["final_acc"], track["final_top5"] = test.acc, row["test_acc_top5"]
            if test.acc > track["best_acc"]:
                track["best_acc"], track["best_epoch"] = test.acc, epoch
            if has_val:
                val = evaluate(model, pipeline.val_batches(), runtime)
                row.update(val_acc=val.acc, val_loss=val.loss)
                track["final_val"] = val.acc
                if track["best_val"] is None or val.acc > track["best_val"]:
                    track["best_val"], track["best_val_epoch"] = val.acc, epoch
        row["seconds"] = time.perf_counter() - epoch_start
        history.append(row)
        if on_epoch is not None:
            on_epoch(history.rows[-1])
        shown_acc = "-" if row.get("test_acc") is None else f"{row['test_acc']:.2f}%"
        log.info(
            "%s epoch %d/%d: loss %.4f, train acc %.2f%%, test acc %s, lr %.3g, %.1fs",
            label,
            epoch,
            epochs,
            stats["train_loss"],
            stats["train_acc"],
            shown_acc,
            lr,
            row["seconds"],
        )
        if checkpointing is not None and (epoch % checkpointing.every == 0 or epoch == epochs):
            checkpointing.save(
                {
                    "epoch": epoch,
                    "model": _unwrapped(model).state_dict(),
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "track": dict(track),
                    "history": list(history.rows),
                    "rng": _rng_state(),
                }
            )
    seconds = track["train_seconds"]
    return FitResult(
        final_test_acc=track["final_acc"],
        best_test_acc=track["best_acc"],
        best_epoch=track["best_epoch"],
        epochs=epochs,
        train_images_per_second=track["train_images"] / seconds if seconds > 0 else float("nan"),
        history=history,
        final_test_acc_top5=track["final_top5"],
        final_val_acc=track["final_val"],
        best_val_acc=track["best_val"],
        best_val_epoch=track["best_val_epoch"],
        resumed_from_epoch=resumed_from,
    )
