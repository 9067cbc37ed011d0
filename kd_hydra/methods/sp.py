"""Similarity-preserving KD (Tung & Mori, ICCV 2019): ``ce_weight * CE + sp_weight * SP`` on the last stage.

SP compares the row-normalised ``N x N`` Gram matrices of the flattened last ``stageN`` output of each
network (:func:`kd_hydra.losses.similarity_preserving_loss`), as RepDistiller (``feat[-2]``) and mdistiller
(``feats[-1]``) do; the stage counts and shapes of the two networks may differ. No trainable parts. (torchdistill's
``SPKDLoss`` scales the Gram rows by their L1 norm, ``normalize(G, 1)``; the paper and both suites use L2.)
"""

from __future__ import annotations

from collections.abc import Sequence

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, similarity_preserving_loss

from .base import DistillMethod, FeatureRequest, LossOutput, MethodBatch
from .points import stage_points


class SP(DistillMethod):
    """Similarity preserving; parts ``ce`` and ``sp`` (unweighted)."""

    parts = ("ce", "sp")
    relates_samples = True

    def __init__(self, *, ce_weight: float, sp_weight: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.sp_weight = sp_weight

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        student, teacher = stage_points(student_points), stage_points(teacher_points)
        if not student or not teacher:
            raise ConfigError("loss.name", "sp needs stage outputs (stageN feature points) of both networks")
        return self.keep_request(student[-1:], teacher[-1:])

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        sp = similarity_preserving_loss(student, teacher)
        return self.weighted_loss(batch, {"ce": ce, "sp": sp})
