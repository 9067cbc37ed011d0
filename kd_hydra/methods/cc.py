"""Correlation congruence (Peng et al., ICCV 2019): ``ce_weight * CE + cc_weight * CC`` on embedded ``pre_logit``.

Both networks' pooled features are embedded by a trainable ``Linear(dim, feat_dim)`` (RepDistiller's
``LinearEmbed``, no normalisation). ``kernel: repdistiller`` (default) is RepDistiller's ``Correlation``, the
loss of the CRD paper's CIFAR-100 table (:func:`kd_hydra.losses.correlation_congruence_loss`);
``kernel: gaussian`` is the paper's Taylor-expanded RBF correlation with ``gamma`` and ``max_p``, as torchdistill
computes it (:func:`kd_hydra.losses.correlation_congruence_gaussian_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor, nn

from kd_hydra.losses import correlation_congruence_gaussian_loss, correlation_congruence_loss, cross_entropy
from kd_hydra.models.features import PRE_LOGIT

from .base import FeatureShapes, LossOutput, MethodBatch
from .checks import require_finite, require_positive_int
from .points import PooledFeatureMethod


class CC(PooledFeatureMethod):
    """Correlation congruence; parts ``ce`` and ``cc`` (unweighted). Trainable: ``embed_student``, ``embed_teacher``."""

    parts = ("ce", "cc")
    relates_samples = True

    def __init__(
        self,
        *,
        ce_weight: float,
        cc_weight: float,
        feat_dim: int,
        kernel: Literal["repdistiller", "gaussian"],
        gamma: float,
        max_p: int,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.cc_weight = cc_weight
        self.feat_dim = feat_dim
        self.kernel = kernel
        self.gamma = gamma
        self.max_p = max_p
        self.embed_student: nn.Linear | None = None
        self.embed_teacher: nn.Linear | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_positive_int(loss, "feat_dim")
        require_finite(loss, "gamma", minimum=0.0, strict_minimum=True)
        require_positive_int(loss, "max_p")

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        self.embed_student = nn.Linear(math.prod(student_shapes[PRE_LOGIT]), self.feat_dim)
        self.embed_teacher = nn.Linear(math.prod(teacher_shapes[PRE_LOGIT]), self.feat_dim)

    def forward(self, batch: MethodBatch) -> LossOutput:
        if self.embed_student is None or self.embed_teacher is None:
            raise RuntimeError("CC.setup() must run before the first batch")
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        e_s = self.embed_student(student.reshape(student.shape[0], -1))
        e_t = self.embed_teacher(teacher.reshape(teacher.shape[0], -1))
        if self.kernel == "gaussian":
            cc = correlation_congruence_gaussian_loss(e_s, e_t, self.gamma, self.max_p)
        else:
            cc = correlation_congruence_loss(e_s, e_t)
        return self.weighted_loss(batch, {"ce": ce, "cc": cc})
