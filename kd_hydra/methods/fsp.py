"""Flow of solution procedure (Yim et al., CVPR 2017) as RepDistiller trains it (``--distill fsp``).

FSP matrices between consecutive maps of ``stem, stage1..N`` (:func:`kd_hydra.losses.fsp_loss`; student and teacher
need the same channel count at each point). An initialization stage (``init_epochs``) trains the student's feature
modules (the student otherwise in eval mode, as RepDistiller's ``helper/pretrain.py``) on the FSP loss alone; the
distillation stage optimises ``ce_weight * CE + fsp_weight * FSP``. RepDistiller's distillation stage has no FSP
term (``fsp_weight: 0``: the term is still computed, without gradient, for the history).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, fsp_loss
from kd_hydra.models.features import feature_modules

from .base import DistillMethod, FeatureRequest, FeatureShapes, InitStage, LossOutput, MethodBatch
from .checks import require_init_stage
from .points import last_aligned, stage_points

STEM = "stem"


def _maps(points: Sequence[str]) -> list[str]:
    return ([STEM] if STEM in points else []) + stage_points(points)


class FSP(DistillMethod):
    """FSP; parts ``ce`` and ``fsp`` (the summed FSP terms, unweighted). No trainable parts."""

    parts = ("ce", "fsp")

    def __init__(self, *, ce_weight: float, fsp_weight: float, init_epochs: int, init_lr: float | None) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.fsp_weight = fsp_weight
        self.init_epochs = init_epochs
        self.init_lr = init_lr

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_init_stage(loss)

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        student, teacher = last_aligned(_maps(student_points), _maps(teacher_points))
        if len(student) < 2:
            raise ConfigError("loss.name", "fsp needs at least two feature maps (stem, stageN) in both networks")
        return self.keep_request(student, teacher)

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Any, num_classes: int
    ) -> None:
        self.require_equal_channels(
            student_shapes, teacher_shapes, "fsp needs the same channel counts in both networks",
            "pick a pair of the same family",
        )  # fmt: skip

    def flow_loss(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> Tensor:
        """The summed FSP terms of one batch."""
        return fsp_loss(*self.requested(student_features, teacher_features))

    def init_stage(self, student: nn.Module) -> InitStage | None:
        """RepDistiller's: the student's feature modules on the FSP loss alone."""
        return InitStage(self.init_epochs, self.init_lr, tuple(feature_modules(student)), self._batch_flow_loss)

    def _batch_flow_loss(self, batch: MethodBatch) -> Tensor:
        return self.flow_loss(batch.student_features, batch.teacher_features)

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        if self.fsp_weight == 0.0:  # RepDistiller: no FSP term after the init stage; logged only
            with torch.no_grad():
                fsp = self.flow_loss(batch.student_features, batch.teacher_features)
        else:
            fsp = self.flow_loss(batch.student_features, batch.teacher_features)
        return self.weighted_loss(batch, {"ce": ce, "fsp": fsp})
