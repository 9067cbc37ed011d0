"""What the loop reads: training batches (:class:`BatchSource`), the teacher's outputs (:class:`TeacherSource`),
and the one object that turns a batch into a method's :class:`~kd_hydra.methods.base.MethodBatch`
(:class:`BatchAssembler`). The data pipelines and the teacher stores implement the two protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from kd_hydra.methods.base import MethodBatch
from kd_hydra.models.features import FeatureRecorder
from kd_hydra.train.runtime import Runtime

#: A training batch: normalised images, targets, sample indices (positions in the training split).
Batch = tuple[Tensor, Tensor, Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """The batches of a dataset split by use (see :mod:`kd_hydra.data.pipeline`); epochs count from 0."""

    num_train: int
    #: The global batch (over all workers) and whether a short last one is dropped.
    batch_size: int
    drop_last: bool
    #: Whether the teacher's logits of an epoch can be cached (the same augmented batches in every run).
    supports_logit_cache: bool

    @property
    def num_train_batches(self) -> int: ...

    @property
    def has_val(self) -> bool: ...

    def train_batches(self, epoch: int) -> Iterator[Batch]: ...

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]: ...


def global_batch_sizes(num_train: int, batch_size: int, drop_last: bool) -> Iterator[int]:
    """The size of each training batch of an epoch, over all workers."""
    stop = num_train - num_train % batch_size if drop_last else num_train
    for start in range(0, stop, batch_size):
        yield min(batch_size, stop - start)


@dataclass
class TeacherOutput:
    """The teacher's view of one training batch: logits, and the feature points a method asked for."""

    logits: Tensor
    features: Mapping[str, Tensor] = field(default_factory=dict)


class TeacherSource(Protocol):
    """Teacher outputs for a training batch: computed now, or read from the soft-label cache."""

    def begin_epoch(self, epoch: int) -> None: ...

    def __call__(self, images: Tensor, sample_indices: Tensor) -> TeacherOutput: ...


class BatchAssembler:
    """Builds the :class:`MethodBatch` of each training batch: the teacher's outputs (``teacher``), the student's
    logits from ``model`` (under the runtime's autocast) with its recorded ``student_points``, and, with
    ``strong_view`` (MLKD), both networks' logits on ``strong_view(images)``.
    """

    def __init__(
        self,
        model: nn.Module,
        runtime: Runtime,
        teacher: TeacherSource | None = None,
        student_points: Sequence[str] = (),
        strong_view: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.model = model
        self.runtime = runtime
        self.teacher = teacher
        self.strong_view = strong_view
        self.recorder = FeatureRecorder(model, student_points) if student_points else None

    def begin_epoch(self, epoch: int) -> None:
        """Before the batches of ``epoch`` (from 0): the cached teacher loads (or computes) that epoch's logits."""
        if self.teacher is not None:
            self.teacher.begin_epoch(epoch)

    def __call__(self, images: Tensor, targets: Tensor, sample_indices: Tensor) -> MethodBatch:
        teacher = self.teacher(images, sample_indices) if self.teacher is not None else None
        strong_images = self.strong_view(images) if self.strong_view is not None else None
        strong_teacher = None
        if strong_images is not None and self.teacher is not None:
            strong_teacher = self.teacher(strong_images, sample_indices)
        with self.runtime.autocast():
            logits = self.model(images)
            features = dict(self.recorder.features) if self.recorder is not None else {}  # before the strong view
            strong_logits = self.model(strong_images) if strong_images is not None else None
        return MethodBatch(
            student_logits=logits,
            targets=targets,
            sample_indices=sample_indices,
            teacher_logits=teacher.logits if teacher is not None else None,
            student_features=features,
            teacher_features=teacher.features if teacher is not None else {},
            strong_student_logits=strong_logits,
            strong_teacher_logits=strong_teacher.logits if strong_teacher is not None else None,
        )

    def close(self) -> None:
        """Remove the student's feature hooks."""
        if self.recorder is not None:
            self.recorder.remove()
