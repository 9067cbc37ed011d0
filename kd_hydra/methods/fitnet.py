"""FitNets (Romero et al., ICLR 2015): ``ce_weight * CE + hint_weight * MSE(regressor(f_s), f_t)`` at one point.

The regressor is mdistiller's ``ConvReg``, sized from the probed shapes: a conv (+ BatchNorm + ReLU) that maps
the student's channels to the teacher's and its spatial size to the teacher's (stride-2 conv for a map twice
as large, stride-2 transposed conv for half as large, a ``(1 + dH) x (1 + dW)`` conv otherwise; a smaller map
of any other size is upsampled bilinearly first). At ``pre_logit`` it is Linear + BatchNorm + ReLU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, hint_loss

from .base import DistillMethod, FeatureRequest, FeatureShapes, LossOutput, MethodBatch

_IMAGE_DIMS = 3  # (C, H, W) without the batch dimension
_VECTOR_DIMS = 1  # (C,)


def _spatial_map(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """The conv that takes a ``(C_s, H_s, W_s)`` map to ``(C_t, H_t, W_t)`` (mdistiller's ConvReg cases)."""
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student, teacher
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        return nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    if (2 * s_h, 2 * s_w) == (t_h, t_w):
        return nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    if s_h >= t_h and s_w >= t_w:
        return nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    return nn.Sequential(
        nn.Upsample(size=(t_h, t_w), mode="bilinear", align_corners=False),
        nn.Conv2d(s_c, t_c, kernel_size=3, padding=1),
    )


def hint_regressor(student: tuple[int, ...], teacher: tuple[int, ...], key: str = "loss.hint_point") -> nn.Module:
    """FitNets' regressor from a student feature shape to a teacher one (batch dimension excluded)."""
    if len(student) == len(teacher) == _IMAGE_DIMS:
        return nn.Sequential(_spatial_map(student, teacher), nn.BatchNorm2d(teacher[0]), nn.ReLU())
    if len(student) == len(teacher) == _VECTOR_DIMS:
        return nn.Sequential(nn.Linear(student[0], teacher[0]), nn.BatchNorm1d(teacher[0]), nn.ReLU())
    raise ConfigError(key, f"needs (C, H, W) maps or (C,) vectors on both sides (student {student}, teacher {teacher})")


class FitNet(DistillMethod):
    """FitNets hints; parts ``ce`` and ``hint`` (the MSE, unweighted). Trainable part: ``regressor``."""

    parts = ("ce", "hint")

    def __init__(self, *, ce_weight: float, hint_weight: float, hint_point: str) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.hint_weight = hint_weight
        self.hint_point = hint_point
        self.regressor: nn.Module | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        if not isinstance(loss["hint_point"], str) or not loss["hint_point"]:
            raise ConfigError(
                "loss.hint_point", f"must be a feature point name such as stage2 (got {loss['hint_point']!r})"
            )

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        common = [p for p in student_points if p in teacher_points]
        if self.hint_point not in common:
            raise ConfigError(
                "loss.hint_point",
                f"must be a feature point of both networks: {', '.join(common)} (got {self.hint_point})",
            )
        return self.keep_request((self.hint_point,), (self.hint_point,))

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Any, num_classes: int
    ) -> None:
        self.regressor = hint_regressor(tuple(student_shapes[self.hint_point]), tuple(teacher_shapes[self.hint_point]))

    def forward(self, batch: MethodBatch) -> LossOutput:
        if self.regressor is None:
            raise RuntimeError("FitNet.setup() must run before the first batch")
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        hint = hint_loss(self.regressor(student), teacher)
        return self.weighted_loss(batch, {"ce": ce, "hint": hint})
