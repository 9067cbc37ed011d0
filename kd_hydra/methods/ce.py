"""Cross-entropy on the labels: the objective of teachers and of baseline students (no teacher)."""

from __future__ import annotations

from kd_hydra.losses import cross_entropy

from .base import DistillMethod, LossOutput, MethodBatch


class CrossEntropy(DistillMethod):
    """``CE(s, y)``; ``uses_teacher`` is False, so no teacher is built, loaded or run."""

    parts = ("ce",)
    uses_teacher = False

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        return LossOutput(total=ce, parts={"ce": ce})
