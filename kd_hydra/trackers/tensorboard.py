"""``logger=tensorboard``: event files under the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd_hydra.trackers.base import Scalar, import_library, safe_dir_name

#: TensorBoard tag prefix of the final (metrics.json) numbers.
FINAL_TAG_PREFIX = "final/"


class TensorBoardTracker:
    """Event files in ``<run dir>/<subdir>/<run name>/``: one scalar per history column per epoch,
    ``final/<key>`` scalars, the config as text and as HParams (written at close, with the final metrics)."""

    def __init__(self, subdir: str = "tensorboard", flush_secs: int = 30) -> None:
        self._writer_cls = import_library("torch.utils.tensorboard").SummaryWriter
        self.subdir = subdir
        self.flush_secs = flush_secs
        self.log_dir: Path | None = None
        self._writer: Any = None
        self._hparams: dict[str, Scalar] = {}
        self._final: dict[str, float] = {}
        self._last_epoch = 0

    def start(self, run_name: str, group: str, out_dir: Path) -> None:
        self.log_dir = Path(out_dir) / self.subdir / safe_dir_name(run_name)
        self._writer = self._writer_cls(log_dir=str(self.log_dir), flush_secs=self.flush_secs)

    def log_hparams(self, flat_config: dict[str, Scalar]) -> None:
        self._hparams = {key: ("None" if value is None else value) for key, value in flat_config.items()}
        lines = "\n".join(f"    {key}: {value}" for key, value in flat_config.items())
        self._writer.add_text("config", lines)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=epoch)
        self._last_epoch = epoch

    def log_summary(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(FINAL_TAG_PREFIX + key, value, global_step=self._last_epoch)
        self._final = {FINAL_TAG_PREFIX + key: value for key, value in values.items()}

    def close(self, status: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._writer.add_text("status", status)
        for summary in hparams(self._hparams, self._final):
            self._writer.file_writer.add_summary(summary)
        self._writer.close()
