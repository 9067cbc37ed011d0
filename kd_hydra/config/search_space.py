"""An Optuna sweep's settings and search space checked before any trial: one-line :class:`ConfigError`s.

hydra-optuna-sweeper turns a bad space into a traceback (``interval(8, 1)``) or runs no trial at all
(``n_trials=0``); these checks name the key instead. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from kd_hydra.errors import ConfigError

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
#: The tag that makes an interval log-uniform (its bounds must then be > 0).
LOG_TAG = "log"


def is_optuna(hydra_cfg: DictConfig) -> bool:
    """Whether the composed ``hydra`` node picks the Optuna sweeper."""
    return OmegaConf.select(hydra_cfg, "sweeper._target_", default="") == OPTUNA_SWEEPER


def check_dimension(override: Override, prefix: str = "") -> None:
    """One search dimension (``key=interval(a,b)``, ``range``, ``choice``) is non-empty and well ordered."""
    key = prefix + override.key_or_group
    value = override.value()
    shown = (override.input_line or "").split("=", 1)[-1]
    if isinstance(value, IntervalSweep):
        if not value.start < value.end:
            raise ConfigError(key, f"'{shown}': an interval needs lower < upper bound (got {value.start}, {value.end})")
        if LOG_TAG in value.tags and value.start <= 0:
            raise ConfigError(key, f"'{shown}': a log interval needs bounds > 0 (got {value.start})")
    elif isinstance(value, RangeSweep):
        if not list(override.sweep_iterator()):
            raise ConfigError(key, f"'{shown}': the range is empty; expected range(start, stop[, step]) with values")
    elif isinstance(value, ChoiceSweep) and not value.list:
        raise ConfigError(key, f"'{shown}': choice() needs at least one value")


def check_no_hydra_sweep(overrides: Sequence[str]) -> None:
    """Hydra cannot sweep its own ``hydra.*`` keys: say so in one line, with the form that works for a dimension."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_sweep_override() and override.is_hydra_override():
            key = override.key_or_group
            value = (override.input_line or "").split("=", 1)[-1]
            dimension = key.removeprefix("hydra.sweeper.params.")
            hint = (
                f"; give the search dimension as '{dimension}={value}'"
                if key.startswith("hydra.sweeper.params.")
                else ""
            )
            raise ConfigError(key, f"'{value}' is a sweep, and Hydra cannot sweep its own hydra.* keys{hint}")


def _count(hydra_cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(hydra_cfg, f"sweeper.{key}", default=None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"hydra.sweeper.{key}", f"must be an integer >= 1 (got {value!r})")


def check_optuna_sweep(hydra_cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``n_trials``/``n_jobs`` >= 1 and every dimension of ``hydra.sweeper.params`` and the command line valid."""
    if not is_optuna(hydra_cfg):
        return
    _count(hydra_cfg, "n_trials")
    _count(hydra_cfg, "n_jobs")
    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) or {}
    lines = [f"{key}={value}" for key, value in params.items()]
    parser = OverridesParser.create()
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as error:
            key = line.split("=", 1)[0]
            raise ConfigError(f"hydra.sweeper.params.{key}", f"cannot parse '{line}': {error}") from None
        if override.is_sweep_override():
            check_dimension(override, "hydra.sweeper.params.")
    for override in parser.parse_overrides(list(overrides)):
        if override.is_sweep_override() and not override.is_hydra_override():
            check_dimension(override)
