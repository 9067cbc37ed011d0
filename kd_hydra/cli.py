"""kd-hydra's command line: ``kd-hydra [group=option ...] [key=value ...]``; ``-m`` sweeps (also ``python run.py``).

Before Hydra takes over, Hydra's options are checked (a combination that does not fit, such as ``-m`` with
``--cfg``) and the command line is composed and checked (every value of every sweep, the output and cache
directories): a bad one ends with one line ``error: <key>: <what is allowed>`` and exit status 2, before any
work. ``--help`` shows kd-hydra's usage (``hydra.help`` in conf/hydra/default.yaml) above Hydra's options;
``--cfg``, ``--info`` and ``--multirun`` are Hydra's. The task function returns ``optimized_metric`` (what an
Optuna sweep maximises).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kd_hydra.config.compose import check_command_line, parse_overrides
from kd_hydra.config.objective import failed_trial_value, objective
from kd_hydra.config.sources import CLONE_CONFIGS, CONFIG_NAME, config_source
from kd_hydra.config.structured import register_configs
from kd_hydra.errors import KDHydraError, log_to_file_only

EXIT_BAD_INPUT = 2
#: Sweepers that read the task function's return value: a failed job returns the worst value there.
OBJECTIVE_SWEEPERS = ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",)

log = logging.getLogger("kd_hydra")


def one_line(error: BaseException) -> str:
    """``error: ...``: the last line (errors from DataLoader workers carry a traceback)."""
    lines = str(error).strip().splitlines()
    return f"error: {lines[-1] if lines else type(error).__name__}"


def sweeper_reads_objective() -> bool:
    target = OmegaConf.select(HydraConfig.get(), "sweeper._target_", default="")
    return HydraConfig.get().mode == RunMode.MULTIRUN and target in OBJECTIVE_SWEEPERS


def worst_value() -> float:
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default="maximize")
    return failed_trial_value(direction[0] if OmegaConf.is_list(direction) else direction)


def task(cfg: DictConfig) -> float:
    """One job through :func:`kd_hydra.run.app.run`; returns the ``optimized_metric`` value of its metrics."""
    from kd_hydra.run import workers
    from kd_hydra.run.app import run, run_recipe  # imported here so `--help` and composition errors stay fast

    slurm_tasks = workers.join_cluster_tasks()  # hydra/launcher=slurm_ddp: each Slurm task is a worker of this job
    if slurm_tasks and int(os.environ["RANK"]) != 0:
        workers.follow(run_recipe)  # task 0 runs the job with this one, and records it
        return math.nan
    try:
        return _run_and_report(cfg, run)
    finally:
        if slurm_tasks:  # one job per Slurm job: the other tasks may exit
            workers.release_followers()


def _run_and_report(cfg: DictConfig, run: Callable[[DictConfig], dict]) -> float:
    """:func:`task`'s job: its ``optimized_metric``, or a failure reported as the sweeper and the command expect."""
    try:
        metrics = run(cfg)
    except Exception as error:
        if sweeper_reads_objective():  # an Optuna trial: the worst value, and the study goes on
            log.error("%s (the trial reports %s)", one_line(error), worst_value())
            return worst_value()
        if not isinstance(error, KDHydraError):
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error(one_line(error))
            raise  # the job is recorded as failed and the sweep goes on
        log_to_file_only(one_line(error))
        print(one_line(error), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    value = objective(metrics, str(cfg.optimized_metric), warn=sweeper_reads_objective())
    return worst_value() if math.isnan(value) and sweeper_reads_objective() else value


def needs_check(args: object) -> bool:
    """Whether the command composes a config (not --help, --hydra-help, --version, shell completion)."""
    skip = ("help", "hydra_help", "version", "shell_completion", "experimental_rerun", "config_path")
    return not any(getattr(args, name, None) for name in skip)


#: Hydra's commands: one at most (none: --run).
COMMANDS = {
    "run": "--run",
    "multirun": "-m",
    "cfg": "--cfg",
    "info": "--info",
    "shell_completion": "--shell-completion",
}


def option_problem(args: argparse.Namespace) -> str | None:
    """What does not fit in a combination of Hydra's options (Hydra raises a traceback for these), or None."""
    given = [flag for name, flag in COMMANDS.items() if getattr(args, name) not in (None, False)]
    if args.help or args.hydra_help:
        return None
    if "--cfg" in given and "-m" in given:
        return "--cfg shows one job's config and -m runs a sweep: drop -m and give each swept key one value"
    if len(given) > 1:
        return f"{' and '.join(given)} do not combine: use one of --run, -m, --cfg, --info, --shell-completion"
    if args.resolve and not args.cfg:
        return "--resolve works with --cfg (or --help): it resolves the interpolations of the config shown"
    if args.package and not args.cfg:
        return "--package works with --cfg: it picks the node of the config shown (e.g. --cfg job --package loss)"
    completion = [o for o in args.overrides if o.split("=", 1)[0] in ("install", "uninstall", "query")]
    if args.shell_completion and len(completion) != 1:
        return "--shell-completion needs one of install=SHELL, uninstall=SHELL, query=... (e.g. install=bash)"
    if args.experimental_rerun is not None and not os.path.isfile(args.experimental_rerun):
        return f"--experimental-rerun: no such file: {args.experimental_rerun} (a run's .hydra/config.pickle)"
    if args.config_path is not None and not os.path.isdir(args.config_path):
        return f"--config-path: {args.config_path} is not a directory (--config-dir adds one to kd-hydra's configs)"
    return None


def shows_one_job(args: argparse.Namespace) -> str | None:
    """The flag of a command that shows one job's config (--cfg, --info), or None."""
    return "--cfg" if args.cfg else "--info" if args.info else None


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Hydra's options, checked; a bad one ends here with one line ``error: ...`` and exit status 2."""
    parser = get_args_parser()

    def fail(message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    parser.error = fail  # type: ignore[method-assign]  (argparse prints its usage, then the message)
    args = parser.parse_args(argv)
    problem = option_problem(args)
    if problem:
        fail(problem)
    flag = shows_one_job(args)
    if flag:
        sweeps = [o for o in parse_overrides(args.overrides) if o.is_sweep_override()]
        if sweeps:
            key, value = sweeps[0].key_or_group, (sweeps[0].input_line or "").split("=", 1)[-1]
            fail(f"{key}: '{value}' is a sweep and {flag} shows one job: give one value (or a list: {key}=[{value}])")
    return args


def expose_clone_plugins() -> None:
    """In a clone (an editable install too), put its root on ``sys.path`` as ``python run.py`` does.

    Hydra finds sweepers by scanning the ``hydra_plugins`` folders on ``sys.path``; an editable install's
    import hook is invisible to that scan, so ``kd-hydra -m`` from another directory would miss ours.
    """
    root = str(CLONE_CONFIGS.parent)
    if config_source() == str(CLONE_CONFIGS) and root not in sys.path:
        sys.path.append(root)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: check the command line, then hand it to ``hydra.main``. Under torchrun, rank 0 does
    that and runs the job with the other ranks, which wait for it (:mod:`kd_hydra.run.workers`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from kd_hydra.train.distributed import launched_world

    if launched_world() == 1:
        compose_and_run(argv)
        return
    from kd_hydra.run import workers

    if int(os.environ["RANK"]) != 0:
        from kd_hydra.run.app import run_recipe

        sys.exit(workers.follow(run_recipe))
    try:
        compose_and_run(argv)
    finally:
        workers.release_followers()  # after the last job of a sweep, or none (bad input, --help, completed)


def compose_and_run(argv: list[str]) -> None:
    """Check the command line, then hand it to ``hydra.main``."""
    expose_clone_plugins()
    try:
        args = parse_command_line(argv)
        register_configs(args.config_dir)  # the teacher/student options of conf/model and <config dir>/model
        if needs_check(args):
            overrides = check_command_line(
                args.overrides,
                multirun=args.multirun,
                config_dir=args.config_dir,
                config_name=args.config_name or CONFIG_NAME,
            )
            changed = {old: new for old, new in zip(args.overrides, overrides) if old != new}
            argv = [changed.get(arg, arg) for arg in argv]
    except KDHydraError as error:
        print(one_line(error), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base="1.3", config_path=config_source(), config_name=CONFIG_NAME)(task)()


if __name__ == "__main__":
    main()
