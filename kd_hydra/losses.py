"""Distillation losses as pure functions (no Hydra, no state).

Convention (Hinton et al., 2015)::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The KL term is averaged over the batch; the ``T^2`` factor keeps the soft-target gradients on
the same scale as the hard-target gradients whatever the temperature.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _full_precision(logits: Tensor) -> Tensor:
    """Upcast half-precision logits (autocast output) to float32; leave float32/float64 alone."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


class LossParts(NamedTuple):
    """The optimised loss and its unweighted parts (``kd`` is None without a teacher)."""

    total: Tensor
    ce: Tensor
    kd: Tensor | None


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over the batch."""
    student_log_probs = F.log_softmax(_full_precision(student_logits) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(_full_precision(teacher_logits) / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score over classes, ``(z - mean) / (eps + std)`` with the unbiased std (Sun et al., CVPR 2024)."""
    logits = _full_precision(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def ce_loss(student_logits: Tensor, targets: Tensor) -> LossParts:
    """Plain cross-entropy on the labels: the teacher and baseline-student objective."""
    ce = F.cross_entropy(_full_precision(student_logits), targets)
    return LossParts(total=ce, ce=ce, kd=None)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    alpha: float,
) -> LossParts:
    """Hinton's distillation loss: ``alpha * T^2 * KL + (1 - alpha) * CE`` (see module doc)."""
    ce = F.cross_entropy(_full_precision(student_logits), targets)
    kd = soft_target_kl(student_logits, teacher_logits, temperature)
    return LossParts(total=alpha * kd + (1.0 - alpha) * ce, ce=ce, kd=kd)


class CELoss(torch.nn.Module):
    """Cross-entropy objective; ``uses_teacher`` is False so no teacher is run or loaded."""

    uses_teacher = False

    def __init__(self, name: str = "ce") -> None:
        super().__init__()
        self.name = name

    def forward(self, student_logits: Tensor, targets: Tensor, teacher_logits: Tensor | None = None) -> LossParts:
        return ce_loss(student_logits, targets)


class KDLoss(torch.nn.Module):
    """Hinton distillation objective with fixed ``temperature`` and ``alpha`` (see :func:`kd_loss`)."""

    uses_teacher = True

    def __init__(self, temperature: float, alpha: float, name: str = "kd") -> None:
        super().__init__()
        self.name = name
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(self, student_logits: Tensor, targets: Tensor, teacher_logits: Tensor | None = None) -> LossParts:
        if teacher_logits is None:
            raise ValueError("KDLoss needs teacher logits")
        return kd_loss(student_logits, teacher_logits, targets, self.temperature, self.alpha)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
