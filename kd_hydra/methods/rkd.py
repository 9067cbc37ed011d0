"""Relational KD (Park et al., CVPR 2019): ``ce_weight * CE + rkd_weight * (w_d * distance + w_a * angle)``.

On ``pre_logit`` of both networks (the pooled feature, as mdistiller's ``pooled_feat`` and RepDistiller's
``feat[-1]``): :func:`kd_hydra.losses.rkd_loss`. No trainable parts.
"""

from __future__ import annotations

from kd_hydra.losses import cross_entropy, rkd_loss

from .base import LossOutput, MethodBatch
from .points import PooledFeatureMethod


class RKD(PooledFeatureMethod):
    """Distance- and angle-wise relations; parts ``ce`` and ``rkd`` (``w_d * distance + w_a * angle``)."""

    parts = ("ce", "rkd")
    relates_samples = True

    def __init__(self, *, ce_weight: float, rkd_weight: float, distance_weight: float, angle_weight: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.rkd_weight = rkd_weight
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        rkd = rkd_loss(student, teacher, self.distance_weight, self.angle_weight)
        return self.weighted_loss(batch, {"ce": ce, "rkd": rkd})
