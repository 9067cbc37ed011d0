"""What a run measures after training, for the report: calibration, agreement with the teacher, compute, cost.

Pure functions of logits (:func:`calibration_bins`, :func:`expected_calibration_error`, :class:`SplitMeasures`)
and of networks (:func:`forward_macs`, :func:`method_macs`, through ``torch.utils.flop_counter``), and the two
callers whose values ``run/app.py`` adds to metrics.json: :func:`student_measures` and :func:`teacher_measures`
(teachers and baselines also keep their test logits, so that the analysis can compare a baseline with its setup's
teacher). Nothing here changes what a run trained: every pass is an ``eval``-mode forward after training (method
probes on a copy).
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from kd_hydra.models.features import FeatureRecorder, unwrap
from kd_hydra.records import schema
from kd_hydra.records.files import atomic_write_bytes

log = logging.getLogger(__name__)

#: Equal-width confidence bins of the expected calibration error (Guo et al., 2017; Naeini et al., 2015).
ECE_BINS = 15
#: FlopCounterMode counts 2 FLOPs per multiply-accumulate (convolutions, matrix products).
FLOPS_PER_MAC = 2
#: Images of the probe batch that runs a method's modules once (their MACs are divided by it).
METHOD_PROBE_BATCH = 2
#: How :data:`~kd_hydra.records.schema.TEST_LOGITS_FILE` and the teachers' kept test logits store them.
LOGITS_DTYPE = torch.float16
#: Where a teacher's test logits are kept, under ``paths.cache_dir``.
TEACHER_LOGITS_CACHE = "teacher_test_logits"


def calibration_bins(logits: Tensor, targets: Tensor, bins: int = ECE_BINS) -> Tensor:
    """``(3, bins)`` float64 sums per confidence bin: images, top-1 confidence, correct predictions.

    Confidence is the largest softmax probability; bin ``m`` (1-based) holds confidences in ``((m-1)/M, m/M]``.
    """
    probabilities = logits.detach().double().softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    sums = torch.zeros(3, bins, dtype=torch.float64, device=logits.device)
    sums[0].index_add_(0, index, torch.ones_like(confidence))
    sums[1].index_add_(0, index, confidence)
    sums[2].index_add_(0, index, (predicted == targets).double())
    return sums


def ece_of_bins(sums: Tensor) -> float:
    """ECE (%) from :func:`calibration_bins` sums: ``sum_m |B_m|/n * |acc(B_m) - conf(B_m)|``."""
    images = float(sums[0].sum())
    if images == 0:
        raise ValueError("no images to measure calibration on")
    return 100.0 * float((sums[2] - sums[1]).abs().sum()) / images


def expected_calibration_error(logits: Tensor, targets: Tensor, bins: int = ECE_BINS) -> float:
    """ECE (%) of ``logits`` on ``targets`` with ``bins`` equal-width confidence bins (see :func:`calibration_bins`)."""
    return ece_of_bins(calibration_bins(logits, targets, bins))


@dataclass
class SplitMeasures:
    """Sums over the test batches of a student and (optionally) a teacher: ECEs, top-1 agreement, KL(teacher||student).

    ``add`` a batch at a time; the properties give the results (the teacher's ones None without a teacher).
    """

    bins: int = ECE_BINS
    images: int = 0
    student_bins: Tensor | None = None
    teacher_bins: Tensor | None = None
    agreements: float = 0.0
    kl_sum: float = 0.0
    _with_teacher: bool = field(default=False, repr=False)

    def add(self, student_logits: Tensor, targets: Tensor, teacher_logits: Tensor | None = None) -> None:
        """Add one batch (summed in float64 on the CPU, whatever the device)."""
        student_logits, targets = student_logits.detach().float().cpu(), targets.cpu()
        self.images += int(targets.shape[0])
        self.student_bins = _summed(self.student_bins, calibration_bins(student_logits, targets, self.bins))
        if teacher_logits is None:
            return
        teacher_logits = teacher_logits.detach().float().cpu()
        self._with_teacher = True
        self.teacher_bins = _summed(self.teacher_bins, calibration_bins(teacher_logits, targets, self.bins))
        self.agreements += float((student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).sum())
        student_log = F.log_softmax(student_logits.double(), dim=1)
        teacher_log = F.log_softmax(teacher_logits.double(), dim=1)
        self.kl_sum += float(F.kl_div(student_log, teacher_log, log_target=True, reduction="sum"))

    @property
    def ece(self) -> float:
        """The student's ECE (%)."""
        if self.student_bins is None:
            raise ValueError("no images to measure calibration on")
        return ece_of_bins(self.student_bins)

    @property
    def teacher_ece(self) -> float | None:
        return ece_of_bins(self.teacher_bins) if self.teacher_bins is not None else None

    @property
    def agreement(self) -> float | None:
        """Top-1 agreement (%) of student and teacher."""
        return 100.0 * self.agreements / self.images if self._with_teacher else None

    @property
    def kl(self) -> float | None:
        """Mean KL(teacher || student) per image at temperature 1, in nats."""
        return self.kl_sum / self.images if self._with_teacher else None


def _summed(total: Tensor | None, more: Tensor) -> Tensor:
    return more if total is None else total + more


def forward_macs(model: nn.Module, image_shape: tuple[int, ...], device: torch.device) -> int:
    """Multiply-accumulates of one ``eval``-mode forward of ``model`` on one image of ``image_shape`` (C, H, W).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; normalisation,
    activations and pooling are not counted), which reports FLOPs = 2 x MACs.
    """
    inner = unwrap(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        inner(torch.zeros(1, *image_shape, device=device))
    return counter.get_total_flops() // FLOPS_PER_MAC


def method_macs(
    method: nn.Module,
    student: nn.Module,
    teacher: nn.Module,
    request: Any,
    image_shape: tuple[int, ...],
    device: torch.device,
) -> int:
    """Multiply-accumulates per training image of the method's own modules (its children: connectors,
    embeddings, memory), from one forward of a copy of the method on a probe batch; 0 for a method without
    modules. Raises whatever the probe raises (the caller records None)."""
    from kd_hydra.methods.base import MethodBatch

    if not any(True for _ in method.children()):
        return 0
    probe = copy.deepcopy(method).train()  # the forward may update memory banks: never the run's own
    recorders = [FeatureRecorder(student, list(request.student)), FeatureRecorder(teacher, list(request.teacher))]
    images = torch.zeros(METHOD_PROBE_BATCH, *image_shape, device=device)
    try:
        with torch.no_grad():
            student_logits = unwrap(student).eval()(images).float()
            teacher_logits = unwrap(teacher).eval()(images).float()
            student_features, teacher_features = (dict(recorder.features) for recorder in recorders)
            strong = method.needs_strong_view
            batch = MethodBatch(
                student_logits=student_logits,
                targets=torch.zeros(METHOD_PROBE_BATCH, dtype=torch.int64, device=device),
                sample_indices=torch.arange(METHOD_PROBE_BATCH, device=device),
                teacher_logits=teacher_logits,
                student_features=student_features,
                teacher_features=teacher_features,
                strong_student_logits=student_logits if strong else None,
                strong_teacher_logits=teacher_logits if strong else None,
            )
            with FlopCounterMode(display=False) as counter:
                probe(batch)
    finally:
        for recorder in recorders:
            recorder.remove()
    root = type(probe).__name__
    children = {f"{root}.{name}" for name, _ in probe.named_children()}
    flops = sum(sum(counts.values()) for name, counts in counter.get_flop_counts().items() if name in children)
    return int(flops) // FLOPS_PER_MAC // METHOD_PROBE_BATCH


@torch.inference_mode()
def test_logits(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], runtime: Any) -> Tensor:
    """``model``'s logits (``eval`` mode) over ``batches``, in their order, as :data:`LOGITS_DTYPE` on the CPU."""
    model = unwrap(model).eval()
    kept = []
    for images, _ in batches:
        with runtime.autocast():
            kept.append(model(images).float().to(LOGITS_DTYPE).cpu())
    return torch.cat(kept)


@torch.inference_mode()
def measure_test_split(
    student: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    runtime: Any,
    teacher_logits: Tensor | None = None,
    keep_logits: bool = False,
) -> tuple[SplitMeasures, Tensor | None]:
    """:class:`SplitMeasures` of ``student`` (``eval`` mode) over the test ``batches``, with the teacher's logits of
    the same images in the same order (:func:`teacher_test_logits`) when given; with ``keep_logits`` also the
    student's logits (:data:`LOGITS_DTYPE`, on the CPU, in the batches' order)."""
    measures, kept, seen = SplitMeasures(), [], 0
    student = unwrap(student).eval()
    for images, targets in batches:
        with runtime.autocast():
            student_logits = student(images)
        count = int(targets.shape[0])
        teacher = teacher_logits[seen : seen + count] if teacher_logits is not None else None
        measures.add(student_logits, targets, teacher)
        seen += count
        if keep_logits:
            kept.append(student_logits.float().to(LOGITS_DTYPE).cpu())
    if teacher_logits is not None and seen != len(teacher_logits):
        raise ValueError(f"{len(teacher_logits)} teacher logits for {seen} test images")
    return measures, torch.cat(kept) if kept else None


def npy_bytes(logits: Tensor) -> bytes:
    """``logits`` as the bytes of a ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, logits.numpy(), allow_pickle=False)
    return buffer.getvalue()


def write_test_logits(out_dir: Path, logits: Tensor) -> None:
    """``schema.TEST_LOGITS_FILE`` in ``out_dir``: the test logits as a float16 ``.npy`` array, atomically."""
    atomic_write_bytes(out_dir / schema.TEST_LOGITS_FILE, npy_bytes(logits))


def teacher_test_logits(ctx: Any, teacher: Any) -> Tensor:
    """The test logits of ``teacher`` (a :class:`~kd_hydra.stores.teachers.Teacher`), computed once per teacher,
    data, normalisation and precision and kept in ``<cache_dir>/teacher_test_logits/`` (every distill run of that
    teacher reads them; computed again where the cache cannot be written)."""
    from kd_hydra.records.identity import plain
    from kd_hydra.stores.cache_entry import CacheEntry, entry_name

    description = {
        "format": 1,
        "teacher_sha256": teacher.sha256,
        "dataset_content": ctx.data_digest,
        "normalize": plain(ctx.cfg.dataset.normalize),
        "precision": str(ctx.runtime.autocast_dtype),
        "channels_last": ctx.runtime.channels_last,
    }
    entry = CacheEntry(ctx.cache_path(TEACHER_LOGITS_CACHE) / entry_name(description, digits=24))
    data = entry.read_sealed(schema.TEST_LOGITS_FILE) if entry.open(quiet=True) is not None else None
    if data is not None:
        try:
            return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
        except ValueError:
            log.warning("the teacher's test logits at %s are unreadable; computing them again", entry.path)
    logits = test_logits(teacher.model, _test_batches(ctx), ctx.runtime)
    try:
        entry.seal({schema.TEST_LOGITS_FILE: entry.write(schema.TEST_LOGITS_FILE, npy_bytes(logits))})
    except OSError as error:  # a read-only cache: computed again next time
        log.warning("could not keep the teacher's test logits at %s (%s)", entry.path, error)
    return logits


def measured_macs(model: nn.Module, image_shape: tuple[int, ...], device: torch.device) -> int | None:
    """:func:`forward_macs`, or None (logged) for a network the counter cannot run: a run never fails on it."""
    try:
        return forward_macs(model, image_shape, device)
    except Exception as error:  # noqa: BLE001 - a measure for the report, not part of the result
        log.warning("MACs not measured: %s: %s", type(error).__name__, error)
        return None


def split_sizes(spec: Any) -> dict[str, int]:
    """``train_images``, ``val_images`` and ``test_images`` of a dataset spec."""
    return {"train_images": spec.num_train, "val_images": spec.num_val, "test_images": spec.num_test}


def loop_seconds(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """The sum of the history rows' ``seconds`` (the epoch loop), None without any."""
    seconds = [float(row["seconds"]) for row in rows if row.get("seconds") is not None]
    return sum(seconds) if seconds else None


def image_shape_of(spec: Any) -> tuple[int, int, int]:
    return (spec.channels, spec.image_size, spec.image_size)


def teacher_measures(ctx: Any, teacher: Any) -> dict[str, Any]:
    """metrics.json values of a ``mode=teacher`` run (data sizes, MACs, test ECE); writes its test logits."""
    logits = teacher_test_logits(ctx, teacher)
    write_test_logits(ctx.out_dir, logits)
    targets = torch.cat([targets.cpu() for _, targets in _test_batches(ctx)])
    macs = measured_macs(teacher.model, image_shape_of(ctx.spec), ctx.runtime.device)
    return {**split_sizes(ctx.spec), "model_macs": macs, "test_ece": expected_calibration_error(logits, targets)}


def student_measures(
    ctx: Any,
    student: nn.Module,
    method: nn.Module,
    request: Any,
    teacher: Any | None,
    history_rows: Iterable[Mapping[str, Any]],
    fill_seconds: float | None,
) -> dict[str, Any]:
    """metrics.json values of a student run: data sizes, loop and cache-fill seconds, MACs, its test ECE and,
    with ``teacher`` (a distill run's :class:`~kd_hydra.stores.teachers.Teacher`), the teacher's MACs, ECE and
    validation accuracy, the method's MACs, agreement and KL. A baseline (no teacher) writes its test logits."""
    shape, device = image_shape_of(ctx.spec), ctx.runtime.device
    values: dict[str, Any] = {**split_sizes(ctx.spec), "train_seconds": loop_seconds(history_rows)}
    values["soft_label_cache_fill_seconds"] = fill_seconds
    values["model_macs"] = measured_macs(student, shape, device)
    logits = teacher_test_logits(ctx, teacher) if teacher is not None else None
    test, kept = measure_test_split(student, _test_batches(ctx), ctx.runtime, logits, keep_logits=teacher is None)
    values.update(test_ece=test.ece, teacher_test_ece=test.teacher_ece, teacher_agreement=test.agreement,
                  teacher_kl=test.kl)  # fmt: skip
    if teacher is None:
        write_test_logits(ctx.out_dir, kept)
        return values
    values["teacher_val_acc"] = teacher.summary.get("final_val_acc")
    values["teacher_macs"] = measured_macs(teacher.model, shape, device)
    try:
        values["method_macs"] = method_macs(method, student, teacher.model, request, shape, device)
    except Exception as error:  # noqa: BLE001 - a method whose modules cannot be probed alone: not measured
        log.info("method_macs not measured: %s: %s", type(error).__name__, error)
        values["method_macs"] = None
    return values


def _test_batches(ctx: Any) -> Iterable[tuple[Tensor, Tensor]]:
    trainer = ctx.cfg.trainer
    return ctx.pipeline(trainer.eval_batch_size, trainer.seed).test_batches()
