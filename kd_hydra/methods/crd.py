"""Contrastive representation distillation (Tian et al., ICLR 2020): ``ce_weight * CE + crd_weight * CRD``.

On ``pre_logit`` of both networks: embedding heads (Linear + L2 norm) to ``feat_dim``, a memory bank over the
training samples (:class:`kd_hydra.losses.ContrastMemory`, RepDistiller's 'exact' mode: K negatives of other
classes per sample), and the NCE objective (:func:`kd_hydra.losses.crd_nce_loss`) on both views, summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from kd_hydra.errors import ConfigError, DataError
from kd_hydra.losses import ContrastMemory, CRDEmbed, crd_nce_loss

from . import register_method
from .base import (
    DistillMethod,
    FeatureRequest,
    FeatureShapes,
    LossOutput,
    MethodBatch,
    cross_entropy,
    require_finite,
    require_positive_int,
    require_weights,
)

#: The feature point CRD embeds (the flattened pooled feature, as RepDistiller and mdistiller do).
CRD_POINT = "pre_logit"


@dataclass
class CRDConfig:
    _target_: str = "kd_hydra.methods.crd.CRD"
    name: str = "crd"
    ce_weight: float = 1.0
    crd_weight: float = 0.8
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    momentum: float = 0.5


@register_method(CRDConfig)
class CRD(DistillMethod):
    """CRD; parts ``ce`` and ``crd`` (both views' NCE, unweighted). Trainable: ``embed_student``, ``embed_teacher``;
    state: ``memory`` (buffers ``memory_student``, ``memory_teacher``, ``z_student``, ``z_teacher``)."""

    name = "crd"
    parts = ("ce", "crd")
    needs_teacher_logits = False

    def __init__(
        self,
        ce_weight: float = 1.0,
        crd_weight: float = 0.8,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        name: str = "crd",
    ) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.crd_weight = float(crd_weight)
        self.feat_dim = int(feat_dim)
        self.nce_k = int(nce_k)
        self.nce_t = float(nce_t)
        self.momentum = float(momentum)
        self.embed_student: CRDEmbed | None = None
        self.embed_teacher: CRDEmbed | None = None
        self.memory: ContrastMemory | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        require_weights(loss, "ce_weight", "crd_weight")
        require_positive_int(loss, "feat_dim")
        require_positive_int(loss, "nce_k")
        require_finite(loss, "nce_t", minimum=0.0, strict_minimum=True)
        if require_finite(loss, "momentum", minimum=0.0, maximum=1.0) == 1.0:
            raise ConfigError("loss.momentum", "must be >= 0 and < 1 (1 would never update the memory)")

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        if CRD_POINT not in student_points or CRD_POINT not in teacher_points:
            raise ConfigError("loss.name", f"crd needs the {CRD_POINT} feature of both networks")
        return FeatureRequest(student=(CRD_POINT,), teacher=(CRD_POINT,))

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        self.embed_student = CRDEmbed(math.prod(student_shapes[CRD_POINT]), self.feat_dim)
        self.embed_teacher = CRDEmbed(math.prod(teacher_shapes[CRD_POINT]), self.feat_dim)
        try:
            self.memory = ContrastMemory(self.feat_dim, train_targets, self.nce_k, self.nce_t, self.momentum)
        except ValueError as error:
            raise DataError(f"crd: {error}") from None

    def forward(self, batch: MethodBatch) -> LossOutput:
        if self.memory is None or self.embed_student is None or self.embed_teacher is None:
            raise RuntimeError("CRD.setup() must run before the first batch")
        ce = cross_entropy(batch.student_logits, batch.targets)
        student = self.embed_student(batch.student_features[CRD_POINT])
        teacher = self.embed_teacher(batch.teacher_features[CRD_POINT].detach())
        student_scores, teacher_scores = self.memory(student, teacher, batch.sample_indices)
        num_data = self.memory.num_data
        crd = crd_nce_loss(student_scores, num_data) + crd_nce_loss(teacher_scores, num_data)
        return LossOutput(total=self.ce_weight * ce + self.crd_weight * crd, parts={"ce": ce, "crd": crd})

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, crd_weight={self.crd_weight}, feat_dim={self.feat_dim}, "
            f"nce_k={self.nce_k}, nce_t={self.nce_t}, momentum={self.momentum}"
        )
