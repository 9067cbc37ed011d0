"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): ``ce_weight * CE + at_weight * sum_j AT_j``.

Every ``stageN`` output of the student is paired with the teacher's (both need the same number of stages);
``AT_j`` is :func:`kd_hydra.losses.attention_transfer_loss` on pair j. No trainable parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kd_hydra.losses import attention_transfer_loss, cross_entropy

from .base import (
    DistillMethod,
    FeatureRequest,
    LossOutput,
    MethodBatch,
    paired_stages,
    require_finite,
    require_weights,
    stage_points,
)


class AT(DistillMethod):
    """Attention transfer over all stage pairs; parts ``ce`` and ``at`` (the summed AT terms, unweighted)."""

    parts = ("ce", "at")

    def __init__(self, *, ce_weight: float, at_weight: float, p: float) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.at_weight = float(at_weight)
        self.p = float(p)
        self.stages: tuple[str, ...] = ()

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        require_weights(loss, "ce_weight", "at_weight")
        require_finite(loss, "p", minimum=0.0, strict_minimum=True)

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        self.stages = paired_stages("at", student_points, teacher_points)
        return FeatureRequest(student=self.stages, teacher=self.stages)

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        stages = self.stages or tuple(stage_points(list(batch.student_features)))
        at = attention_transfer_loss(
            [batch.student_features[s] for s in stages], [batch.teacher_features[s].detach() for s in stages], self.p
        )
        return LossOutput(total=self.ce_weight * ce + self.at_weight * at, parts={"ce": ce, "at": at})
