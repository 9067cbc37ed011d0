"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): ``ce_weight * CE + pkt_weight * PKT``.

On ``pre_logit`` of both networks (as mdistiller's ``pooled_feat`` and RepDistiller's ``feat[-1]``):
:func:`kd_hydra.losses.pkt_loss`, the KL between the cosine-similarity distributions. No trainable parts.
"""

from __future__ import annotations

from kd_hydra.losses import cross_entropy, pkt_loss

from .base import LossOutput, MethodBatch
from .points import PooledFeatureMethod


class PKT(PooledFeatureMethod):
    """Probabilistic knowledge transfer; parts ``ce`` and ``pkt`` (unweighted)."""

    parts = ("ce", "pkt")
    relates_samples = True

    def __init__(self, *, ce_weight: float, pkt_weight: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.pkt_weight = pkt_weight

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        pkt = pkt_loss(student.reshape(student.shape[0], -1), teacher)
        return self.weighted_loss(batch, {"ce": ce, "pkt": pkt})
