"""Compose kd-hydra's config from overrides and check it before any work, with one-line errors.

Hydra's composition errors (an unknown group option, an unknown key, a malformed override, a
wrong type) become :class:`~kd_hydra.errors.ConfigError`; so does an output or cache directory that
cannot be written. Used by the command line (before Hydra takes over) and by :mod:`kd_hydra.api`.
Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from kd_hydra.config.files import check_config_files
from kd_hydra.config.objective import check_optimized_metric
from kd_hydra.config.search_space import check_no_hydra_sweep, check_optuna_sweep
from kd_hydra.config.sources import CONFIG_NAME, JOB_NAME, config_directories, config_source
from kd_hydra.config.structured import register_configs
from kd_hydra.enums import Mode
from kd_hydra.errors import ConfigError

_AMBIGUOUS = re.compile(r"Ambiguous value for argument '([^=']+)=([^']*)'")
_ALREADY_THERE = re.compile(r"An item is already at '([^']+)'")


@contextlib.contextmanager
def hydra_session(config_dir: str | os.PathLike | None = None) -> Iterator[Hydra]:
    """A Hydra instance over kd-hydra's configs (plus ``config_dir`` first, like ``--config-dir``).

    Hydra's global state is restored on exit, so this is safe in a notebook or inside another Hydra app.
    """
    register_configs(config_dir)
    search_path = create_config_search_path(config_source())
    if config_dir is not None:
        extra = Path(config_dir).absolute()
        if not extra.is_dir():
            raise ConfigError("--config-dir", f"{extra} is not a directory")
    check_config_files(config_directories(config_dir))
    if config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    global_hydra = GlobalHydra.instance()
    previous = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        yield Hydra.create_main_hydra2(task_name=JOB_NAME, config_search_path=search_path)
    finally:
        global_hydra.clear()
        if previous is not None:
            global_hydra.initialize(previous)


def first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def composition_error(error: Exception) -> ConfigError:
    """Hydra's (multi-line) composition error as a one-line :class:`ConfigError` naming the key."""
    if isinstance(error, ConfigError):
        return error
    if isinstance(error, MissingConfigException):
        missing = error.missing_cfg_file or CONFIG_NAME
        group, _, option = missing.rpartition("/")
        if group and error.options is not None:
            return ConfigError(group, f"unknown option '{option}'; choose one of: {', '.join(error.options)}")
        return ConfigError(missing, first_line(error))
    if isinstance(error, OverrideParseException):
        key = error.override.split("=", 1)[0].lstrip("+~") or error.override
        return ConfigError(key, f"cannot parse '{error.override}': {first_line(error.message)}")
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        hint = [line for line in str(error).splitlines() if line.startswith("To append")]
        suffix = f" ({hint[0][0].lower()}{hint[0][1:]})" if hint else ""
        return ConfigError(cause.full_key or "overrides", f"unknown key{suffix}")
    if isinstance(cause, ValidationError):
        return ConfigError(cause.full_key or "overrides", first_line(cause))
    ambiguous = _AMBIGUOUS.search(str(error))
    if ambiguous:
        key, value = ambiguous.groups()
        return ConfigError(key, f"'{value}' is a sweep: add -m (--multirun), or write a list as {key}=[{value}]")
    already = _ALREADY_THERE.search(str(error))
    if already:
        return ConfigError(already.group(1), "exists already: override it without '+' (or with '++')")
    if isinstance(cause, OmegaConfBaseException):
        return ConfigError(getattr(cause, "full_key", None) or "overrides", first_line(cause))
    return ConfigError("overrides", first_line(error) or type(error).__name__)


def compose(hydra: Hydra, overrides: Sequence[str], config_name: str = CONFIG_NAME) -> DictConfig:
    """The full config of one job (the ``hydra`` node included); Hydra's errors as :class:`ConfigError`."""
    try:
        return hydra.compose_config(
            config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN, with_log_configuration=False
        )
    except (HydraException, OmegaConfBaseException, OSError, yaml.YAMLError) as error:
        raise composition_error(error) from error


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise composition_error(error) from error


def representative_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """Jobs that together use every value of every enumerable sweep (``a,b``, ``range``) once.

    The first job takes the first value of each sweep; each further job changes one sweep to another
    value. Sweeps that cannot be enumerated (``interval``, ``glob``) and sweeps of ``hydra.*`` keys are left
    to the sweeper.
    """
    fixed: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for override in parse_overrides(overrides):
        if not override.is_sweep_override():
            fixed.append(override.input_line or "")
        elif (
            override.is_discrete_sweep()
            and override.value_type is not ValueType.GLOB_CHOICE_SWEEP
            and not override.is_hydra_override()
        ):
            values = [f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
            if values:
                sweeps.append((override.key_or_group, values))
    base = fixed + [values[0] for _, values in sweeps]
    jobs = [base]
    for position, (_, values) in enumerate(sweeps):
        for value in values[1:]:
            job = list(base)
            job[len(fixed) + position] = value
            jobs.append(job)
    return jobs


def unwritable_reason(directory: Path) -> str | None:
    """Why ``directory`` cannot be created or written, or None if it can."""
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


def check_directories(cfg: DictConfig, overrides: Sequence[str], multirun: bool) -> None:
    """Raise :class:`ConfigError` if the run (or sweep) directory or the cache directory cannot be written."""
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    named = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    checks = [(dir_key if dir_key in named else "paths.output_dir", dir_key)]
    if Mode(cfg.mode) is not Mode.student:  # teachers and distilled students use the store and the cache
        checks.append(("paths.cache_dir", "paths.cache_dir"))
    for key, path_key in checks:
        try:
            path = OmegaConf.select(cfg, path_key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as error:
            raise ConfigError(key, first_line(error)) from error
        if path is None:
            continue
        reason = unwritable_reason(Path(str(path)))
        if reason is not None:
            raise ConfigError(key, f"{path} is not writable ({reason}); choose a directory you can write")


def sweep_base_overrides(hydra: Hydra, overrides: Sequence[str], config_name: str = CONFIG_NAME) -> list[str]:
    """``overrides`` as Hydra can compose a sweep's base config from them (ConfigError otherwise).

    Hydra first composes a multirun with the default option of each swept group, so ``loss=ab,ft,fsp
    loss.init_epochs=1`` fails on ``loss=kd``, which has no ``init_epochs``. Call this once every job of the
    sweep composed: a key that only the swept options have is then passed as ``++key=value``, which sets it
    in every job as the plain override would.
    """
    overrides = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            hydra.compose_config(
                config_name=config_name, overrides=overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
            )
            return overrides
        except (HydraException, OmegaConfBaseException, OSError, yaml.YAMLError) as error:
            problem = composition_error(error)
            unknown = [i for i, o in enumerate(overrides) if o.split("=", 1)[0] == problem.key and o[0] not in "+~"]
            if not unknown or not str(problem).startswith(f"{problem.key}: unknown key"):
                raise problem from error
            overrides[unknown[0]] = "++" + overrides[unknown[0]]
    return overrides


def check_command_line(
    overrides: Sequence[str], multirun: bool, config_dir: str | None = None, config_name: str = CONFIG_NAME
) -> list[str]:
    """Compose every distinct value of the command line's sweeps and check the directories; raise ConfigError.

    Returns the overrides to hand to Hydra (see :func:`sweep_base_overrides`).
    """
    jobs = representative_jobs(overrides)  # parses the overrides: a malformed one is a ConfigError here
    check_no_hydra_sweep(overrides)
    with hydra_session(config_dir) as hydra:
        configs = [compose(hydra, job, config_name) for job in jobs]
        sweeps = len(jobs) > 1 and (multirun or OmegaConf.select(configs[0], "hydra.mode") == RunMode.MULTIRUN)
        overrides = sweep_base_overrides(hydra, overrides, config_name) if sweeps else list(overrides)
    base = configs[0]
    multirun = multirun or OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN
    if not multirun:
        for override in parse_overrides(overrides):
            if override.is_sweep_override():
                value = (override.input_line or "").split("=", 1)[-1]
                raise ConfigError(
                    override.key_or_group,
                    f"'{value}' is a sweep: add -m (--multirun), or write a list as {override.key_or_group}=[{value}]",
                )
    if not multirun and base.get("table") is not None:
        raise ConfigError("table", "a published table is a sweep of many jobs: add -m (python run.py -m table=<name>)")
    check_optimized_metric(str(base.optimized_metric))
    check_optuna_sweep(base.hydra, overrides)
    check_directories(base, overrides, multirun)
    return overrides
