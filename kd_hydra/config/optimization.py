"""Optimizer and scheduler arguments checked before any work, as one-line :class:`ConfigError`s.

Two layers: the ranges named here (those torch enforces, so the error names the key, and those it does
not: a step schedule's ``gamma > 0`` and milestones inside the run), then a trial build of the optimizer
and its schedule on one dummy parameter, which turns whatever else torch refuses into one line too.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from kd_hydra.errors import ConfigError

#: The schedule whose milestones are fractions of the run's epochs (kd_hydra.train.schedules.step_schedule).
FRACTION_MILESTONES_TARGETS = ("kd_hydra.train.schedules.step_schedule",)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(node: DictConfig, key: str, prefix: str, allowed: str, ok: Any) -> None:
    """``node[key]`` (when present and not null) is a finite number with ``ok(value)``, else a ConfigError."""
    if key not in node or node[key] is None:
        return
    value = node[key]
    if not (_is_number(value) and ok(value)):
        raise ConfigError(f"{prefix}.{key}", f"must be {allowed} (got {value!r})")


def check_optimizer(node: Any, prefix: str) -> None:
    """The ranges torch's optimizers enforce (lr, weight_decay, momentum, betas, eps), named by key."""
    if not isinstance(node, DictConfig):
        return
    _number(node, "lr", prefix, "a finite number > 0", lambda v: v > 0)
    _number(node, "weight_decay", prefix, "a finite number >= 0", lambda v: v >= 0)
    _number(node, "momentum", prefix, "a finite number >= 0", lambda v: v >= 0)
    _number(node, "dampening", prefix, "a finite number >= 0", lambda v: v >= 0)
    _number(node, "eps", prefix, "a finite number > 0", lambda v: v > 0)
    if node.get("nesterov") is True and not ((node.get("momentum") or 0) > 0 and not node.get("dampening")):
        raise ConfigError(f"{prefix}.nesterov", "needs momentum > 0 and dampening 0 (torch.optim.SGD)")
    betas = node.get("betas")
    if betas is not None:
        values = list(betas) if isinstance(betas, ListConfig) else None
        if values is None or len(values) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in values):
            shown = OmegaConf.to_container(betas) if isinstance(betas, ListConfig) else betas
            raise ConfigError(f"{prefix}.betas", f"must be two numbers in [0, 1) (got {shown!r})")


def check_scheduler(node: Any, prefix: str, epochs: int) -> None:
    """What torch does not check: ``gamma > 0``, milestones inside the run, ``min_lr >= 0``, ``warmup_epochs >= 0``."""
    if not isinstance(node, DictConfig):
        return
    _number(node, "gamma", prefix, "a finite number > 0 (the lr is multiplied by it)", lambda v: v > 0)
    _number(node, "min_lr", prefix, "a finite number >= 0", lambda v: v >= 0)
    warmup = node.get("warmup_epochs")
    if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
        raise ConfigError(f"{prefix}.warmup_epochs", f"must be an integer >= 0 (got {warmup!r})")
    milestones = node.get("milestones")
    if milestones is None:
        return
    shown = OmegaConf.to_container(milestones) if isinstance(milestones, ListConfig) else milestones
    values = list(milestones) if isinstance(milestones, ListConfig) else [None]
    if node.get("_target_") in FRACTION_MILESTONES_TARGETS:
        if not all(_is_number(m) and 0 < m <= 1 for m in values):
            raise ConfigError(
                f"{prefix}.milestones", f"must be fractions of the run's epochs in (0, 1] (got {shown!r})"
            )
    elif not all(isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= epochs for m in values):
        raise ConfigError(f"{prefix}.milestones", f"must be epochs in 1..{epochs} (got {shown!r})")


def check_trial_build(optimizer: Any, scheduler: Any, prefix: str, scheduler_prefix: str, epochs: int) -> None:
    """Build the optimizer over one dummy parameter and its schedule for ``epochs``; any refusal is a ConfigError."""
    import torch
    from hydra.utils import instantiate

    if not isinstance(optimizer, DictConfig) or "_target_" not in optimizer:
        return
    parameter = torch.nn.Parameter(torch.zeros(1))
    try:
        built = instantiate(optimizer, _convert_="all")([parameter])
    except Exception as error:  # noqa: BLE001 - whatever torch refuses becomes one line
        raise ConfigError(prefix, f"{optimizer.get('_target_')} refused its arguments: {_innermost(error)}") from None
    if not isinstance(scheduler, DictConfig) or "_target_" not in scheduler:
        return
    try:
        instantiate(scheduler, _convert_="all")(built, epochs=epochs)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(
            scheduler_prefix, f"{scheduler.get('_target_')} refused its arguments: {_innermost(error)}"
        ) from None


def _innermost(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def check_optimization(optimizer: Any, scheduler: Any, prefix: str, epochs: int) -> None:
    """All of the above for one ``(optimizer, scheduler)`` pair; ``prefix`` is '' or 'teacher_training.'."""
    check_optimizer(optimizer, f"{prefix}optimizer")
    check_scheduler(scheduler, f"{prefix}scheduler", epochs)
    check_trial_build(optimizer, scheduler, f"{prefix}optimizer", f"{prefix}scheduler", epochs)
