"""The epoch loop: :class:`Trainer` holds its settings, ``fit`` trains a model through a method.

Each epoch: train steps (teacher outputs from a :mod:`~kd_hydra.stores.teacher_outputs` source), evaluation,
a history row, and the resumable training state. No host sync happens inside an epoch: loss parts and
accuracy are summed on the device and read once.
"""

from __future__ import annotations

import io
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from kd_hydra.errors import CheckpointError, ConfigError, KDHydraError
from kd_hydra.methods.base import DistillMethod, MethodBatch
from kd_hydra.models.features import unwrap
from kd_hydra.records.files import HistoryLog, atomic_write_bytes
from kd_hydra.records.identity import identity_differences
from kd_hydra.stores.teacher_outputs import TeacherSource
from kd_hydra.train.runtime import Runtime

log = logging.getLogger(__name__)

TRAIN_STATE_FORMAT = "kd-hydra/train-state-v1"
MAX_DETAIL_CHARS = 200  # of an error quoted in a one-line message
TOP5 = 5


class DivergedError(KDHydraError):
    """The training loss became NaN or infinite: the run is failed, nothing it trained is kept."""


class BatchSource(Protocol):
    """What the loop needs of a data pipeline (see :mod:`kd_hydra.data.pipeline`)."""

    num_train: int

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]: ...

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]: ...


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


def interactive() -> bool:
    """Whether progress bars have a reader: stderr is a terminal, or this runs in a Jupyter kernel."""
    if sys.stderr.isatty():
        return True
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _progress(iterable: Iterator, enabled: bool, total: int | None, description: str) -> Iterator:
    return tqdm(iterable, total=total, desc=description, leave=False, disable=not enabled, dynamic_ncols=True)


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


#: The key of a saved training state that holds the run's wall seconds up to the save.
WALL_SECONDS = "wall_seconds"


@dataclass
class Checkpointing:
    """Where a run keeps its resumable training state, how often, and the identity that must match to resume."""

    path: Path
    identity: Mapping[str, Any]
    every: int = 1
    resume: bool = True
    #: The ``time.perf_counter()`` the run's wall time counts from (earlier processes included): each saved state
    #: carries ``wall_seconds``, so a resumed run's metrics.json counts every process (to its last checkpoint).
    started: float | None = None
    _loaded: dict[str, Any] | None = field(default=None, repr=False)

    def save(self, state: Mapping[str, Any]) -> None:
        buffer = io.BytesIO()
        wall = {} if self.started is None else {WALL_SECONDS: time.perf_counter() - self.started}
        torch.save({"format": TRAIN_STATE_FORMAT, "identity": dict(self.identity), **wall, **state}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming applies; a checkpoint of another identity is a one-line error.

        Read once: a run checks it before claiming its directory, and training resumes from the same state.
        """
        if not self.resume or not self.path.is_file():
            return None
        if self._loaded is not None:
            return self._loaded
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
                raise ValueError("not a kd-hydra training state")
        except Exception as error:  # unreadable: the atomic write makes this a foreign or damaged file
            raise self.unusable(error) from error
        differences = identity_differences(state.get("identity") or {}, self.identity)
        if differences:
            raise ConfigError(
                "trainer.resume",
                f"{self.path} was written by another run ({differences}); rerun "
                "with the same settings, or trainer.resume=never to start over",
            )
        self._loaded = state
        return state

    def forget(self) -> None:
        """Drop the state read by :meth:`load` (once training has restored it)."""
        self._loaded = None

    def unusable(self, error: BaseException) -> CheckpointError:
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 3] + "..."
        return CheckpointError(
            f"{self.path}: cannot resume from it ({type(error).__name__}: {detail}); "
            "delete it or use trainer.resume=never"
        )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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


@dataclass
class Progress:
    """Best and final accuracies and throughput so far: the part of a fit that a checkpoint carries."""

    best_acc: float = float("-inf")
    best_epoch: int = 0
    final_acc: float = float("nan")
    final_top5: float | None = None
    best_val: float | None = None
    best_val_epoch: int | None = None
    final_val: float | None = None
    train_seconds: float = 0.0
    train_images: int = 0

    def selected_epoch(self) -> int | None:
        """The best epoch on validation, or on test for a run without a validation split."""
        return self.best_val_epoch if self.best_val is not None else (self.best_epoch or None)

    def record(self, epoch: int, test: EvalResult, top5: float | None, val: EvalResult | None) -> None:
        self.final_acc, self.final_top5 = test.acc, top5
        if test.acc > self.best_acc:
            self.best_acc, self.best_epoch = test.acc, epoch
        if val is not None:
            self.final_val = val.acc
            if self.best_val is None or val.acc > self.best_val:
                self.best_val, self.best_val_epoch = val.acc, epoch


@dataclass
class Fit:
    """What one ``fit`` trains: the model, its method, optimizer, scheduler, grad scaler and history."""

    model: nn.Module
    method: DistillMethod
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: HistoryLog
    track: Progress = field(default_factory=Progress)

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": unwrap(self.model).state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "track": dict(self.track.__dict__),
            "history": list(self.history.rows),
            "rng": _rng_state(),
        }

    def restore(self, saved: Mapping[str, Any]) -> int:
        """Load a saved state; returns its epoch. Raises KeyError/RuntimeError/ValueError when it does not fit."""
        unwrap(self.model).load_state_dict(saved["model"])
        self.method.load_state_dict(saved["method"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.track = Progress(**saved["track"])
        self.history.restore(saved["history"])
        _restore_rng(saved["rng"])
        return int(saved["epoch"])


@dataclass(frozen=True)
class Snapshots:
    """Checkpoints worth keeping, written at evaluated epochs only: ``best.pt`` (the best epoch on validation,
    else on test) and ``epoch_NNNN.pt`` every ``every`` epochs; ``save(path)`` writes the model's weights."""

    directory: Path
    save: Callable[[Path], None]
    best: bool = False
    every: int = 0

    BEST_FILE = "best.pt"

    def after_epoch(self, epoch: int, track: Progress) -> None:
        if self.every and epoch % self.every == 0:
            self.save(self.directory / f"epoch_{epoch:04d}.pt")
        if self.best and track.selected_epoch() == epoch:
            self.save(self.directory / self.BEST_FILE)


@dataclass(frozen=True)
class Trainer:
    """The epoch loop for one model, with its settings fixed; :meth:`fit` gets what it trains.

    ``label`` names the model in log lines; ``divergence_key`` is the config key a diverged run is told to
    lower; ``on_epoch`` receives each history row (trackers).
    """

    runtime: Runtime
    epochs: int
    eval_every: int = 1
    label: str = "student"
    divergence_key: str = "optimizer.lr"
    progress: bool = True
    top5: bool = False
    checkpointing: Checkpointing | None = None
    snapshots: Snapshots | None = None
    on_epoch: Callable[[Mapping[str, Any]], None] | None = None

    def fit(
        self,
        model: nn.Module,
        method: DistillMethod,
        data: BatchSource,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        history: HistoryLog,
        teacher: TeacherSource | None = None,
        student_features: Callable[[], Mapping[str, Tensor]] | None = None,
        strong_view: Callable[[Tensor], Tensor] | None = None,
    ) -> FitResult:
        """Train ``model`` for ``epochs`` (resuming a saved state of the same identity); a NaN loss raises
        :class:`DivergedError`."""
        scaler = torch.amp.GradScaler(self.runtime.device.type, enabled=self.runtime.autocast_dtype == torch.float16)
        run = Fit(model, method, optimizer, scheduler, scaler, history)
        resumed_from = self._resume(run)
        show = self.progress and interactive()
        bar = tqdm(total=self.epochs, initial=resumed_from or 0, desc=self.label, unit="epoch", disable=not show)
        with bar:
            for epoch in range((resumed_from or 0) + 1, self.epochs + 1):
                self._epoch(run, epoch, data, teacher, (student_features, strong_view), show)
                bar.set_postfix_str(_summary(run.history.rows[-1]), refresh=False)
                bar.update(1)
        track = run.track
        seconds = track.train_seconds
        return FitResult(
            final_test_acc=track.final_acc,
            best_test_acc=track.best_acc,
            best_epoch=track.best_epoch,
            epochs=self.epochs,
            train_images_per_second=track.train_images / seconds if seconds > 0 else float("nan"),
            history=history,
            final_test_acc_top5=track.final_top5,
            final_val_acc=track.final_val,
            best_val_acc=track.best_val,
            best_val_epoch=track.best_val_epoch,
            resumed_from_epoch=resumed_from,
        )

    def _resume(self, run: Fit) -> int | None:
        saved = self.checkpointing.load() if self.checkpointing is not None else None
        if saved is None:
            return None
        try:
            epoch = run.restore(saved)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise self.checkpointing.unusable(error) from None
        self.checkpointing.forget()
        log.info("%s: resuming from %s after epoch %d of %d", self.label, self.checkpointing.path, epoch, self.epochs)
        return epoch

    def _epoch(
        self,
        run: Fit,
        epoch: int,
        data: BatchSource,
        teacher: TeacherSource | None,
        views: tuple[Callable[[], Mapping[str, Tensor]] | None, Callable[[Tensor], Tensor] | None],
        show: bool,
    ) -> None:
        epoch_start = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        run.method.begin_epoch(epoch, self.epochs)
        self.runtime.synchronize()
        loop_start = time.perf_counter()  # teacher logits computed for the cache count as training work
        if teacher is not None:
            teacher.begin_epoch(epoch - 1)
        total = getattr(data, "num_train_batches", None)
        batches = _progress(data.train_batches(epoch - 1), show, total, f"{self.label} {epoch}/{self.epochs}")
        stats = train_epoch(run.model, batches, run.method, run.optimizer, run.scaler, self.runtime, teacher, *views)
        self.runtime.synchronize()
        run.track.train_seconds += time.perf_counter() - loop_start
        run.track.train_images += int(stats.pop("images"))
        if not math.isfinite(stats["train_loss"]):
            raise DivergedError(
                f"{self.divergence_key}: the {self.label} training loss became {stats['train_loss']} in epoch "
                f"{epoch} (lr {lr:g}); the run diverged: lower {self.divergence_key} or check the loss.* settings"
            )
        run.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **stats}
        if epoch % self.eval_every == 0 or epoch == self.epochs:
            row.update(self._evaluate(run, epoch, data))
        row["seconds"] = time.perf_counter() - epoch_start
        run.history.append(row)
        if self.on_epoch is not None:
            self.on_epoch(run.history.rows[-1])
        if self.snapshots is not None and "test_acc" in row:
            self.snapshots.after_epoch(epoch, run.track)
        log.info(
            "%s epoch %d/%d: %s, lr %.3g, %.1fs", self.label, epoch, self.epochs, _summary(row), lr, row["seconds"]
        )
        if self.checkpointing is not None and (epoch % self.checkpointing.every == 0 or epoch == self.epochs):
            self.checkpointing.save(run.state(epoch))

    def _evaluate(self, run: Fit, epoch: int, data: BatchSource) -> dict[str, Any]:
        test = evaluate(run.model, data.test_batches(), self.runtime)
        values: dict[str, Any] = {
            "test_acc": test.acc,
            "test_loss": test.loss,
            "test_acc_top5": test.top5 if self.top5 else None,
        }
        val = None
        if getattr(data, "has_val", False):
            val = evaluate(run.model, data.val_batches(), self.runtime)
            values.update(val_acc=val.acc, val_loss=val.loss)
        run.track.record(epoch, test, values["test_acc_top5"], val)
        return values


def _summary(row: Mapping[str, Any]) -> str:
    """``loss 0.41 (ce 0.52, kd 0.30), train acc 88.1%, val acc 90.2%, test acc 89.5%`` of a history row."""
    parts = ", ".join(
        f"{key.removeprefix('train_')} {value:.4f}"
        for key, value in row.items()
        if key.startswith("train_") and key not in ("train_loss", "train_acc") and value is not None
    )
    text = f"loss {row['train_loss']:.4f} ({parts}), train acc {row['train_acc']:.2f}%"
    for key, name in (("val_acc", "val"), ("test_acc", "test")):
        if row.get(key) is not None:
            text += f", {name} acc {row[key]:.2f}%"
    return text
