"""What a sweep that optimises (Optuna) maximises: ``optimized_metric`` mapped to a metrics.json value.

Pure Python (no torch): the command line checks the name before any work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from kd_hydra.errors import ConfigError

log = logging.getLogger(__name__)

#: ``optimized_metric`` name -> metrics.json keys tried in order (the first one that is not None wins).
#: Without a validation split (``final_val_acc`` is None) the ``val_*`` names fall back to the test split.
OPTIMIZED_METRICS: dict[str, tuple[str, ...]] = {
    "val_acc": ("final_val_acc", "final_test_acc"),
    "best_val_acc": ("best_val_acc", "best_test_acc"),
    "test_acc": ("final_test_acc",),
    "best_test_acc": ("best_test_acc",),
}

#: Value of a run without the metric (``objective``); never returned to Optuna (see ``failed_trial_value``).
MISSING_VALUE = math.nan


def failed_trial_value(direction: str) -> float:
    """The worst value for a study that goes in ``direction`` (``maximize``/``minimize``): a failed trial's result.

    Not NaN: hydra-optuna-sweeper 1.3.0 crashes the study on a NaN result (it tells Optuna FAIL *with* the
    value, which Optuna rejects); an infinite value is a COMPLETE trial that can never be the best one.
    """
    return -math.inf if str(direction).lower().endswith("maximize") else math.inf


def check_optimized_metric(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is one of :data:`OPTIMIZED_METRICS`."""
    if name not in OPTIMIZED_METRICS:
        raise ConfigError("optimized_metric", f"unknown metric '{name}'; choose one of: {', '.join(OPTIMIZED_METRICS)}")


def objective(metrics: Mapping[str, Any], name: str, warn: bool = True) -> float:
    """The value of ``optimized_metric`` ``name`` in a run's ``metrics`` (NaN when the run has none).

    ``warn``: log a warning when a ``val_*`` metric falls back to the test split.
    """
    check_optimized_metric(name)
    keys = OPTIMIZED_METRICS[name]
    for position, key in enumerate(keys):
        value = metrics.get(key)
        if value is not None:
            if position > 0 and warn:
                log.warning(
                    "optimized_metric=%s: the run has no %s (no validation split); using %s", name, keys[0], key
                )
            return float(value)
    return MISSING_VALUE
