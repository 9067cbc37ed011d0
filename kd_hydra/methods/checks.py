"""Range checks for :meth:`~kd_hydra.methods.base.DistillMethod.validate_config`: each raises a one-line ConfigError
naming ``loss.<key>`` and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kd_hydra.errors import ConfigError


def require_finite(
    loss: Mapping[str, Any],
    key: str,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """``loss[key]`` as a finite float within the bounds, else ConfigError naming ``loss.<key>``."""
    value = loss[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"loss.{key}", f"must be a number (got {value!r})")
    value = float(value)
    low = "" if minimum is None else f"{'>' if strict_minimum else '>='} {minimum:g}"
    high = "" if maximum is None else f"<= {maximum:g}"
    allowed = " and ".join(p for p in (low, high) if p) or "finite"
    if not math.isfinite(value):
        raise ConfigError(f"loss.{key}", f"must be a finite number {allowed} (got {value})")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        raise ConfigError(f"loss.{key}", f"must be {allowed} (got {value:g})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"loss.{key}", f"must be {allowed} (got {value:g})")
    return value


def require_weights(loss: Mapping[str, Any], *keys: str) -> None:
    """Each ``loss.<key>`` is a finite weight >= 0."""
    for key in keys:
        require_finite(loss, key, minimum=0.0)


def require_positive_int(loss: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = loss[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"loss.{key}", f"must be an integer >= {minimum} (got {value!r})")
    return value


def require_init_stage(loss: Mapping[str, Any]) -> None:
    """``loss.init_epochs`` an integer >= 0 and ``loss.init_lr`` null or a finite number > 0."""
    require_positive_int(loss, "init_epochs", minimum=0)
    if loss.get("init_lr") is not None:
        require_finite(loss, "init_lr", minimum=0.0, strict_minimum=True)
