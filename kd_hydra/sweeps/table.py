"""A published table as one sweep: ``table=<name>`` (``conf/table/<name>.yaml``) expands into the grid of its cells.

The table node names its pairs (experiment presets), methods (``loss=`` options), seeds and, through
``table.published``, the authors' numbers (``conf/published/``). The sweeper replaces every ``table`` override
of the command line by ``experiment=<pairs> loss=<methods> trainer.seed=<seeds>``: the jobs are exactly those of
the hand-written sweep (same directories, teachers once per pair, matched baselines), and none of them reads
the table. The analysis reads it back from the sweep's ``multirun.yaml`` (``analysis/reproduction.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kd_hydra.errors import ConfigError
from kd_hydra.sweeps.jobs import override_key

#: The config group (and top-level key) of a table.
TABLE_KEY = "table"

#: The override keys a table sets; the command line changes them through ``table.pairs``/``methods``/``seeds``.
TABLE_SETS = {"experiment": "table.pairs", "loss": "table.methods", "trainer.seed": "table.seeds"}


@dataclass(frozen=True)
class TableSpec:
    """The cells of a table: pairs (columns), methods (rows) and the seeds of each cell."""

    name: str
    pairs: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    preset_suffix: str = ""
    columns: Mapping[str, str] | None = None  # method -> its published column, where the names differ

    def preset(self, pair: str) -> str:
        """The experiment preset that runs ``pair``."""
        return pair + self.preset_suffix

    def column(self, method: str) -> str:
        """The published column of ``method``."""
        return dict(self.columns or {}).get(method, method)

    def overrides(self) -> list[str]:
        """The sweep overrides of every cell (Hydra adds the teachers and the matched baselines)."""
        return [
            f"experiment={','.join(self.preset(pair) for pair in self.pairs)}",
            f"loss={','.join(self.methods)}",
            f"trainer.seed={','.join(str(seed) for seed in self.seeds)}",
        ]


def _names(node: DictConfig, key: str) -> tuple[str, ...]:
    values = OmegaConf.select(node, key, default=None)
    if not OmegaConf.is_list(values) or not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"table.{key}", "must be a non-empty list of names")
    if len(set(values)) != len(values):
        raise ConfigError(f"table.{key}", "names a value twice")
    return tuple(values)


def table_spec(node: Any) -> TableSpec:
    """The :class:`TableSpec` of a composed ``table`` node; ConfigError naming the key when one is malformed."""
    if not isinstance(node, DictConfig):
        raise ConfigError("table", "must be a table config (conf/table/<name>.yaml)")
    seeds = OmegaConf.select(node, "seeds", default=None)
    integers = OmegaConf.is_list(seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        raise ConfigError("table.seeds", "must be a non-empty list of integers")
    columns = OmegaConf.select(node, "columns", default=None) or {}
    return TableSpec(
        name=str(OmegaConf.select(node, "name", default="table")),
        pairs=_names(node, "pairs"),
        methods=_names(node, "methods"),
        seeds=tuple(int(s) for s in seeds),
        preset_suffix=str(OmegaConf.select(node, "preset_suffix", default="") or ""),
        columns={str(k): str(v) for k, v in OmegaConf.to_container(columns).items()} if columns else None,
    )


def is_table_override(override: str) -> bool:
    """``table=...``, ``table.seeds=...`` and their ``+``/``~`` forms."""
    key = override_key(override)
    return key == TABLE_KEY or key.startswith(TABLE_KEY + ".")


def expand_table(arguments: Sequence[str], node: Any) -> list[str]:
    """The command line's overrides with the table's replaced by the grid of its cells.

    ConfigError when another override sets what the table sets (``trainer.seed=0``: use ``table.seeds=[0]``).
    """
    spec = table_spec(node)
    kept = [argument for argument in arguments if not is_table_override(argument)]
    for argument in kept:
        key = override_key(argument)
        if key in TABLE_SETS:
            raise ConfigError(key, f"set by table={spec.name}; change {TABLE_SETS[key]} instead")
    return kept + spec.overrides()
