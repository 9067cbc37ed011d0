"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): ``ce_weight * CE + pkt_weight * PKT``.

On ``pre_logit`` of both networks (as mdistiller's ``pooled_feat`` and RepDistiller's ``feat[-1]``):
:func:`kd_hydra.losses.pkt_loss`, the KL between the cosine-similarity distributions. No trainable parts.
"""

from __future__ import annotations

from collections.abc import Sequence

from kd_hydra.losses import cross_entropy, pkt_loss

from .base import DistillMethod, FeatureRequest, LossOutput, MethodBatch
from .points import require_point

#: The feature point PKT reads (the flattened pooled feature).
PKT_POINT = "pre_logit"


class PKT(DistillMethod):
    """Probabilistic knowledge transfer; parts ``ce`` and ``pkt`` (unweighted)."""

    parts = ("ce", "pkt")

    def __init__(self, *, ce_weight: float, pkt_weight: float) -> None:
        super().__init__()

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        require_point("pkt", PKT_POINT, student_points, teacher_points)
        return self.keep_request((PKT_POINT,), (PKT_POINT,))

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        pkt = pkt_loss(student.reshape(student.shape[0], -1), teacher)
        return self.weighted_loss({"ce": ce, "pkt": pkt})
