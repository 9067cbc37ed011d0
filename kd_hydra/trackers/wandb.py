"""``logger=wandb``: a Weights & Biases run per job (offline by default)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_hydra.errors import ConfigError
from kd_hydra.records import schema
from kd_hydra.trackers.base import DEFAULT_TIMEOUT_S, Scalar, check_timeout, import_library

LOG = logging.getLogger(__name__)


WANDB_MODES = ("offline", "online", "disabled")


class WandbTracker:
    """A Weights & Biases run (offline by default): group = the group, name = the job's overrides,
    files under ``<run dir>/wandb/``; final metrics go to the run summary. An online run that cannot
    start within ``timeout_s`` is logged offline instead, with one warning."""

    def __init__(
        self,
        mode: str = "offline",
        project: str = "kd-hydra",
        entity: str | None = None,
        tags: Sequence[str] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S * 6,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError("mode", f"must be one of {', '.join(WANDB_MODES)} (got '{mode}')")
        self.timeout_s = check_timeout(timeout_s)
        self._wandb = import_library("wandb")
        self.mode = mode
        self.project = project
        self.entity = entity
        self.tags = list(tags)
        self.run: Any = None

    def start(self, run_name: str, group: str, out_dir: Path) -> None:
        settings = self._wandb.Settings(
            silent=True, console="off", disable_git=True, x_disable_stats=True, init_timeout=self.timeout_s
        )
        Path(out_dir).mkdir(parents=True, exist_ok=True)

        def init(mode: str) -> Any:
            return self._wandb.init(
                mode=mode,
                project=self.project,
                entity=self.entity,
                group=group,
                name=run_name,
                dir=str(out_dir),
                tags=self.tags or None,
                reinit="finish_previous",
                settings=settings,
            )

        try:
            self.run = init(self.mode)
        except Exception as exc:
            if self.mode != "online":
                raise
            LOG.warning(
                "logger.wandb: cannot start online within %g s (%s: %s); logging offline in %s instead "
                "(wandb sync uploads it later)",
                self.timeout_s,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                Path(out_dir) / "wandb",
            )
            self.run = init("offline")

    def log_hparams(self, flat_config: dict[str, Scalar]) -> None:
        self.run.config.update(flat_config, allow_val_change=True)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log(values, step=epoch)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == schema.STATUS_COMPLETED else 1)
