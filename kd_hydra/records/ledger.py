"""The sweep ledger: ``<sweep>/.kd-hydra/plan.json`` and ``outcomes.jsonl``, written by every job in whatever process.

The sweeper writes the plan; each job announces itself (``job k of N``) and appends its outcome; the status
callback reads them at the end of the multirun.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kd_hydra.records import schema

log = logging.getLogger(__name__)


#: The sweep's bookkeeping: the planned job directories and each job's outcome, one JSON line per job.
LEDGER_DIR = ".kd-hydra"


PLAN_FILE = "plan.json"


OUTCOMES_FILE = "outcomes.jsonl"


#: The cost the sweeper estimated before any job of this multirun (``kd_hydra.sweeps.cost.cost_record``).
ESTIMATE_FILE = "estimate.json"


def ledger_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / LEDGER_DIR


def write_plan(sweep_dir: Path, dir_names: Sequence[str], to_run: Sequence[str], teachers: Sequence[str] = ()) -> None:
    """Record the job directories this multirun must finish, those it runs now in launch order, and which of
    them are teacher jobs (left out of the ETA: a teacher takes far longer than a student)."""
    from kd_hydra.records.files import write_json

    plan = {"jobs": list(dir_names), "to_run": list(to_run), "teachers": list(teachers), "started": time.time()}
    write_json(ledger_dir(sweep_dir) / PLAN_FILE, plan)


def write_estimate(sweep_dir: Path, record: dict[str, Any]) -> None:
    """Record the estimated cost of the jobs this multirun runs (device, total and per-job seconds)."""
    from kd_hydra.records.files import write_json

    write_json(ledger_dir(sweep_dir) / ESTIMATE_FILE, record)


def read_estimate(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's recorded estimate, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((ledger_dir(sweep_dir) / ESTIMATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("jobs"), dict) else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def student_eta(to_run: Sequence[str], teachers: Sequence[str], outcomes: dict[str, dict[str, Any]]) -> str:
    """``ETA ...`` of the student jobs of ``to_run`` not done yet: the mean seconds of the completed student jobs
    times their number (teacher jobs, which run first and take far longer, are left out)."""
    students = [name for name in to_run if name not in set(teachers)]
    done = [e for name, e in outcomes.items() if name in students and e["status"] == schema.STATUS_COMPLETED]
    seconds = [float(e["seconds"]) for e in done if isinstance(e.get("seconds"), (int, float))]
    if not seconds:
        return "ETA unknown until a student job ends"
    left = sum(name not in outcomes for name in students)
    return f"ETA {_duration(sum(seconds) / len(seconds) * left)}"


def announce_job(run_dir: Path) -> None:
    """Log ``job k of N`` of the current multirun with an ETA from the student jobs done so far (nothing in a
    single run)."""
    try:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        plan = json.loads((ledger_dir(sweep_dir) / PLAN_FILE).read_text())
        to_run, teachers = list(plan["to_run"]), list(plan.get("teachers") or [])
    except (OSError, ValueError, KeyError, TypeError):
        return
    name = Path(run_dir).name
    outcomes = outcome_entries(sweep_dir)
    position = to_run.index(name) + 1 if name in to_run else len(outcomes) + 1
    log.info("job %d of %d (%s): %s", position, len(to_run), student_eta(to_run, teachers, outcomes), name)


def record_outcome(run_dir: Path, status: str, reason: str | None, seconds: float | None = None) -> None:
    """Append a job's outcome (and its wall seconds) to its sweep's ledger (nothing outside a multirun); never
    raises."""
    try:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        ledger = ledger_dir(Path(HydraConfig.get().sweep.dir))
        ledger.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"dir": Path(run_dir).name, "status": status, "reason": reason, "seconds": seconds})
        with FileLock(str(ledger / (OUTCOMES_FILE + ".lock"))), open(ledger / OUTCOMES_FILE, "a") as handle:
            handle.write(line + "\n")
    except Exception as error:  # bookkeeping must never fail a job
        log.warning("could not record the job's outcome in the sweep ledger: %s", error)


def outcome_entries(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Job directory name -> its ledger entry (``status``, ``reason``, ``seconds``); the last line of each wins."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        lines = (ledger_dir(sweep_dir) / OUTCOMES_FILE).read_text().splitlines()
    except OSError:
        return entries
    for line in lines:
        try:
            entry = json.loads(line)
            entries[str(entry["dir"])] = {**entry, "status": str(entry["status"])}
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def read_outcomes(sweep_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Job directory name -> (status, reason) of the jobs this multirun ran (the last line of each wins)."""
    return {name: (entry["status"], entry.get("reason")) for name, entry in outcome_entries(sweep_dir).items()}


def planned_jobs(sweep_dir: Path, config: DictConfig) -> list[str] | int | None:
    """The planned job directories (kd sweeper), the trial count (Optuna), or None when unknown."""
    try:
        jobs = json.loads((ledger_dir(sweep_dir) / PLAN_FILE).read_text())["jobs"]
        if isinstance(jobs, list):
            return [str(j) for j in jobs]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    return trials if isinstance(trials, int) else None
