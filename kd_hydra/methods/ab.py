"""Activation boundaries (Heo et al., AAAI 2019) as RepDistiller trains them (``--distill abound``).

An initialization stage (``init_epochs``) trains the student's feature modules (the student otherwise in eval mode,
as RepDistiller's ``helper/pretrain.py``) with a connector on :func:`kd_hydra.losses.activation_boundary_loss`
between the connected student pre-activations (``stageN_preact``) and the teacher's; the distillation stage then
optimises ``ce_weight * CE + ab_weight * AB``. RepDistiller's
distillation stage has no AB term (``ab_weight: 0``: the term is still computed for the history, without gradient
and with the connectors in eval mode, so they stay as the initialization stage left them).
The connector of each pair is the identity where channels and size agree, else a ConvReg conv + BatchNorm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_hydra.losses import activation_boundary_loss, cross_entropy
from kd_hydra.models.features import feature_modules

from .base import DistillMethod, FeatureRequest, FeatureShapes, InitStage, LossOutput, MethodBatch
from .checks import require_finite, require_init_stage
from .fitnet import _spatial_map
from .points import require_preact_pairs


def ab_connector(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """RepDistiller's AB connector: identity for equal (C, H), else the ConvReg conv + BatchNorm (no ReLU)."""
    if student[:2] == teacher[:2]:
        return nn.Identity()
    return nn.Sequential(_spatial_map(student, teacher), nn.BatchNorm2d(teacher[0]))


class AB(DistillMethod):
    """Activation boundaries; parts ``ce`` and ``ab`` (the AB term, unweighted). Trainable: ``connectors``."""

    parts = ("ce", "ab")

    def __init__(
        self, *, ce_weight: float, ab_weight: float, margin: float, init_epochs: int, init_lr: float | None
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.ab_weight = ab_weight
        self.margin = margin
        self.init_epochs = init_epochs
        self.init_lr = init_lr
        self.connectors: nn.ModuleList | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_finite(loss, "margin", minimum=0.0)
        require_init_stage(loss)

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        return self.keep_request(*require_preact_pairs(student_points, teacher_points))

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Any, num_classes: int
    ) -> None:
        self.connectors = nn.ModuleList(
            ab_connector(tuple(student_shapes[s]), tuple(teacher_shapes[t]))
            for s, t in zip(self.request.student, self.request.teacher)
        )

    def boundary_loss(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> Tensor:
        """The AB term between the connected student pre-activations and the teacher's."""
        if self.connectors is None:
            raise RuntimeError("AB.setup() must run before the first batch")
        student, teacher = self.requested(student_features, teacher_features)
        connected = [connector(feature) for connector, feature in zip(self.connectors, student)]
        return activation_boundary_loss(connected, teacher, self.margin)

    def init_stage(self, student: nn.Module) -> InitStage | None:
        """RepDistiller's: the connectors and the student's feature modules on the AB term alone."""
        if self.connectors is None:
            raise RuntimeError("AB.setup() must run before the initialization stage")
        modules = (self.connectors, *feature_modules(student))
        return InitStage(self.init_epochs, self.init_lr, modules, self._batch_boundary_loss)

    def _batch_boundary_loss(self, batch: MethodBatch) -> Tensor:
        return self.boundary_loss(batch.student_features, batch.teacher_features)

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        if self.ab_weight == 0.0:  # RepDistiller: the connector stays as the init stage left it (eval, untrained)
            training = self.connectors.training if self.connectors is not None else False
            with torch.no_grad():
                ab = self.eval().boundary_loss(batch.student_features, batch.teacher_features)
            self.train(training)
        else:
            ab = self.boundary_loss(batch.student_features, batch.teacher_features)
        return self.weighted_loss(batch, {"ce": ce, "ab": ab})
