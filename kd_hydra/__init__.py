"""kd-hydra: a Hydra-configured knowledge-distillation experiment suite.

Importing the package is cheap (no torch): ``kd_hydra.records.schema`` is shared with ``analysis``, and
:func:`run_experiment` (``kd_hydra.api``) is imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["run_experiment"]


def __getattr__(name: str) -> Any:
    if name == "run_experiment":
        from kd_hydra.api import run_experiment

        return run_experiment
    raise AttributeError(f"module 'kd_hydra' has no attribute {name!r}")
