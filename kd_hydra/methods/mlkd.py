"""Multi-level logit distillation (Jin et al., CVPR 2023) as the logit-standardization repository trains it.

Student and teacher run on each batch (the weak view) and on its strongly augmented view
(:func:`kd_hydra.data.strong_augment.strong_view`, RandAugment(2, 10) + Cutout; ``needs_strong_view``).
``ce_weight * (CE(weak) + CE(strong)) + kd_weight * (kd + cc + bc)`` with the instance-, class- and batch-level
terms of :func:`kd_hydra.losses.mlkd_loss` at temperatures ``(temperature, 3, 5, 2, 6)``; ``standardize``
z-scores the logits of the KL terms (Sun et al., CVPR 2024). No trainable parts; the teacher runs live.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_hydra.losses import cross_entropy, mlkd_loss

from .base import DistillMethod, LossOutput, MethodBatch
from .checks import require_finite


class MLKD(DistillMethod):
    """MLKD; parts ``ce`` (both views' CE), ``kd``, ``cc``, ``bc`` (unweighted)."""

    parts = ("ce", "kd", "cc", "bc")
    relates_samples = True
    needs_strong_view = True

    def __init__(self, *, ce_weight: float, kd_weight: float, temperature: float, standardize: bool) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.standardize = standardize

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_finite(loss, "temperature", minimum=0.0, strict_minimum=True)

    def forward(self, batch: MethodBatch) -> LossOutput:
        if batch.strong_student_logits is None or batch.strong_teacher_logits is None or batch.teacher_logits is None:
            raise RuntimeError("MLKD needs the strongly augmented view: train with strong_view (needs_strong_view)")
        ce = cross_entropy(batch.student_logits, batch.targets) + cross_entropy(
            batch.strong_student_logits, batch.targets
        )
        terms = mlkd_loss(
            batch.student_logits,
            batch.teacher_logits,
            batch.strong_student_logits,
            batch.strong_teacher_logits,
            self.temperature,
            self.standardize,
        )
        total = self.ce_weight * ce + self.kd_weight * (terms.kd + terms.cc + terms.bc)
        return LossOutput(total=total, parts={"ce": ce, "kd": terms.kd, "cc": terms.cc, "bc": terms.bc})
