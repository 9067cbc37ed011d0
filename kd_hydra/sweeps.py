"""Sweep helpers: job directory names, job states, matched baselines, teacher jobs, outcomes, the status callback.

The sweeper itself (``hydra_plugins.kd_hydra_sweeper.KDSweeper``) lives where Hydra looks for
plugins and uses these pure helpers. A job's directory is named from its settings (a readable part
plus a hash of its overrides), so a rerun of a sweep finds the jobs it already ran. Every job of a
multirun, in whatever process the launcher runs it, appends its outcome to the sweep's ledger
(:func:`record_outcome`); :class:`JobStatusCallback` reads it at the end, reports the failed jobs and
those that never started in one line each, and makes the process exit non-zero.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kd_hydra import schema
from kd_hydra.config import Mode
from kd_hydra.identity import dataset_config_digest, digest, teacher_identity
from kd_hydra.records import run_status

log = logging.getLogger(__name__)

#: Override keys that do not apply to a baseline student: its loss is CE and it has no teacher.
TEACHER_ONLY_PREFIXES = ("loss", "mode", "teacher", "teacher_training", "soft_label_cache")
#: Override keys that never change the teacher a distill job needs.
STUDENT_ONLY_PREFIXES = ("loss", "mode", "student", "soft_label_cache", "optimizer", "scheduler")
EXIT_FAILED_JOBS = 1
#: The sweep's bookkeeping: the planned job directories and each job's outcome, one JSON line per job.
LEDGER_DIR = ".kd-hydra"
PLAN_FILE = "plan.json"
OUTCOMES_FILE = "outcomes.jsonl"
#: Job directory names: at most this many readable characters, then ``-`` and this many hash digits.
MAX_READABLE_CHARS = 96
HASH_DIGITS = 8
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]+")
#: Files of a job's earlier attempt that a fresh rerun (``hydra.sweeper.rerun``) removes.
RERUN_CLEARED_FILES = (schema.METRICS_FILE, schema.TRAIN_STATE_FILE, schema.HISTORY_FILE)


#: A job's task overrides, as Hydra's sweeper passes them (``key=value`` strings).
Overrides = tuple[str, ...]


@dataclass(eq=False)
class Planned:
    """One job of a sweep: its task overrides, directory name, and the teacher job it waits for."""

    overrides: Overrides
    dir_name: str = ""
    teacher: Overrides | None = None  # the mode=teacher job this distill job needs (None: none in this sweep)
    is_teacher: bool = False


class Rerun(str, enum.Enum):
    """``hydra.sweeper.rerun``: which jobs that already ran in the sweep dir run again."""

    none = "none"  # completed and failed jobs are skipped; interrupted ones continue
    failed = "failed"  # failed jobs run again from scratch
    all = "all"  # every job runs again from scratch


class JobState(str, enum.Enum):
    """What a sweep rerun finds in a job directory."""

    new = "new"  # no directory yet
    completed = "completed"
    failed = "failed"
    interrupted = "interrupted"  # started (it has .hydra) but wrote no metrics.json


def override_key(override: str) -> str:
    """``loss.alpha`` of ``loss.alpha=0.5``; ``teacher`` of ``teacher=resnet20`` or ``+teacher.x=1``."""
    return override.split("=", 1)[0].lstrip("+~")


def _has_prefix(override: str, prefixes: Sequence[str]) -> bool:
    key = override_key(override)
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def is_teacher_only(override: str) -> bool:
    return _has_prefix(override, TEACHER_ONLY_PREFIXES)


def baseline_overrides(job: Sequence[str]) -> tuple[str, ...]:
    """The overrides of the labels-only student matched to distill ``job`` (same data, arch, training, seed)."""
    return tuple(o for o in job if not is_teacher_only(o)) + (f"mode={Mode.student.value}",)


def teacher_job_overrides(members: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The ``mode=teacher`` job of distill jobs sharing a teacher: their common overrides minus student-only ones."""
    common = [o for o in members[0] if all(o in other for other in members[1:])]
    return tuple(o for o in common if not _has_prefix(o, STUDENT_ONLY_PREFIXES)) + (f"mode={Mode.teacher.value}",)


def settings_hash(overrides: Iterable[str]) -> str:
    """Hash of a job's task overrides, independent of their order."""
    canonical = "\n".join(sorted(o.strip() for o in overrides))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_DIGITS]


def varying_keys(jobs: Iterable[Sequence[str]]) -> set[str]:
    """Override keys whose value differs between ``jobs`` (or that only some jobs have)."""
    jobs = list(jobs)
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            values.setdefault(override_key(override), set()).add(override)
    counts = {key: sum(any(override_key(o) == key for o in job) for job in jobs) for key in values}
    return {key for key, seen in values.items() if len(seen) > 1 or counts[key] < len(jobs)}


def job_dir_name(job: Sequence[str], shown_keys: set[str]) -> str:
    """``<readable>-<hash>``: the overrides of ``shown_keys`` (and ``mode``), sanitised and truncated, then the hash."""
    shown = sorted(o.lstrip("+~") for o in job if override_key(o) in shown_keys or override_key(o) == "mode")
    readable = _UNSAFE_CHARS.sub("_", ",".join(shown)).strip("._")[:MAX_READABLE_CHARS].rstrip(",")
    digest = settings_hash(job)
    return f"{readable}-{digest}" if readable else f"job-{digest}"


def existing_jobs(sweep_dir: Path) -> dict[str, str]:
    """Settings hash -> directory name of every job directory already in ``sweep_dir``."""
    found = {}
    for overrides_file in sorted(Path(sweep_dir).glob(f"*/{schema.HYDRA_DIR}/{schema.OVERRIDES_FILE}")):
        try:
            overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        except Exception:  # an unreadable file: that directory is not reused
            continue
        if isinstance(overrides, list):
            found.setdefault(settings_hash(str(o) for o in overrides), overrides_file.parent.parent.name)
    return found


def job_status(run_dir: Path) -> tuple[str, str | None]:
    """``(status, reason)`` of a run directory from its metrics.json (``unfinished`` without one)."""
    return run_status(run_dir)


def job_state(run_dir: Path) -> JobState:
    """Whether the job of ``run_dir`` is new, completed, failed, or was interrupted."""
    if not (run_dir / schema.HYDRA_DIR).is_dir() and not (run_dir / schema.METRICS_FILE).is_file():
        return JobState.new
    status, _ = job_status(run_dir)
    if status == schema.STATUS_COMPLETED:
        return JobState.completed
    if status == schema.STATUS_FAILED:
        return JobState.failed
    return JobState.interrupted


def clear_job(run_dir: Path) -> None:
    """Remove the files of an earlier attempt so that the job starts fresh (its settings files stay)."""
    for name in RERUN_CLEARED_FILES:
        (run_dir / name).unlink(missing_ok=True)


def teacher_key(cfg: DictConfig) -> str:
    """The teacher a job needs, before any data is read (equal keys: one teacher job).

    :func:`kd_hydra.identity.teacher_identity` with the dataset config's digest standing in for the content.
    """
    return digest(teacher_identity(cfg, dataset_config_digest(cfg.dataset)))


def run_dirs_of(sweep_dir: Path) -> list[Path]:
    """Every job directory of ``sweep_dir`` (those with a Hydra config), sorted by name."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob(f"*/{schema.HYDRA_DIR}/{schema.CONFIG_FILE}"))


def _ledger(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / LEDGER_DIR


def write_plan(sweep_dir: Path, dir_names: Sequence[str], to_run: Sequence[str]) -> None:
    """Record the job directories this multirun must finish, and those it runs now in launch order."""
    from kd_hydra.outputs import write_json

    plan = {"jobs": list(dir_names), "to_run": list(to_run), "started": time.time()}
    write_json(_ledger(sweep_dir) / PLAN_FILE, plan)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def announce_job(run_dir: Path) -> None:
    """Log ``job k of N`` of the current multirun with an ETA from the jobs done so far (nothing in a single run)."""
    try:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        plan = json.loads((_ledger(sweep_dir) / PLAN_FILE).read_text())
        to_run, started = list(plan["to_run"]), float(plan["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    name = Path(run_dir).name
    position = to_run.index(name) + 1 if name in to_run else len(read_outcomes(sweep_dir)) + 1
    done = len(read_outcomes(sweep_dir))
    eta = "ETA unknown until a job ends"
    if done:
        eta = f"ETA {_duration((time.time() - started) / done * max(len(to_run) - done, 0))}"
    log.info("job %d of %d (%s): %s", position, len(to_run), eta, name)


def record_outcome(run_dir: Path, status: str, reason: str | None) -> None:
    """Append a job's outcome to its sweep's ledger (nothing outside a multirun); never raises."""
    try:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        ledger = _ledger(Path(HydraConfig.get().sweep.dir))
        ledger.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"dir": Path(run_dir).name, "status": status, "reason": reason})
        with FileLock(str(ledger / (OUTCOMES_FILE + ".lock"))), open(ledger / OUTCOMES_FILE, "a") as handle:
            handle.write(line + "\n")
    except Exception as error:  # bookkeeping must never fail a job
        log.warning("could not record the job's outcome in the sweep ledger: %s", error)


def read_outcomes(sweep_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Job directory name -> (status, reason) of the jobs this multirun ran (the last line of each wins)."""
    outcomes: dict[str, tuple[str, str | None]] = {}
    try:
        lines = (_ledger(sweep_dir) / OUTCOMES_FILE).read_text().splitlines()
    except OSError:
        return outcomes
    for line in lines:
        try:
            entry = json.loads(line)
            outcomes[str(entry["dir"])] = (str(entry["status"]), entry.get("reason"))
        except (ValueError, KeyError, TypeError):
            continue
    return outcomes


def planned_jobs(sweep_dir: Path, config: DictConfig) -> list[str] | int | None:
    """The planned job directories (kd sweeper), the trial count (Optuna), or None when unknown."""
    try:
        jobs = json.loads((_ledger(sweep_dir) / PLAN_FILE).read_text())["jobs"]
        if isinstance(jobs, list):
            return [str(j) for j in jobs]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    return trials if isinstance(trials, int) else None


def _overrides_text(run_dir: Path) -> str:
    try:
        overrides = OmegaConf.load(run_dir / schema.HYDRA_DIR / schema.OVERRIDES_FILE)
        return " ".join(str(o) for o in overrides)
    except Exception:  # a damaged or missing overrides.yaml: name the directory alone
        return "overrides unreadable"


class JobStatusCallback(Callback):
    """At the end of a multirun: one line per failed job and per job that never started; exit status 1 if any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ledger = _ledger(Path(config.hydra.sweep.dir))
        for name in (OUTCOMES_FILE, PLAN_FILE):
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
            status, reason = outcomes.get(name) or job_status(sweep_dir / name)
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
