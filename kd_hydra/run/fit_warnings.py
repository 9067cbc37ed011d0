"""Settings that do not fit the run, one line each (``<key>: <what happens>``), found before any training.

They do not stop a run: a single run prints them before it starts, a sweep's plan prints each distinct line
once for all its jobs, and every run keeps its own in metrics.json (``warnings``), which the report lists.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from kd_hydra.config.optimization import FRACTION_MILESTONES_TARGETS
from kd_hydra.enums import Mode
from kd_hydra.errors import log_to_file_only
from kd_hydra.methods import DistillMethod
from kd_hydra.train.schedules import milestone_epochs

#: A validation split of fewer images cannot separate settings: the standard error of an accuracy near 50% on
#: n images is 50 / sqrt(n) points, more than 1.5 points below 1,000 images.
MIN_VAL_IMAGES = 1000


def schedule_warnings(node: Any, key: str, epochs: int) -> list[str]:
    """A warm-up as long as the run, and lr decays that never happen (milestones sharing an epoch or at its end)."""
    if not isinstance(node, DictConfig):
        return []
    lines = []
    warmup = node.get("warmup_epochs")
    if isinstance(warmup, int) and warmup >= epochs > 0:
        lines.append(f"{key}.warmup_epochs: {warmup} warm-up epochs in a {epochs}-epoch run: the lr never peaks")
    milestones = node.get("milestones")
    if isinstance(milestones, ListConfig) and len(milestones):
        values = list(milestones)
        fractions = node.get("_target_") in FRACTION_MILESTONES_TARGETS
        decays = milestone_epochs(values, epochs) if fractions else sorted(values)
        effective = [epoch for epoch in decays if epoch < epochs]
        if len(effective) < len(values):
            lines.append(
                f"{key}.milestones: {OmegaConf.to_container(milestones)} in a {epochs}-epoch run decay the lr after "
                f"epochs {decays}: {len(values) - len(effective)} of {len(values)} decays never happen (milestones "
                "on one epoch decay once; one at the last epoch comes after training)"
            )
    return lines


def split_warnings(spec: Any, dataset: DictConfig, selects: bool = True) -> list[str]:
    """A subset of the data (a smoke test), and a validation split too small to select settings on (when the
    run's validation accuracy ``selects`` settings: a student's)."""
    lines = []
    subset = dataset.get("subset")
    if subset is not None:
        lines.append(f"dataset.subset: at most {subset} images of each split: a smoke test, not a result")
    if selects and 0 < spec.num_val < MIN_VAL_IMAGES:
        lines.append(
            f"dataset.val_fraction: the validation split holds {spec.num_val} images: an accuracy near 50% on it has "
            f"a standard error of {50 / math.sqrt(spec.num_val):.1f} points, too coarse to separate settings closer "
            f"than that (a split of {MIN_VAL_IMAGES:,} images or more does)"
        )
    return lines


def run_warnings(cfg: DictConfig, spec: Any, method: DistillMethod | None, student: nn.Module | None) -> list[str]:
    """Every line for a run of ``cfg`` on data of ``spec``; ``method`` set up for ``student`` (a distill run's) or
    None."""
    mode = Mode(cfg.mode)
    lines: list[str] = []
    if mode in (Mode.student, Mode.distill):
        epochs = cfg.trainer.epochs
        lines += schedule_warnings(cfg.scheduler, "scheduler", epochs)
        if method is not None:
            lines += method.fit_warnings(epochs)
            stage = method.init_stage(student) if student is not None else None
            if stage is not None and stage.epochs > epochs:
                lines.append(
                    f"loss.init_epochs: an initialization stage of {stage.epochs} epochs before a {epochs}-epoch run"
                )
    if mode is Mode.teacher or (mode is Mode.distill and cfg.teacher.get("checkpoint") is None):
        recipe = cfg.teacher_training
        lines += schedule_warnings(recipe.scheduler, "teacher_training.scheduler", recipe.epochs)
    lines += split_warnings(spec, cfg.dataset, selects=mode in (Mode.student, Mode.distill))
    return list(dict.fromkeys(lines))


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def announce(lines: Iterable[str]) -> None:
    """``warning: <line>`` on stderr before a single run starts, and in its log; in a sweep (whose plan printed
    them once for every job) in the job's log only."""
    for line in lines:
        if not in_sweep():
            print(f"warning: {line}", file=sys.stderr, flush=True)
        log_to_file_only(f"warning: {line}", logging.WARNING)


def sweep_lines(warnings_by_job: Sequence[Sequence[str]]) -> list[str]:
    """Each distinct line of a sweep's jobs once, with the share of the jobs it concerns when not all."""
    counts: dict[str, int] = {}
    for lines in warnings_by_job:
        for line in dict.fromkeys(lines):
            counts[line] = counts.get(line, 0) + 1
    total = len(warnings_by_job)
    return [f"warning: {line}" + ("" if n == total else f" ({n} of {total} jobs)") for line, n in counts.items()]
