"""kd-hydra's grid sweeper: Hydra's basic sweeper, made for KD grids.

It composes and validates every job of the grid before the first one starts, adds one matched
baseline-student job (``mode=student``) for each distinct non-loss setting of a distill grid, and
runs every job even when some fail (``kd_hydra.sweeper.JobStatusCallback`` reports them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from kd_hydra.config import Mode, validate
from kd_hydra.errors import KDHydraError
from kd_hydra.sweeper import baseline_overrides

log = logging.getLogger(__name__)

EXIT_BAD_CONFIG = 2


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
