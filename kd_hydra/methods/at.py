"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): ``ce_weight * CE + at_weight * sum_j AT_j``.

Every ``stageN`` output of the student is paired with the teacher's (both need the same number of stages);
``AT_j`` is :func:`kd_hydra.losses.attention_transfer_loss` on pair j. No trainable parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_hydra.losses import attention_transfer_loss, cross_entropy

from .base import LossOutput, MethodBatch
from .checks import require_finite
from .points import PairedStagesMethod


class AT(PairedStagesMethod):
    """Attention transfer over all stage pairs; parts ``ce`` and ``at`` (the summed AT terms, unweighted)."""

    parts = ("ce", "at")

    def __init__(self, *, ce_weight: float, at_weight: float, p: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.at_weight = at_weight
        self.p = p

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_finite(loss, "p", minimum=0.0, strict_minimum=True)

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        at = attention_transfer_loss(*self.requested(batch.student_features, batch.teacher_features), self.p)
        return self.weighted_loss(batch, {"ce": ce, "at": at})
