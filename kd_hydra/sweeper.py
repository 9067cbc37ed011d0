"""Sweep helpers: matched baseline jobs, and the callback that reports failed jobs of a multirun.

The sweeper itself (``hydra_plugins.kd_hydra_sweeper.KDSweeper``) lives where Hydra looks for
plugins; :class:`JobStatusCallback` reports the failed or unfinished jobs in one line each at the
end of a multirun and makes the process exit non-zero.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kd_hydra import schema
from kd_hydra.config import Mode

log = logging.getLogger(__name__)

#: Override keys that do not apply to a baseline student: its loss is CE and it has no teacher.
TEACHER_ONLY_PREFIXES = ("loss", "mode", "teacher", "teacher_training", "soft_label_cache")
EXIT_FAILED_JOBS = 1


def override_key(override: str) -> str:
    """``loss.alpha`` of ``loss.alpha=0.5``; ``teacher`` of ``teacher=resnet20`` or ``+teacher.x=1``."""
    return override.split("=", 1)[0].lstrip("+~")


def is_teacher_only(override: str) -> bool:
    key = override_key(override)
    return any(key == prefix or key.startswith(prefix + ".") for prefix in TEACHER_ONLY_PREFIXES)


def baseline_overrides(job: Sequence[str]) -> tuple[str, ...]:
    """The overrides of the labels-only student matched to distill ``job`` (same data, arch, training, seed)."""
    return tuple(o for o in job if not is_teacher_only(o)) + (f"mode={Mode.student.value}",)


def job_status(run_dir: Path) -> tuple[str, str | None]:
    """``(status, reason)`` of a run directory from its metrics.json (``unfinished`` without one)."""
    metrics_path = run_dir / schema.METRICS_FILE
    if not metrics_path.is_file():
        return schema.STATUS_UNFINISHED, "no metrics.json (the job did not finish)"
    try:
        metrics = json.loads(metrics_path.read_text())
    except ValueError:
        return schema.STATUS_UNFINISHED, "metrics.json unreadable"
    return metrics.get("status", schema.STATUS_UNFINISHED), metrics.get("reason")


class JobStatusCallback(Callback):
    """At the end of a multirun: one line per failed or unfinished job, and exit status 1 if any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        run_dirs = sorted((p.parent.parent for p in sweep_dir.glob(f"*/{schema.HYDRA_DIR}/{schema.CONFIG_FILE}")),
                          key=lambda p: (len(p.name), p.name))
        problems = []
        for run_dir in run_dirs:
            status, reason = job_status(run_dir)
            if status != schema.STATUS_COMPLETED:
                overrides = OmegaConf.load(run_dir / schema.HYDRA_DIR / schema.OVERRIDES_FILE)
                problems.append(f"job {run_dir.name} ({' '.join(overrides)}): {status}: {reason}")
        if problems:
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            print(f"error: {len(problems)} of {len(run_dirs)} jobs did not complete (sweep: {sweep_dir})",
                  file=sys.stderr)
            sys.exit(EXIT_FAILED_JOBS)
        log.info("all %d jobs completed (sweep: %s)", len(run_dirs), sweep_dir)
