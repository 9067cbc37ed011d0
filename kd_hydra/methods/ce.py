"""Cross-entropy on the labels: the objective of teachers and of baseline students (no teacher)."""

from __future__ import annotations

from dataclasses import dataclass

from . import register_method
from .base import DistillMethod, LossOutput, MethodBatch, cross_entropy


@dataclass
class CEConfig:
    _target_: str = "kd_hydra.methods.ce.CrossEntropy"
    name: str = "ce"


@register_method(CEConfig)
class CrossEntropy(DistillMethod):
    """``CE(s, y)``; ``uses_teacher`` is False, so no teacher is built, loaded or run."""

    name = "ce"
    parts = ("ce",)
    uses_teacher = False
    needs_teacher_logits = False

    def __init__(self, name: str = "ce") -> None:
        super().__init__()

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        return LossOutput(total=ce, parts={"ce": ce})
