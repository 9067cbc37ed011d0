"""Decoupled KD (Zhao et al., CVPR 2022): ``ce_weight * CE + warm-up * dkd_weight * (alpha TCKD + beta NCKD)``.

The warm-up factor is ``min(epoch / warmup, 1)`` (epoch 1-based), as in mdistiller. With ``standardize``
(Sun et al., CVPR 2024) both logits are z-scored per sample before the temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kd_hydra.losses import dkd_loss, standardize_logits

from . import register_method
from .base import (
    DistillMethod,
    LossOutput,
    MethodBatch,
    cross_entropy,
    require_finite,
    require_positive_int,
    require_weights,
)


@dataclass
class DKDConfig:
    _target_: str = "kd_hydra.methods.dkd.DKD"
    name: str = "dkd"
    ce_weight: float = 1.0
    dkd_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = 20
    standardize: bool = False


def warmup_factor(epoch: int, warmup: int) -> float:
    """``min(epoch / warmup, 1)`` for a 1-based epoch; 1 without warm-up (``warmup == 0``)."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


@register_method(DKDConfig)
class DKD(DistillMethod):
    """Decoupled KD; parts ``ce`` and ``dkd`` (``alpha * TCKD + beta * NCKD``, unweighted, no warm-up)."""

    name = "dkd"
    parts = ("ce", "dkd")

    def __init__(
        self,
        ce_weight: float = 1.0,
        dkd_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        standardize: bool = False,
        name: str = "dkd",
    ) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dkd_weight = float(dkd_weight)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.warmup = int(warmup)
        self.standardize = bool(standardize)
        self.warmup_factor = warmup_factor(1, self.warmup)

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        require_weights(loss, "ce_weight", "dkd_weight", "alpha", "beta")
        require_finite(loss, "temperature", minimum=0.0, strict_minimum=True)
        require_positive_int(loss, "warmup", minimum=0)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup_factor = warmup_factor(epoch, self.warmup)

    def forward(self, batch: MethodBatch) -> LossOutput:
        student, teacher = batch.student_logits, batch.teacher_logits
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        ce = cross_entropy(batch.student_logits, batch.targets)
        dkd = dkd_loss(student, teacher, batch.targets, self.alpha, self.beta, self.temperature)
        total = self.ce_weight * ce + self.warmup_factor * self.dkd_weight * dkd
        return LossOutput(total=total, parts={"ce": ce, "dkd": dkd})

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, dkd_weight={self.dkd_weight}, alpha={self.alpha}, beta={self.beta}, "
            f"temperature={self.temperature}, warmup={self.warmup}, standardize={self.standardize}"
        )
