"""Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

With ``standardize`` (Sun et al., CVPR 2024) both logits are z-scored per sample before the temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kd_hydra.losses import soft_target_kl, standardize_logits

from . import register_method
from .base import DistillMethod, LossOutput, MethodBatch, cross_entropy, require_finite


@dataclass
class KDConfig:
    _target_: str = "kd_hydra.methods.kd.KD"
    name: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    standardize: bool = False


@register_method(KDConfig)
class KD(DistillMethod):
    """Hinton's soft-target distillation; parts ``ce`` and ``kd`` (the T²-scaled KL)."""

    name = "kd"
    parts = ("ce", "kd")

    def __init__(
        self, temperature: float = 4.0, alpha: float = 0.9, standardize: bool = False, name: str = "kd"
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.standardize = bool(standardize)

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        require_finite(loss, "temperature", minimum=0.0, strict_minimum=True)
        require_finite(loss, "alpha", minimum=0.0, maximum=1.0)

    def forward(self, batch: MethodBatch) -> LossOutput:
        student, teacher = batch.student_logits, batch.teacher_logits
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        ce = cross_entropy(batch.student_logits, batch.targets)
        kd = soft_target_kl(student, teacher, self.temperature)
        return LossOutput(total=self.alpha * kd + (1.0 - self.alpha) * ce, parts={"ce": ce, "kd": kd})

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, standardize={self.standardize}"
