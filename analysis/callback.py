"""Hydra callback that writes the analysis of a finished multirun into its sweep directory.

Enable with the ``hydra/callbacks: analysis`` config; switch off with
``hydra.callbacks.analysis.enabled=false``. It never raises: a failure is logged as one line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AnalysisCallback(Callback):
    """On multirun end, run :func:`analysis.write_report` on ``hydra.sweep.dir``."""

    def __init__(self, enabled: bool = True, out_subdir: str = "") -> None:
        """``out_subdir``: folder inside the sweep dir for the outputs ("" = the sweep dir itself)."""
        self.enabled = enabled
        self.out_subdir = out_subdir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write results.csv, the figures and report.md; log them, or log the error."""
        if not self.enabled:
            return
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            out_dir = sweep_dir / self.out_subdir if self.out_subdir else sweep_dir
            from .report import write_report  # imported late: pandas/seaborn only when needed

            written = write_report([sweep_dir], out_dir)
        except Exception as error:  # noqa: BLE001 - the sweep's own status must not change
            message = str(error).splitlines()[0] if str(error) else ""
            log.error("analysis of the sweep failed: %s: %s", type(error).__name__, message)
            return
        log.info("analysis written to %s: %s", out_dir, ", ".join(path.name for path in written.values()))
