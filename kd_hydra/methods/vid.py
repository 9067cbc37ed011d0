"""Variational information distillation (Ahn et al., CVPR 2019): ``ce_weight * CE + vid_weight * sum_j VID_j``.

Every ``stageN`` output of the student is paired with the teacher's (RepDistiller's ``feat[1:-1]``). Per pair,
the larger map is pooled to the smaller size, a regressor ``1x1 conv (C_s -> C_t), ReLU, 1x1 conv, ReLU, 1x1
conv`` (no biases) predicts the teacher's map, and each teacher channel has a learned variance
``log(1 + exp(log_scale)) + eps``, initialised to ``init_pred_var``; ``VID_j`` is
:func:`kd_hydra.losses.vid_loss`. Regressors and log-scales are trained with the student, as in RepDistiller
(mdistiller keeps its log-scales in a plain list, so they are never updated there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kd_hydra.losses import cross_entropy, match_spatial, vid_loss

from .base import FeatureShapes, LossOutput, MethodBatch
from .checks import require_finite
from .points import PairedStagesMethod


def vid_regressor(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """RepDistiller's VID regressor with ``num_mid_channel`` = the teacher's channels."""

    def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)

    return nn.Sequential(
        conv1x1(student_channels, teacher_channels),
        nn.ReLU(),
        conv1x1(teacher_channels, teacher_channels),
        nn.ReLU(),
        conv1x1(teacher_channels, teacher_channels),
    )


def initial_log_scale(init_pred_var: float, eps: float) -> float:
    """The log-scale whose ``log(1 + exp(.)) + eps`` is ``init_pred_var``."""
    return math.log(math.exp(init_pred_var - eps) - 1.0)


class VID(PairedStagesMethod):
    """VID over all stage pairs; parts ``ce`` and ``vid`` (summed, unweighted). Trainable: ``regressors``,
    ``log_scales``."""

    parts = ("ce", "vid")

    def __init__(self, *, ce_weight: float, vid_weight: float, init_pred_var: float, eps: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.vid_weight = vid_weight
        self.init_pred_var = init_pred_var
        self.eps = eps
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        eps = require_finite(loss, "eps", minimum=0.0)
        require_finite(loss, "init_pred_var", minimum=eps, strict_minimum=True)

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        start = initial_log_scale(self.init_pred_var, self.eps)
        for student_channels, teacher_channels in zip(*self.requested_channels(student_shapes, teacher_shapes)):
            self.regressors.append(vid_regressor(student_channels, teacher_channels))
            self.log_scales.append(nn.Parameter(torch.full((teacher_channels,), start)))

    def forward(self, batch: MethodBatch) -> LossOutput:
        if len(self.regressors) != len(self.request.student) or not self.request:
            raise RuntimeError("VID.setup() must run before the first batch")
        ce = cross_entropy(batch.student_logits, batch.targets)
        terms = []
        features = zip(*self.requested(batch.student_features, batch.teacher_features))
        for (student, teacher), regressor, log_scale in zip(features, self.regressors, self.log_scales):
            student, teacher = match_spatial(student, teacher)
            terms.append(vid_loss(regressor(student), teacher, log_scale, self.eps))
        vid = sum(terms[1:], terms[0])
        return self.weighted_loss(batch, {"ce": ce, "vid": vid})
