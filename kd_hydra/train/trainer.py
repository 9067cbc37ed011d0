"""The epoch loop: :class:`Trainer` holds its settings, ``fit`` runs a sequence of :mod:`~kd_hydra.train.stages`.

Each epoch of a stage: train steps on the batches a :class:`~kd_hydra.train.batches.BatchAssembler` builds; for a
recorded stage, evaluation, a history row and the resumable training state (which names its stage, so a resumed
fit skips the stages before it). No host sync happens inside an epoch: loss parts and accuracy are summed on
the device and read once.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from kd_hydra.errors import CheckpointError, ConfigError, KDHydraError
from kd_hydra.methods.base import DistillMethod, LossOutput, MethodBatch
from kd_hydra.methods.contract import check_output, target_of
from kd_hydra.models.features import unwrap
from kd_hydra.records.files import HistoryLog, atomic_write_bytes
from kd_hydra.records.identity import identity_differences
from kd_hydra.records.schema import TOP5
from kd_hydra.train.batches import Batch, BatchAssembler, BatchSource, global_batch_sizes
from kd_hydra.train.distributed import SINGLE, Workers
from kd_hydra.train.runtime import Runtime
from kd_hydra.train.stages import Stage

log = logging.getLogger(__name__)

#: v2: the state names its stage (v1 states, from before stages, are refused).
TRAIN_STATE_FORMAT = "kd-hydra/train-state-v2"
MAX_DETAIL_CHARS = 200  # of an error quoted in a one-line message


class DivergedError(KDHydraError):
    """The training loss became NaN or infinite: the run is failed, nothing it trained is kept."""


@dataclass(frozen=True)
class EvalResult:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy of one evaluation pass."""

    acc: float
    top5: float
    loss: float


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], runtime: Runtime, workers: Workers = SINGLE
) -> EvalResult:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``batches`` (each worker's share of a
    split: hits and sample counts are summed over workers, so the accuracy is exact)."""
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
    sums, count = workers.sum_with_count(sums, count)
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


class StepForward(nn.Module):
    """The forward of one training step of ``stage``: the batch assembled, then the stage's loss; returns the
    :class:`~kd_hydra.methods.base.LossOutput` and the student's logits. Its parameters are those of the stage's
    modules, so it is what DistributedDataParallel wraps (gradients averaged over workers during backward). With
    ``gather`` the workers' batches are concatenated first (full-batch semantics for batch-relational losses)."""

    def __init__(self, stage: Stage, assemble: BatchAssembler, workers: Workers = SINGLE, gather: bool = False):
        super().__init__()
        self.modules_trained = nn.ModuleList(dict.fromkeys((*stage.train_modules, *stage.eval_modules)))
        self.stage, self.assemble, self.workers, self.gather = stage, assemble, workers, gather

    def forward(self, images: Tensor, targets: Tensor, sample_indices: Tensor) -> tuple[LossOutput, Tensor]:
        batch = self.assemble(images, targets, sample_indices)  # the student's forward under the runtime's autocast
        logits = batch.student_logits
        if self.gather:
            batch = gathered_batch(batch, self.workers)
        with self.assemble.runtime.autocast():
            return self.stage.loss(batch), logits


def gathered_batch(batch: MethodBatch, workers: Workers) -> MethodBatch:
    """``batch`` with every tensor's rows concatenated over workers (gradients flow back to each worker's rows)."""

    def rows(value: Any) -> Any:
        if isinstance(value, Tensor):
            return workers.gather_rows(value)
        if isinstance(value, Mapping):
            return {name: rows(tensor) for name, tensor in value.items()}
        return value

    return MethodBatch(**{item.name: rows(getattr(batch, item.name)) for item in dataclasses.fields(batch)})


def train_epoch(
    stage: Stage,
    batches: Iterable[Batch],
    step: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    global_sizes: Iterable[int] | None = None,
    workers: Workers = SINGLE,
    gathered: bool = False,
) -> dict[str, float]:
    """One pass of ``stage`` over ``batches`` through ``step`` (a :class:`StepForward`, maybe data-parallel);
    returns the mean loss and parts (``train_<part>``), accuracy (%), image count over all workers. The stage's
    modules are put in their modes first. ``global_sizes``: each step's batch size over all workers (a worker's
    loss is weighted by its share of it, unless the batch is ``gathered``: then every worker's loss is the whole
    batch's)."""
    stage.set_modes()
    # running sums of [loss, *parts, correct] weighted by batch size: one host sync per epoch (and the check)
    sums = torch.zeros(len(stage.parts) + 2, dtype=torch.float64, device=runtime.device)
    seen = 0
    sizes = iter(global_sizes) if global_sizes is not None else None
    for images, targets, sample_indices in batches:
        output, logits = step(images, targets, sample_indices)
        if not seen:  # the method's contract at the first step of every epoch; a NaN is divergence (below), not a fault
            check_output(
                output,
                stage.parts,
                target_of(stage.loss) if isinstance(stage.loss, DistillMethod) else stage.name,
                finite=False,
            )
        size = targets.shape[0]
        total = output.total
        if workers.parallel and not gathered:
            total = total * workers.loss_weight(size, next(sizes))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += size
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == targets).sum()
            values = [output.total.detach(), *(output.parts[name].detach() for name in stage.parts)]
            sums += torch.stack([v.double() * size for v in values] + [correct.double()])
    sums, seen = workers.sum_with_count(sums, seen)
    means = (sums / max(seen, 1)).tolist()
    stats = {"train_loss": means[0]}
    stats.update({f"train_{name}": value for name, value in zip(stage.parts, means[1:-1])})
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
            if not isinstance(state, dict):
                raise ValueError("not a kd-hydra training state")
            if state.get("format") != TRAIN_STATE_FORMAT:
                raise ValueError(f"format {state.get('format')!r}, this kd-hydra reads {TRAIN_STATE_FORMAT!r}")
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
    """One stage of a fit in progress: the model, its method, the stage's optimizer, scheduler and grad scaler,
    the history and the fit's progress (what the resumable state holds)."""

    model: nn.Module
    method: DistillMethod
    stage: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: HistoryLog
    track: Progress
    step: nn.Module | None = None  # the stage's StepForward, data-parallel over several workers
    gathered: bool = False  # whether the step concatenates the workers' batches

    def state(self, epoch: int, workers: Workers = SINGLE) -> dict[str, Any]:
        """The resumable state after ``epoch`` (on every worker: each one's RNG state is gathered)."""
        rng = _rng_state()
        worker_rng = {"worker_rng": workers.gather(rng)} if workers.parallel else {}
        return {
            "stage": self.stage,
            "epoch": epoch,
            "model": unwrap(self.model).state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "track": dict(self.track.__dict__),
            "history": list(self.history.rows),
            "rng": rng,
            **worker_rng,
        }

    def restore(self, saved: Mapping[str, Any], workers: Workers = SINGLE) -> int:
        """Load a saved state; returns its epoch. Raises KeyError/RuntimeError/ValueError when it does not fit."""
        if saved["stage"] != self.stage:
            raise ValueError(f"saved in stage {saved['stage']}, restoring stage {self.stage}")
        unwrap(self.model).load_state_dict(saved["model"])
        self.method.load_state_dict(saved["method"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.track.__dict__.update(Progress(**saved["track"]).__dict__)
        self.history.restore(saved["history"])
        _restore_rng(saved["worker_rng"][workers.rank] if workers.parallel else saved["rng"])
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
    """The epoch loop, with its settings fixed; :meth:`fit` gets the stages and what they train.

    The global RNG is seeded with ``seed`` at the start of each stage (dropout, strong views), so a stage draws
    the same whatever ran before it; ``on_epoch`` receives each history row (trackers).
    """

    runtime: Runtime
    seed: int
    eval_every: int = 1
    progress: bool = True
    top5: bool = False
    checkpointing: Checkpointing | None = None
    snapshots: Snapshots | None = None
    on_epoch: Callable[[Mapping[str, Any]], None] | None = None
    #: The data-parallel workers of this job; the leader alone writes the history, checkpoints and snapshots.
    workers: Workers = SINGLE
    #: Whether batch-relational methods see the workers' batches concatenated (else each worker's own batch).
    gather_batch: bool = False

    def fit(
        self,
        method: DistillMethod,
        data: BatchSource,
        batches: BatchAssembler,
        stages: Sequence[Stage],
        history: HistoryLog,
    ) -> FitResult:
        """Run ``stages`` in order on ``batches.model`` (resuming a saved state of the same identity in its
        stage; the stages before it are done); a NaN loss raises :class:`DivergedError`. The result describes
        the recorded stages."""
        saved = self.checkpointing.load() if self.checkpointing is not None and self.workers.leader else None
        saved = self.workers.broadcast(saved)  # every worker resumes from the leader's state
        first = 0
        if saved is not None:
            first = saved.get("stage")
            if not isinstance(first, int) or not 0 <= first < len(stages) or not stages[first].records:
                raise self.checkpointing.unusable(ValueError(f"saved in stage {first!r}, not a recorded stage here"))
        for stage in stages[:first]:
            log.info("%s stage: finished before the interruption, not run again", stage.name)
        track = Progress()
        resumed_from = None
        for index, stage in enumerate(stages[first:], first):
            if not stage.records:
                log.info("%s stage: %d epoch(s)", stage.name, stage.epochs)
            torch.manual_seed(self.seed)
            with stage.trainable():
                optimizer, scheduler = stage.build_optimizer()
                scaler = torch.amp.GradScaler(
                    self.runtime.device.type, enabled=self.runtime.autocast_dtype == torch.float16
                )
                run = Fit(batches.model, method, index, optimizer, scheduler, scaler, history, track)
                gather = self.gather_batch and self.workers.parallel and getattr(stage.loss, "relates_samples", False)
                run.step = self.workers.data_parallel(StepForward(stage, batches, self.workers, gather))
                run.gathered = gather
                if index == first and saved is not None:
                    resumed_from = self._resume(run, stage, saved)
                self._run_stage(run, stage, data, batches, resumed_from if index == first else None)
        seconds = track.train_seconds
        return FitResult(
            final_test_acc=track.final_acc,
            best_test_acc=track.best_acc,
            best_epoch=track.best_epoch,
            epochs=sum(stage.epochs for stage in stages if stage.records),
            train_images_per_second=track.train_images / seconds if seconds > 0 else float("nan"),
            history=history,
            final_test_acc_top5=track.final_top5,
            final_val_acc=track.final_val,
            best_val_acc=track.best_val,
            best_val_epoch=track.best_val_epoch,
            resumed_from_epoch=resumed_from,
        )

    def _run_stage(self, run: Fit, stage: Stage, data: BatchSource, batches: BatchAssembler, done: int | None) -> None:
        """The epochs of ``stage`` after the ``done`` ones of a resumed state."""
        show = self.progress and interactive()
        bar = tqdm(total=stage.epochs, initial=done or 0, desc=stage.name, unit="epoch", disable=not show)
        with bar:
            for epoch in range((done or 0) + 1, stage.epochs + 1):
                row = self._epoch(run, stage, epoch, data, batches, show)
                bar.set_postfix_str(_summary(row), refresh=False)
                bar.update(1)

    def _resume(self, run: Fit, stage: Stage, saved: Mapping[str, Any]) -> int:
        try:
            epoch = run.restore(saved, self.workers)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise self.checkpointing.unusable(error) from None
        self.checkpointing.forget()
        log.info("%s: resuming from %s after epoch %d of %d", stage.name, self.checkpointing.path, epoch, stage.epochs)
        return epoch

    def _epoch(
        self, run: Fit, stage: Stage, epoch: int, data: BatchSource, batches: BatchAssembler, show: bool
    ) -> dict[str, Any]:
        epoch_start = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        if stage.begin_epoch is not None:
            stage.begin_epoch(epoch, stage.epochs)
        self.runtime.synchronize()
        loop_start = time.perf_counter()  # teacher logits computed for the cache count as training work
        batches.begin_epoch(epoch - 1)
        description = f"{stage.name} {epoch}/{stage.epochs}"
        stream = _progress(data.train_batches(epoch - 1), show, data.num_train_batches, description)
        sizes = global_batch_sizes(data.num_train, data.batch_size, data.drop_last) if self.workers.parallel else None
        stats = train_epoch(
            stage, stream, run.step, run.optimizer, run.scaler, self.runtime, sizes, self.workers, run.gathered
        )
        self.runtime.synchronize()
        images = int(stats.pop("images"))
        if stage.records:
            run.track.train_seconds += time.perf_counter() - loop_start
            run.track.train_images += images
        if not math.isfinite(stats["train_loss"]):
            raise DivergedError(
                f"{stage.divergence_key}: the {stage.name} training loss became {stats['train_loss']} in epoch "
                f"{epoch} (lr {lr:g}); the run diverged: lower {stage.divergence_key} or check the loss.* settings"
            )
        run.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **stats}
        if stage.records and (epoch % self.eval_every == 0 or epoch == stage.epochs):
            row.update(self._evaluate(run, epoch, data))
        row["seconds"] = time.perf_counter() - epoch_start
        if stage.records:
            self._record(run, epoch, row)
        log.info(
            "%s epoch %d/%d: %s, lr %.3g, %.1fs", stage.name, epoch, stage.epochs, _summary(row), lr, row["seconds"]
        )
        if stage.records and self.checkpointing is not None:
            if epoch % self.checkpointing.every == 0 or epoch == stage.epochs:
                state = run.state(epoch, self.workers)
                if self.workers.leader:
                    self.checkpointing.save(state)
        return row

    def _record(self, run: Fit, epoch: int, row: dict[str, Any]) -> None:
        run.history.append(row)
        if not self.workers.leader:
            return
        if self.on_epoch is not None:
            self.on_epoch(run.history.rows[-1])
        if self.snapshots is not None and "test_acc" in row:
            self.snapshots.after_epoch(epoch, run.track)

    def _evaluate(self, run: Fit, epoch: int, data: BatchSource) -> dict[str, Any]:
        self.workers.share_buffers(unwrap(run.model))  # the leader's BatchNorm statistics, as recorded
        test = evaluate(run.model, data.test_batches(), self.runtime, self.workers)
        values: dict[str, Any] = {
            "test_acc": test.acc,
            "test_loss": test.loss,
            "test_acc_top5": test.top5 if self.top5 else None,
        }
        val = None
        if data.has_val:
            val = evaluate(run.model, data.val_batches(), self.runtime, self.workers)
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
    text = f"loss {row['train_loss']:.4f}{f' ({parts})' if parts else ''}, train acc {row['train_acc']:.2f}%"
    for key, name in (("val_acc", "val"), ("test_acc", "test")):
        if row.get(key) is not None:
            text += f", {name} acc {row[key]:.2f}%"
    return text
