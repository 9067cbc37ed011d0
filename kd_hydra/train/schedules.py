"""Learning-rate schedules, stepped once per epoch; built as ``schedule(optimizer, epochs=E)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR


def cosine_schedule(optimizer: Optimizer, epochs: int, min_lr: float = 0.0, warmup_epochs: int = 0) -> LRScheduler:
    """Linear warmup over ``warmup_epochs``, then cosine decay from each group's lr to ``min_lr``."""
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(epoch: int, base_lr: float) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        decay_epochs = max(1, epochs - warmup_epochs)
        progress = min(1.0, (epoch - warmup_epochs) / decay_epochs)
        floor = min_lr / base_lr if base_lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, [lambda epoch, lr=lr: factor(epoch, lr) for lr in base_lrs])


def step_schedule(
    optimizer: Optimizer, epochs: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
) -> LRScheduler:
    """Multiply the lr by ``gamma`` at each milestone, a fraction of ``epochs`` in (0, 1)."""
    return MultiStepLR(optimizer, milestones=milestone_epochs(milestones, epochs), gamma=gamma)


def milestone_epochs(fractions: Sequence[float], epochs: int) -> list[int]:
    """The epochs after which a step schedule decays the lr: each fraction of ``epochs``, rounded, at least 1;
    fractions that round to the same epoch decay once."""
    return sorted({max(1, round(fraction * epochs)) for fraction in fractions})


def constant_schedule(optimizer: Optimizer, epochs: int) -> LRScheduler:
    """Keep every group's lr as it is."""
    return LambdaLR(optimizer, lambda epoch: 1.0)
