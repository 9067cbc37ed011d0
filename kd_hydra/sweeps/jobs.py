"""A sweep's jobs: directory names from their settings, job states, matched baselines and teacher jobs.

The sweeper itself (``hydra_plugins.kd_hydra_sweeper.KDSweeper``) lives where Hydra looks for plugins and
uses these pure helpers. A job's directory is named from its settings (a readable part plus a hash of its
overrides), so a rerun of a sweep finds the jobs it already ran.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kd_hydra.enums import Mode
from kd_hydra.records import schema
from kd_hydra.records.identity import dataset_config_digest, digest, teacher_identity, under, unread_groups
from kd_hydra.records.run_directory import run_status

log = logging.getLogger(__name__)


#: Override keys that do not apply to a baseline student: its loss is CE and it has no teacher.
TEACHER_ONLY_PREFIXES = unread_groups(Mode.student.value)


#: Override keys that never change the teacher a distill job needs. ``trainer.*`` stays on the teacher job: it
#: says where and how the job runs (device, threads), and ``teacher_training`` may interpolate it.
STUDENT_ONLY_PREFIXES = tuple(group for group in unread_groups(Mode.teacher.value) if group != "trainer")


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


def is_teacher_only(override: str) -> bool:
    return under(override_key(override), TEACHER_ONLY_PREFIXES)


def baseline_overrides(job: Sequence[str]) -> tuple[str, ...]:
    """The overrides of the labels-only student matched to distill ``job`` (same data, arch, training, seed)."""
    return tuple(o for o in job if not is_teacher_only(o)) + (f"mode={Mode.student.value}",)


def teacher_job_overrides(members: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The ``mode=teacher`` job of distill jobs sharing a teacher: their common overrides minus student-only ones."""
    common = [o for o in members[0] if all(o in other for other in members[1:])]
    teacher_side = tuple(o for o in common if not under(override_key(o), STUDENT_ONLY_PREFIXES))
    return teacher_side + (f"mode={Mode.teacher.value}",)


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


def job_state(run_dir: Path) -> JobState:
    """Whether the job of ``run_dir`` is new, completed, failed, or was interrupted."""
    if not (run_dir / schema.HYDRA_DIR).is_dir() and not (run_dir / schema.METRICS_FILE).is_file():
        return JobState.new
    status, _ = run_status(run_dir)
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

    :func:`kd_hydra.records.identity.teacher_identity` with the dataset config's digest standing in for the content.
    """
    return digest(teacher_identity(cfg, dataset_config_digest(cfg.dataset)))


def run_dirs_of(sweep_dir: Path) -> list[Path]:
    """Every job directory of ``sweep_dir`` (those with a Hydra config), sorted by name."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob(f"*/{schema.HYDRA_DIR}/{schema.CONFIG_FILE}"))
