"""The end of a multirun: one line per failed job and per job that never started, and exit status 1 if any."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kd_hydra.records import schema
from kd_hydra.records.ledger import (
    ESTIMATE_FILE,
    OUTCOMES_FILE,
    PLAN_FILE,
    ledger_dir,
    planned_jobs,
    read_outcomes,
)
from kd_hydra.records.run_directory import run_status
from kd_hydra.sweeps.jobs import run_dirs_of

log = logging.getLogger(__name__)


EXIT_FAILED_JOBS = 1


def _overrides_text(run_dir: Path) -> str:
    try:
        overrides = OmegaConf.load(run_dir / schema.HYDRA_DIR / schema.OVERRIDES_FILE)
        return " ".join(str(o) for o in overrides)
    except Exception:  # a damaged or missing overrides.yaml: name the directory alone
        return "overrides unreadable"


class JobStatusCallback(Callback):
    """At the end of a multirun: one line per failed job and per job that never started; exit status 1 if any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ledger = ledger_dir(Path(config.hydra.sweep.dir))
        for name in (OUTCOMES_FILE, PLAN_FILE, ESTIMATE_FILE):
            (ledger / name).unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        outcomes = read_outcomes(sweep_dir)
        planned = planned_jobs(sweep_dir, config)
        names = (
            planned if isinstance(planned, list) else sorted({p.name for p in run_dirs_of(sweep_dir)} | set(outcomes))
        )
        problems, never_started = [], 0
        for name in names:
            status, reason = outcomes.get(name) or run_status(sweep_dir / name)
            if status == schema.STATUS_COMPLETED:
                continue
            if name not in outcomes and not (sweep_dir / name).exists():
                never_started += 1
                continue
            problems.append(f"job {name} ({_overrides_text(sweep_dir / name)}): {status}: {reason}")
        if isinstance(planned, int):
            never_started += max(0, planned - len(outcomes))
        total = len(names) if not isinstance(planned, int) else max(planned, len(names))
        if problems or never_started:
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            counts = [f"{len(problems)} of {total} jobs did not complete"] if problems else []
            if never_started:
                counts.append(f"{never_started}{'' if problems else f' of {total} jobs'} never started")
            rerun = problems and not isinstance(planned, int)
            hint = "; hydra.sweeper.rerun=failed reruns the failed ones" if rerun else ""
            print(f"error: {' and '.join(counts)} (sweep: {sweep_dir}{hint})", file=sys.stderr)
            sys.exit(EXIT_FAILED_JOBS)
        log.info("all %d jobs completed (sweep: %s)", total, sweep_dir)
