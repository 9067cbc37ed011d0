"""Decoupled KD (Zhao et al., CVPR 2022): ``ce_weight * CE + warm-up * dkd_weight * (alpha TCKD + beta NCKD)``.

The warm-up factor is ``min(epoch / warmup, 1)`` (epoch 1-based), as in mdistiller. With ``standardize``
(Sun et al., CVPR 2024) both logits are z-scored per sample before the temperature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_hydra.losses import cross_entropy, dkd_loss, standardize_logits

from .base import DistillMethod, LossOutput, MethodBatch
from .checks import require_finite, require_positive_int, require_weights


def warmup_factor(epoch: int, warmup: int) -> float:
    """``min(epoch / warmup, 1)`` for a 1-based epoch; 1 without warm-up (``warmup == 0``)."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


def warmup_warnings(part: str, warmup: int, epochs: int) -> list[str]:
    """The line for a warm-up (``loss.warmup``) longer than an ``epochs``-epoch run: its term never weighs fully."""
    if warmup <= epochs:
        return []
    last = warmup_factor(epochs, warmup)
    return [
        f"loss.warmup: {warmup} warm-up epochs in a {epochs}-epoch run: the {part} term is weighted "
        f"{warmup_factor(1, warmup):.2f} to {last:.2f} of loss.{part}_weight and never reaches it"
    ]


class DKD(DistillMethod):
    """Decoupled KD; parts ``ce`` and ``dkd`` (``alpha * TCKD + beta * NCKD``, unweighted, no warm-up)."""

    parts = ("ce", "dkd")

    def __init__(
        self,
        *,
        ce_weight: float,
        dkd_weight: float,
        alpha: float,
        beta: float,
        temperature: float,
        warmup: int,
        standardize: bool,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dkd_weight = dkd_weight
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup = warmup
        self.standardize = standardize
        self.warmup_factor = warmup_factor(1, warmup)

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_weights(loss, "alpha", "beta")
        require_finite(loss, "temperature", minimum=0.0, strict_minimum=True)
        require_positive_int(loss, "warmup", minimum=0)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup_factor = warmup_factor(epoch, self.warmup)

    def fit_warnings(self, epochs: int) -> list[str]:
        return warmup_warnings("dkd", self.warmup, epochs)

    def forward(self, batch: MethodBatch) -> LossOutput:
        student, teacher = batch.student_logits, batch.teacher_logits
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        ce = cross_entropy(batch.student_logits, batch.targets)
        dkd = dkd_loss(student, teacher, batch.targets, self.alpha, self.beta, self.temperature)
        return self.weighted_loss(batch, {"ce": ce, "dkd": dkd}, factors={"dkd": self.warmup_factor})
