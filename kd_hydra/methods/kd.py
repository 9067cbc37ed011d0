"""Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

Instead of ``alpha``, ``ce_weight``/``kd_weight`` weigh the two terms freely (``ce_weight * CE + kd_weight *
T^2 KL``, as in Sun et al.'s recipe: CE 0.1, KD 9). With ``standardize`` (Sun et al., CVPR 2024) both logits
are z-scored per sample before the temperature (the CE reads the raw logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_hydra.errors import ConfigError
from kd_hydra.losses import kd_loss

from .base import DistillMethod, LossOutput, MethodBatch
from .checks import require_finite, require_weights


class KD(DistillMethod):
    """Hinton's soft-target distillation; parts ``ce`` and ``kd`` (the T²-scaled KL)."""

    parts = ("ce", "kd")

    def __init__(
        self,
        *,
        temperature: float,
        alpha: float | None,
        ce_weight: float | None,
        kd_weight: float | None,
        standardize: bool,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.standardize = standardize
        # (ce, kd) weights: 1 - alpha and alpha, or the two weights (validate_config allows one form only)
        self.weights = (1.0 - alpha, alpha) if alpha is not None else (ce_weight, kd_weight)

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        require_finite(loss, "temperature", minimum=0.0, strict_minimum=True)
        weights = [key for key in ("ce_weight", "kd_weight") if loss[key] is not None]
        if loss["alpha"] is not None:
            if weights:
                raise ConfigError(
                    "loss.alpha",
                    f"give alpha or ce_weight/kd_weight, not both (loss.alpha=null to use loss.{weights[0]})",
                )
            require_finite(loss, "alpha", minimum=0.0, maximum=1.0)
            return
        if len(weights) < 2:
            missing = "kd_weight" if weights == ["ce_weight"] else "ce_weight"
            raise ConfigError(f"loss.{missing}", "needs a weight >= 0 when loss.alpha is null (or set loss.alpha)")
        require_weights(loss, "ce_weight", "kd_weight")

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce_weight, kd_weight = self.weights
        loss = kd_loss(
            batch.student_logits, batch.teacher_logits, batch.targets, self.temperature, ce_weight, kd_weight,
            standardize=self.standardize,
        )  # fmt: skip
        return LossOutput(total=loss.total, parts={"ce": loss.ce, "kd": loss.kd})
