"""Hydra's basic grid sweeper, made for KD grids, and the callback that reports failed jobs.

:class:`KDSweeper` composes and validates every job of the grid before the first one starts, adds
one matched baseline-student job (``mode=student``) for each distinct non-loss setting of a
distill grid, and runs every job even when some fail. :class:`JobStatusCallback` then reports the
failed or unfinished jobs in one line each and makes the process exit non-zero.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kd_hydra import schema
from kd_hydra.config import Mode, validate
from kd_hydra.errors import KDHydraError

log = logging.getLogger(__name__)

#: Override keys that do not apply to a baseline student: its loss is CE and it has no teacher.
TEACHER_ONLY_PREFIXES = ("loss", "mode", "teacher", "teacher_training", "soft_label_cache")
EXIT_BAD_CONFIG = 2
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


class KDSweeper(BasicSweeper):
    """Grid sweeper: validate all jobs first, add matched baselines, never stop at a failed job."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 add_baselines: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.add_baselines = add_baselines

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        configs = [self._compose(job) for job in jobs]
        self._validate_all(jobs, configs)
        if self.add_baselines:
            jobs = self._baselines(jobs, configs) + jobs
        return [list(chunk) for chunk in self.split_overrides_to_chunks(jobs, max_batch_size)]

    def _compose(self, job: Sequence[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(job))

    def _validate_all(self, jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig]) -> None:
        errors = []
        for number, (job, cfg) in enumerate(zip(jobs, configs)):
            try:
                validate(cfg)
            except KDHydraError as error:
                errors.append(f"error: job {number} ({' '.join(job)}): {error}")
        if errors:
            print("\n".join(errors), file=sys.stderr)
            print(f"error: {len(errors)} of {len(jobs)} jobs have invalid settings; no job was started",
                  file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)

    def _baselines(self, jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig]) -> list[list[str]]:
        modes = [Mode(cfg.mode) for cfg in configs]
        if Mode.student in modes:  # the grid brings its own baselines
            return []
        unique = dict.fromkeys(baseline_overrides(job) for job, mode in zip(jobs, modes) if mode is Mode.distill)
        if unique:
            log.info("adding %d matched baseline-student job(s) to the sweep (hydra.sweeper.add_baselines=false "
                     "to skip)", len(unique))
        return [list(job) for job in unique]

    def sweep(self, arguments: list[str]) -> Any:
        """Like :meth:`BasicSweeper.sweep`, but a failed job neither stops nor hides the others."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, initial_job_idx = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            initial_job_idx += len(batch)
        return returns


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
