"""KD with singular value decomposition (Lee et al., ECCV 2018): ``ce_weight * CE + kdsvd_weight * KDSVD``.

Every ``stageN`` output of the student is paired with the teacher's (RepDistiller's ``feat[1:-1]``, mdistiller's
``feats[1:]``); :func:`kd_hydra.losses.kdsvd_loss` relates consecutive stages through their leading right
singular vectors, reshaped as RepDistiller does (``(N, HW, C)``; mdistiller reshapes to ``(N, C H, W)``).
The singular vectors are compared channel by channel, so the paired stages need equal channel counts. No
trainable parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, kdsvd_loss

from .base import FeatureRequest, FeatureShapes, LossOutput, MethodBatch
from .checks import require_positive_int
from .points import PairedStagesMethod


class KDSVD(PairedStagesMethod):
    """KDSVD over the stages; parts ``ce`` and ``kdsvd`` (unweighted)."""

    parts = ("ce", "kdsvd")

    def __init__(self, *, ce_weight: float, kdsvd_weight: float, k: int) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.kdsvd_weight = kdsvd_weight
        self.k = k

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_positive_int(loss, "k")

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        request = super().feature_request(student_points, teacher_points)
        if len(request.student) < 2:
            raise ConfigError("loss.name", "kdsvd relates consecutive stages: both networks need at least two")
        return request

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        self.require_equal_channels(
            student_shapes, teacher_shapes, "kdsvd compares singular vectors channel by channel: stage channels differ",
            "pick archs of equal widths",
        )  # fmt: skip

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        kdsvd = kdsvd_loss(*self.requested(batch.student_features, batch.teacher_features), self.k)
        return self.weighted_loss(batch, {"ce": ce, "kdsvd": kdsvd})
