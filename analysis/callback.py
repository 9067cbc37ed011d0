"""Hydra callback that writes the analysis of a finished multirun into its sweep directory.

Enable with the ``hydra/callbacks: analysis`` config; switch off with
``hydra.callbacks.analysis.enabled=false``. When the analysis fails, the multirun exits with status 2
(or the non-zero status of a later callback) and its last stderr line says that the analysis failed.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

EXIT_ANALYSIS_FAILED = 2
_THIS_TARGET = f"{__name__}.AnalysisCallback"


class AnalysisCallback(Callback):
    """On multirun end, run :func:`analysis.write_report` on ``hydra.sweep.dir``."""

    def __init__(self, enabled: bool = True, out_subdir: str = "") -> None:
        """``out_subdir``: folder inside the sweep dir for the outputs ("" = the sweep dir itself)."""
        self.enabled = enabled
        self.out_subdir = out_subdir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write results.csv, the figures and report.md and log them. On failure: finish the callbacks
        Hydra would call after this one (the job status report), then exit non-zero with a last line
        naming the failure (Hydra would turn a raised exception into a warning and exit 0)."""
        if not self.enabled:
            return
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        try:
            if sweep_dir is None:
                raise ValueError("the config has no hydra.sweep.dir")
            sweep_dir = Path(str(sweep_dir))
            out_dir = sweep_dir / self.out_subdir if self.out_subdir else sweep_dir
            from .report import write_report  # imported late: pandas/seaborn only when needed

            written = write_report([sweep_dir], out_dir)
        except Exception as error:  # noqa: BLE001 - reported, then the exit status says so
            message = str(error).strip().splitlines()
            line = f"analysis of the sweep failed: {type(error).__name__}: {message[-1] if message else ''}"
            log.error(line)
            status = run_later_callbacks(config, kwargs)
            rerun = f" (rerun it with: python -m analysis {sweep_dir})" if sweep_dir is not None else ""
            print(f"error: {line}{rerun}", file=sys.stderr)
            sys.exit(status or EXIT_ANALYSIS_FAILED)
        log.info("analysis written to %s: %s", out_dir, ", ".join(path.name for path in written.values()))


def run_later_callbacks(config: DictConfig, kwargs: dict[str, Any]) -> int:
    """Call ``on_multirun_end`` of the configured callbacks Hydra calls after this one (those listed
    before it: end hooks run in reverse); returns the first non-zero exit status one of them asked for."""
    from hydra.utils import instantiate

    nodes = OmegaConf.select(config, "hydra.callbacks", default=None)
    if not nodes:
        return 0
    names = list(nodes.keys())
    own = [name for name in names if OmegaConf.select(nodes[name], "_target_", default="") == _THIS_TARGET]
    later = names[: names.index(own[0])] if own else []
    status = 0
    for name in reversed(later):
        try:
            instantiate(nodes[name]).on_multirun_end(config=config, **kwargs)
        except SystemExit as exit_request:
            code = exit_request.code
            status = status or (code if isinstance(code, int) else 1)
        except Exception as error:  # noqa: BLE001 - what Hydra does with a failing callback
            warnings.warn(f"Callback {name}.on_multirun_end raised {type(error).__name__}: {error}", stacklevel=2)
    return status
