"""The epoch loop: train steps, evaluation and history rows, with no host sync inside an epoch."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from kd_hydra.config import Precision
from kd_hydra.errors import ConfigError
from kd_hydra.losses import LossParts
from kd_hydra.outputs import HistoryLog

log = logging.getLogger(__name__)


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
        channels_last=on_cuda if channels_last is None else bool(channels_last),
        compile=compile,
    )


class BatchSource(Protocol):
    """What the loop needs of a data pipeline (see :mod:`kd_hydra.data.pipeline`)."""

    num_train: int

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]: ...


class TeacherLogits(Protocol):
    """Teacher logits for a training batch: computed now, or read from the soft-label cache."""

    def begin_epoch(self, epoch: int) -> None: ...

    def __call__(self, images: Tensor, sample_indices: Tensor) -> Tensor: ...


class LiveTeacher:
    """Runs the frozen teacher on every batch (the reference behaviour, and the folder-data path)."""

    def __init__(self, teacher: nn.Module, runtime: Runtime) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.runtime = runtime

    def begin_epoch(self, epoch: int) -> None:
        pass

    def __call__(self, images: Tensor, sample_indices: Tensor) -> Tensor:
        with torch.no_grad(), self.runtime.autocast():
            return self.teacher(images).float()


LossFn = Callable[[Tensor, Tensor, Tensor | None], LossParts]


@dataclass
class FitResult:
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    epochs: int
    train_images_per_second: float
    history: HistoryLog


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], runtime: Runtime) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``batches``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = 0
    for images, targets in batches:
        with runtime.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
        count += targets.shape[0]
    if count == 0:
        raise ValueError("evaluation split is empty")
    return 100.0 * correct.item() / count, loss_sum.item() / count


def _progress(iterable: Iterator, enabled: bool, total: int | None, description: str) -> Iterator:
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=description, leave=False, disable=not show, dynamic_ncols=True)


def train_epoch(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor, Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    teacher_logits: TeacherLogits | None,
) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss parts, accuracy (%) and the image count."""
    model.train()
    # running sums of [loss, ce, kd, correct] weighted by batch size: one host sync per epoch
    sums = torch.zeros(4, dtype=torch.float64, device=runtime.device)
    zero = torch.zeros((), device=runtime.device)
    seen = 0
    for images, targets, sample_indices in batches:
        soft = teacher_logits(images, sample_indices) if teacher_logits is not None else None
        with runtime.autocast():
            logits = model(images)
        parts = loss_fn(logits, targets, soft)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
        batch = targets.shape[0]
        seen += batch
        with torch.no_grad():
            kd = parts.kd if parts.kd is not None else zero
            correct = (logits.argmax(dim=1) == targets).sum()
            sums += torch.stack((parts.total.detach() * batch, parts.ce.detach() * batch, kd.detach() * batch,
                                 correct.to(sums.dtype)))
    loss, ce, kd, correct = (sums / max(seen, 1)).tolist()
    return {"train_loss": loss, "train_ce": ce, "train_kd": kd if teacher_logits is not None else None,
            "train_acc": 100.0 * correct, "images": seen}


def fit(
    model: nn.Module,
    pipeline: BatchSource,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epochs: int,
    runtime: Runtime,
    history: HistoryLog,
    teacher_logits: TeacherLogits | None = None,
    eval_every: int = 1,
    progress: bool = True,
    label: str = "train",
) -> FitResult:
    """Train ``model`` for ``epochs``, evaluating every ``eval_every`` epochs and after the last."""
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
    num_batches = getattr(pipeline, "num_train_batches", None)
    best_acc, best_epoch, final_acc = float("-inf"), 0, float("nan")
    train_seconds, train_images = 0.0, 0
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        runtime.synchronize()
        loop_start = time.perf_counter()  # teacher logits computed for the cache count as training work
        if teacher_logits is not None:
            teacher_logits.begin_epoch(epoch - 1)
        batches = _progress(pipeline.train_batches(epoch - 1), progress, num_batches, f"{label} {epoch}/{epochs}")
        stats = train_epoch(model, batches, loss_fn, optimizer, scaler, runtime, teacher_logits)
        runtime.synchronize()
        train_seconds += time.perf_counter() - loop_start
        train_images += int(stats.pop("images"))
        scheduler.step()

        test_acc = test_loss = None
        if epoch % eval_every == 0 or epoch == epochs:
            test_acc, test_loss = evaluate(model, pipeline.test_batches(), runtime)
            final_acc = test_acc
            if test_acc > best_acc:
                best_acc, best_epoch = test_acc, epoch
        row = {"epoch": epoch, "lr": lr, **stats, "test_acc": test_acc, "test_loss": test_loss,
               "seconds": time.perf_counter() - epoch_start}
        history.append(row)
        shown_acc = "-" if test_acc is None else f"{test_acc:.2f}%"
        log.info("%s epoch %d/%d: loss %.4f, train acc %.2f%%, test acc %s, lr %.3g, %.1fs",
                 label, epoch, epochs, stats["train_loss"], stats["train_acc"], shown_acc, lr, row["seconds"])
    return FitResult(
        final_test_acc=final_acc,
        best_test_acc=best_acc,
        best_epoch=best_epoch,
        epochs=epochs,
        train_images_per_second=train_images / train_seconds if train_seconds > 0 else float("nan"),
        history=history,
    )
