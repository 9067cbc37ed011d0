"""kd-hydra's grid sweeper: Hydra's basic sweeper, made for KD grids that resume and grow.

Before anything runs it composes and validates every job of the grid, adds one matched
baseline-student job (``mode=student``) for each distinct non-loss setting of a distill grid, and
one ``mode=teacher`` job for each distinct teacher the distill jobs need. Each job's directory is
named from its settings (``kd_hydra.sweeps.jobs.job_dir_name``), so a rerun into the same
``hydra.sweep.dir`` skips the jobs that already completed (``rerun``), continues interrupted ones
and trains only new settings. Jobs run in two stages through the configured launcher: teachers
and baselines first, then the distill jobs, which find their teacher in the store. A failed job
never stops the others (``kd_hydra.sweeps.status.JobStatusCallback`` reports them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

from kd_hydra.config.checks import validate
from kd_hydra.enums import Mode
from kd_hydra.errors import KDHydraError
from kd_hydra.records.claims import exclusive
from kd_hydra.records.files import write_error
from kd_hydra.records.ledger import ledger_dir, write_estimate, write_plan
from kd_hydra.records.run_directory import directory_problem, run_status
from kd_hydra.sweeps.jobs import (
    JobState,
    Overrides,
    Planned,
    Rerun,
    baseline_overrides,
    clear_job,
    existing_jobs,
    job_dir_name,
    job_state,
    settings_hash,
    teacher_job_overrides,
    teacher_key,
    varying_keys,
)
from kd_hydra.sweeps.table import TABLE_KEY, expand_table

if TYPE_CHECKING:
    from kd_hydra.sweeps.cost import JobCost

log = logging.getLogger(__name__)

EXIT_BAD_CONFIG = 2


class KDSweeper(BasicSweeper):
    """Grid sweeper: validate all jobs first, add baselines and teacher jobs, skip what already completed."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        add_baselines: bool = True,
        teacher_stage: bool = True,
        rerun: str = Rerun.none.value,
        estimate: bool | None = None,
        dry_run: bool = False,
        budget_hours: float | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.add_baselines = add_baselines
        self.teacher_stage = teacher_stage
        self.estimate = estimate
        self.dry_run = bool(dry_run)
        self.budget_hours = budget_hours
        self.refused: list[str] = []  # directory names of jobs refused before any work
        self.configs: dict[Overrides, DictConfig] = {}  # the composed config of each planned grid job
        self.costs: list[JobCost] = []  # the estimate of the jobs this multirun runs
        self.device = ""
        if budget_hours is not None and (not isinstance(budget_hours, (int, float)) or isinstance(budget_hours, bool)
                                         or not budget_hours > 0):  # fmt: skip
            print(f"error: hydra.sweeper.budget_hours: must be a number > 0 or null (got {budget_hours})",
                  file=sys.stderr)  # fmt: skip
            sys.exit(EXIT_BAD_CONFIG)
        try:
            self.rerun = Rerun(str(rerun))
        except ValueError:
            print(
                f"error: hydra.sweeper.rerun: must be one of {', '.join(r.value for r in Rerun)} (got {rerun})",
                file=sys.stderr,
            )
            sys.exit(EXIT_BAD_CONFIG)

    # -- planning --------------------------------------------------------------------------------

    def _compose(self, job: Sequence[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(job))

    def plan(self, overrides: list[Override], check_data: bool = True) -> tuple[list[Planned], list[Planned]]:
        """The two stages of the sweep: (teachers and baselines, the other jobs); validated, named, deduplicated.
        ``check_data=False`` (a dry run) plans without reading the data."""
        (grid,) = BasicSweeper.split_arguments(overrides, None)
        jobs = [tuple(job) for job in grid]
        configs = [self._compose(job) for job in jobs]
        self._validate_all(jobs, configs)
        shown = varying_keys(jobs)
        if check_data:
            jobs, configs = self._plannable(jobs, configs, shown)
        self.configs = dict(zip(jobs, configs))
        modes = [Mode(cfg.mode) for cfg in configs]
        baselines = self._baselines(jobs, modes) if self.add_baselines else []
        first = [Planned(job, is_teacher=True) for job, mode in zip(jobs, modes) if mode is Mode.teacher]
        first += [Planned(job) for job in baselines]
        second = [Planned(job) for job, mode in zip(jobs, modes) if mode is not Mode.teacher]
        if self.teacher_stage:
            first += self._teacher_jobs(jobs, configs, modes, first, second)
        first = [p for p in first if p.is_teacher] + [p for p in first if not p.is_teacher]  # teachers start first
        first, second = self._deduplicated(first), self._deduplicated(second, exclude=first)
        for planned in first + second:
            planned.dir_name = job_dir_name(planned.overrides, shown)
        return first, second

    def _plannable(
        self, jobs: list[Overrides], configs: list[DictConfig], shown: set[str]
    ) -> tuple[list[Overrides], list[DictConfig]]:
        """The jobs whose networks and method fit together on their data (planned without training).

        The others (a method that cannot pair two architectures, say) get one line each, before any work, and
        are never started: the end-of-sweep report counts them. Data that cannot be loaded stops the whole
        sweep in one line; each distinct warning of the jobs (a setting that does not fit the run) is printed once.
        """
        from kd_hydra.run.app import check_plans
        from kd_hydra.run.fit_warnings import sweep_lines

        try:
            checks = check_plans(configs)
        except KDHydraError as error:
            print(f"error: {error}; no job of the sweep was started", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)
        refused = checks.errors
        for number, error in refused.items():
            print(f"error: job {number} ({' '.join(jobs[number])}): {error}; it is not started", file=sys.stderr)
        planned = [lines for number, lines in enumerate(checks.warnings) if number not in refused]
        for line in sweep_lines(planned):
            print(line, file=sys.stderr)
        self.refused = [job_dir_name(jobs[n], shown) for n in refused]
        keep = [n for n in range(len(jobs)) if n not in refused]
        return [jobs[n] for n in keep], [configs[n] for n in keep]

    def _validate_all(self, jobs: Sequence[Overrides], configs: Sequence[DictConfig]) -> None:
        """Every value of every job, before any work: one line per bad job, and no job starts."""
        errors = []
        for number, (job, cfg) in enumerate(zip(jobs, configs)):
            try:
                validate(cfg)
            except KDHydraError as error:
                errors.append(f"error: job {number} ({' '.join(job)}): {error}")
        if errors:
            print("\n".join(errors), file=sys.stderr)
            print(
                f"error: {len(errors)} of {len(jobs)} jobs have invalid settings; no job was started", file=sys.stderr
            )
            sys.exit(EXIT_BAD_CONFIG)

    def _baselines(self, jobs: Sequence[Overrides], modes: Sequence[Mode]) -> list[Overrides]:
        if Mode.student in modes:  # the grid brings its own baselines
            return []
        unique = list(dict.fromkeys(baseline_overrides(job) for job, mode in zip(jobs, modes) if mode is Mode.distill))
        if unique:
            log.info(
                "adding %d matched baseline-student job(s) to the sweep (hydra.sweeper.add_baselines=false to skip)",
                len(unique),
            )
        return unique

    def _teacher_jobs(
        self,
        jobs: Sequence[Overrides],
        configs: Sequence[DictConfig],
        modes: Sequence[Mode],
        first: list[Planned],
        second: list[Planned],
    ) -> list[Planned]:
        """One mode=teacher job per distinct teacher of the distill jobs (none for external checkpoints)."""
        keys: dict[Overrides, str | None] = {}
        for job, cfg, mode in zip(jobs, configs, modes):
            keys[job] = self._teacher_key_or_none(cfg) if mode is not Mode.student else None
        given = {keys[p.overrides]: p.overrides for p in first if keys.get(p.overrides)}  # the grid's own teachers
        groups: dict[str, list[Overrides]] = {}
        for job, mode in zip(jobs, modes):
            key = keys[job]
            if (
                mode is Mode.distill
                and key is not None
                and OmegaConf.select(configs[jobs.index(job)], "teacher.checkpoint", default=None) is None
            ):
                groups.setdefault(key, []).append(job)
        added, teacher_of = [], dict(given)
        for key, members in groups.items():
            if key not in teacher_of:
                teacher_of[key] = self._teacher_job(key, members)
                added.append(Planned(teacher_of[key], is_teacher=True))
        for planned in second:
            key = keys.get(planned.overrides)
            if key in groups and planned.overrides in groups[key]:
                planned.teacher = teacher_of[key]
        if added:
            log.info(
                "adding %d teacher job(s) (mode=teacher) that run before the distill jobs "
                "(hydra.sweeper.teacher_stage=false to skip)",
                len(added),
            )
        return added

    @staticmethod
    def _teacher_key_or_none(cfg: DictConfig) -> str | None:
        try:
            return teacher_key(cfg)
        except Exception as error:  # a node that cannot resolve here: that job finds its teacher itself
            log.debug("no teacher key for a job: %s", error)
            return None

    def _teacher_job(self, key: str, members: Sequence[Overrides]) -> Overrides:
        """The overrides of the teacher job of ``members``: the common ones if they give the same teacher."""
        candidates = [teacher_job_overrides(members), teacher_job_overrides(members[:1])]
        for candidate in candidates:
            try:
                if teacher_key(self._compose(candidate)) == key:
                    return candidate
            except Exception:  # the reduced overrides do not compose: try the next candidate
                continue
        return tuple(o for o in members[0] if not o.startswith("mode=")) + (f"mode={Mode.teacher.value}",)

    @staticmethod
    def _deduplicated(planned: list[Planned], exclude: Sequence[Planned] = ()) -> list[Planned]:
        seen = {settings_hash(p.overrides) for p in exclude}
        unique = []
        for job in planned:
            digest = settings_hash(job.overrides)
            if digest not in seen:
                seen.add(digest)
                unique.append(job)
        return unique

    # -- running ---------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> Any:
        """Plan, skip what already ran, then launch the teacher/baseline stage and the distill stage."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        table = OmegaConf.select(self.config, TABLE_KEY, default=None)
        try:
            arguments = expand_table(arguments, table) if table is not None else list(arguments)
        except KDHydraError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)
        overrides = parser.parse_overrides(self._parse_config() + arguments)
        first, second = self.plan(overrides, check_data=not self.dry_run)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        estimating = self.estimate if self.estimate is not None else (
            table is not None or self.dry_run or self.budget_hours is not None
        )  # fmt: skip
        if estimating or self.dry_run:
            self._estimate_cost(sweep_dir, first, second)
        try:
            with exclusive(ledger_dir(sweep_dir), "sweep", f"sweep {sweep_dir}"):
                return self._run_stages(sweep_dir, first, second)
        except KDHydraError as error:  # the sweep's own files (ledger, multirun.yaml) or its claim: one line
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)

    def _run_stages(self, sweep_dir: Path, first: list[Planned], second: list[Planned]) -> Any:
        """Skip what already ran, then launch the two stages; call while holding the sweep's claim (a second
        invocation of the same sweep waits for it, then finds the jobs completed)."""
        assert self.config is not None
        try:
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        except OSError as error:
            raise write_error(sweep_dir / "multirun.yaml", error) from None
        existing = existing_jobs(sweep_dir)
        for planned in first + second:  # a setting that ran before keeps its directory, even if named otherwise
            planned.dir_name = existing.get(settings_hash(planned.overrides), planned.dir_name)
        first_run, second_run = self._to_run(sweep_dir, first + second, first)
        planned = [p.dir_name for p in first + second] + self.refused
        teachers = [p.dir_name for p in first_run if p.is_teacher]
        write_plan(sweep_dir, planned, [p.dir_name for p in first_run + second_run], teachers)
        if self.costs:
            from kd_hydra.sweeps.cost import cost_record

            write_estimate(sweep_dir, cost_record(self.costs, self.device))
        returns: list[Any] = []
        next_idx = self._launch(first_run, returns, 0)
        failed_teachers = self._failed_teachers(sweep_dir, first)
        blocked = [p for p in second_run if p.teacher is not None and p.teacher in failed_teachers]
        for teacher, (dir_name, reason) in failed_teachers.items():
            count = sum(p.teacher == teacher for p in blocked)
            if count:
                print(
                    f"error: teacher job {dir_name} did not complete ({reason}); its {count} distill job(s) "
                    f"were not started",
                    file=sys.stderr,
                )
        self._launch([p for p in second_run if p not in blocked], returns, next_idx)
        return returns

    # -- cost ------------------------------------------------------------------------------------

    def _estimate_cost(self, sweep_dir: Path, first: list[Planned], second: list[Planned]) -> None:
        """Print the plan and its estimated device-hours before any job; refuse it in one line when it exceeds
        ``budget_hours``; after a dry run, exit 0 without running anything."""
        from kd_hydra.sweeps.cost import Calibrator, estimate_or_reason, over_budget, plan_lines  # torch: only here

        existing = existing_jobs(sweep_dir)
        derived = self._derived_configs(second)
        to_run = []
        for planned in first + second:
            name = existing.get(settings_hash(planned.overrides), planned.dir_name)
            state = job_state(sweep_dir / name) if (sweep_dir / name).is_dir() else JobState.new
            done = state is JobState.completed and self.rerun is not Rerun.all
            if not done and not (state is JobState.failed and self.rerun is Rerun.none):
                cfg = self.configs.get(planned.overrides) or derived.get(planned.overrides)
                to_run.append((name, cfg if cfg is not None else self._compose(planned.overrides)))
        calibrator = Calibrator()
        costs = estimate_or_reason(to_run, calibrator)
        skipped = len(first) + len(second) - len(to_run)
        if isinstance(costs, str):
            print(f"plan: {len(to_run)} jobs to run; no estimate: {costs}")
            if self.budget_hours is not None:
                print(f"error: hydra.sweeper.budget_hours: cannot estimate the sweep ({costs}); no job was started",
                      file=sys.stderr)  # fmt: skip
                sys.exit(EXIT_BAD_CONFIG)
        else:
            self.costs, self.device = costs, calibrator.device
            print("\n".join(plan_lines(costs, calibrator.device, skipped)), flush=True)
            refusal = over_budget(costs, self.budget_hours)
            if refusal is not None:
                print(f"error: {refusal}", file=sys.stderr)
                sys.exit(EXIT_BAD_CONFIG)
        if self.dry_run:
            print("dry run (hydra.sweeper.dry_run=true): nothing was run", flush=True)
            sys.exit(0)

    def _derived_configs(self, second: list[Planned]) -> dict[Overrides, DictConfig]:
        """The configs of the added baseline and teacher jobs as far as the cost reads them, without composing each:
        a distill job's config in the other mode (a baseline reads its data, student and trainer; a teacher job its
        data, teacher and teacher_training, equal for every distill job it serves)."""
        derived: dict[Overrides, DictConfig] = {}

        def in_mode(cfg: DictConfig, mode: Mode) -> DictConfig:
            copy = cfg.copy()
            with open_dict(copy):
                copy.mode = mode.value
            return copy

        for job, cfg in self.configs.items():
            if Mode(cfg.mode) is Mode.distill:
                derived.setdefault(baseline_overrides(job), in_mode(cfg, Mode.student))
        for planned in second:
            if planned.teacher is not None and planned.overrides in self.configs:
                derived.setdefault(planned.teacher, in_mode(self.configs[planned.overrides], Mode.teacher))
        return derived

    def _to_run(
        self, sweep_dir: Path, planned: list[Planned], first: list[Planned]
    ) -> tuple[list[Planned], list[Planned]]:
        """The jobs of each stage that run now; completed (and, by default, failed) jobs are skipped, and a job
        whose path cannot be a run directory (a file, a symbolic link) is refused in one line, never launched."""
        completed, failed, run = [], [], []
        for job in planned:
            run_dir = sweep_dir / job.dir_name
            problem = directory_problem(run_dir)
            if problem is not None:
                print(f"error: job {job.dir_name}: {problem}; it is not started", file=sys.stderr)
                continue
            state = job_state(run_dir)
            if state is JobState.completed and self.rerun is not Rerun.all:
                completed.append(job)
            elif state is JobState.failed and self.rerun is Rerun.none:
                failed.append(job)
            else:
                if state in (JobState.completed, JobState.failed):
                    clear_job(run_dir)
                run.append(job)
        if completed:
            log.info("skipping %d completed jobs (hydra.sweeper.rerun=all runs them again)", len(completed))
        for job in failed:
            log.warning("skipping failed job %s (hydra.sweeper.rerun=failed runs it again)", job.dir_name)
        return [j for j in run if j in first], [j for j in run if j not in first]

    def _failed_teachers(self, sweep_dir: Path, first: list[Planned]) -> dict[Overrides, tuple[str, str]]:
        """Teacher jobs of the first stage that did not complete: overrides -> (dir name, reason)."""
        failed = {}
        for job in first:
            if job.is_teacher:
                if job_state(sweep_dir / job.dir_name) is not JobState.completed:
                    status, reason = run_status(sweep_dir / job.dir_name)
                    failed[job.overrides] = (job.dir_name, f"{status}: {reason}")
        return failed

    def _launch(self, jobs: list[Planned], returns: list[Any], initial_job_idx: int) -> int:
        """Launch ``jobs`` in batches through the configured launcher; a launcher error stops no other batch."""
        assert self.launcher is not None
        if not jobs:
            return initial_job_idx
        lists = [list(job.overrides) + [f"hydra.sweep.subdir='{job.dir_name}'"] for job in jobs]
        for batch in self.split_overrides_to_chunks(lists, self.max_batch_size):
            try:
                returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            except Exception as error:  # e.g. a submitit job that was killed: its directory tells the rest
                log.error(
                    "the launcher failed on %d job(s): %s",
                    len(batch),
                    str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
                )
            initial_job_idx += len(batch)
        return initial_job_idx
