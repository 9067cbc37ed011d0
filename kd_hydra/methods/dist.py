"""DIST (Huang et al., NeurIPS 2022): ``ce_weight * CE + dist_weight * T^2 (beta * inter + gamma * intra)``.

Defaults follow the official CIFAR-100 setting (beta = gamma = 2, tau = 4, CE weight 1). With ``standardize``
(Sun et al., CVPR 2024) both logits are z-scored per sample before the temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_hydra.losses import cross_entropy, dist_loss, standardize_logits

from .base import DistillMethod, LossOutput, MethodBatch
from .checks import require_finite, require_weights


class DIST(DistillMethod):
    """DIST's relational matching of predictions; parts ``ce`` and ``dist`` (unweighted by ``dist_weight``)."""

    parts = ("ce", "dist")
    relates_samples = True

    def __init__(
        self,
        *,
        ce_weight: float,
        dist_weight: float,
        beta: float,
        gamma: float,
        temperature: float,
        standardize: bool,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dist_weight = dist_weight
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature
        self.standardize = standardize

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_weights(loss, "beta", "gamma")
        require_finite(loss, "temperature", minimum=0.0, strict_minimum=True)

    def forward(self, batch: MethodBatch) -> LossOutput:
        student, teacher = batch.student_logits, batch.teacher_logits
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        ce = cross_entropy(batch.student_logits, batch.targets)
        dist = dist_loss(student, teacher, self.beta, self.gamma, self.temperature)
        return self.weighted_loss(batch, {"ce": ce, "dist": dist})
