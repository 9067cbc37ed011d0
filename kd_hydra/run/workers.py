"""A job on several devices: its data-parallel workers, started by torch.distributed's own launcher.

Two ways in, one job: ``trainer.devices=N`` makes the job's process (which claimed the run directory and resolved
the config) start N workers through ``torch.distributed.launcher`` (torchrun's engine, with its restarts); and
``torchrun --nproc-per-node=N run.py ...`` starts N copies of run.py, of which rank 0 composes the config and
claims the directory while the others wait for it (:func:`follow`). Either way every worker receives the resolved
config as a :class:`WorkerJob` and never composes it; the leader (rank 0) alone writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kd_hydra.errors import ConfigError, KDHydraError
from kd_hydra.records import schema
from kd_hydra.records.run_directory import read_metrics
from kd_hydra.train.distributed import Workers, join, launched_world, leave

log = logging.getLogger(__name__)

#: What the leader of a torchrun job sends the other workers when there is nothing to run (a failure before the job,
#: a completed record left alone).
NOTHING_TO_RUN = "nothing to run"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

#: What a worker runs: (resolved config, run directory, start time, workers, trackers' run name and group) -> the
#: leader's record (None on the others); :func:`kd_hydra.run.app.run_recipe`, passed in by the layer above.
Recipe = Callable[[DictConfig, Path, float, Workers, tuple[str, str | None]], "dict[str, Any] | None"]


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What every worker of a job receives: the resolved config (YAML), the run directory, the seconds the job
    already ran (its wall time counts from the job's start) and the trackers' run name and group."""

    config: str
    out_dir: str
    elapsed: float
    tracker_names: tuple[str, str | None]
    sent_at: float  # time.time() when the job was sent: a failure recorded since then is this job's

    @classmethod
    def of(cls, cfg: DictConfig, out_dir: Path, started: float, tracker_names: tuple[str, str | None]) -> WorkerJob:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        return cls(resolved, str(out_dir), time.perf_counter() - started, tracker_names, time.time())

    def recorded_failure(self) -> str | None:
        """The reason of a failure the leader recorded for this job (its restarts would fail the same way)."""
        path = Path(self.out_dir) / schema.METRICS_FILE
        record, _ = read_metrics(Path(self.out_dir))
        if record is None or record.get("status") != schema.STATUS_FAILED or path.stat().st_mtime < self.sent_at:
            return None
        return str(record.get("reason"))

    def resolved_config(self) -> DictConfig:
        return OmegaConf.create(self.config)


def launch(job: WorkerJob, recipe: Recipe, devices: int, max_restarts: int) -> dict[str, Any]:
    """Run ``job``'s ``recipe`` (a module-level function: it travels to spawned processes by name) on ``devices``
    workers of this machine (restarted up to ``max_restarts`` times after a worker dies; each restart resumes from
    the run's checkpoint); returns the leader's metrics.json record."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=f"kd-hydra-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.2,
        start_method="spawn",
    )
    log.info("starting %d workers (torch.distributed, up to %d restarts)", devices, max_restarts)
    try:
        elastic_launch(config, work)(job, recipe)
    except ChildFailedError as error:
        raise WorkersFailed(Path(job.out_dir), error) from None
    record, problem = read_metrics(Path(job.out_dir))
    if record is None:
        raise KDHydraError(f"{job.out_dir}: the workers finished without a record ({problem})")
    return record


class WorkersFailed(KDHydraError):
    """A job's workers ended with an error: the leader's recorded reason when it wrote one, else the launcher's."""

    def __init__(self, out_dir: Path, error: BaseException) -> None:
        record = read_metrics(out_dir)[0] or {}
        if record.get("status") == schema.STATUS_FAILED and record.get("reason"):
            message = str(record["reason"])
        else:
            first = next(iter(getattr(error, "failures", {}).values()), None)
            detail = getattr(first, "message", "") or str(error)
            message = f"a worker failed: {' '.join(str(detail).split())[:300]}"
        self.recorded = record.get("status") == schema.STATUS_FAILED
        super().__init__(message)


def work(job: WorkerJob, recipe: Recipe) -> None:
    """A worker started by the launcher: join the process group, run the job, leave. A restart after a failure
    the leader recorded (a diverged loss, a bad value) ends at once with it."""
    failure = job.recorded_failure()
    if failure is not None:
        raise KDHydraError(failure)
    workers = join(_device_type(job))
    _configure_logging(workers, Path(job.out_dir))
    try:
        run_worker(job, recipe, workers)
    finally:
        leave(workers)


def run_worker(job: WorkerJob, recipe: Recipe, workers: Workers) -> dict[str, Any] | None:
    """Run the job's ``recipe`` as one of ``workers`` (the leader's record; None on the others)."""
    started = time.perf_counter() - job.elapsed
    return recipe(job.resolved_config(), Path(job.out_dir), started, workers, job.tracker_names)


_released: list[bool] = []  # whether this process (rank 0 of a torchrun or Slurm job) let the others exit


def lead(job: WorkerJob, recipe: Recipe) -> dict[str, Any] | None:
    """Rank 0 of a torchrun (or Slurm) job: send ``job`` to the other workers and run it with them. The process
    group stays for the next job of a sweep; :func:`release_followers` ends it."""
    workers = join(_torchrun_device_type())
    if _device_type(job) != _torchrun_device_type():
        raise ConfigError(
            "trainer.device",
            f"is {job.resolved_config().trainer.device}, but torchrun's workers joined on {_torchrun_device_type()}; "
            "use the device the workers have (or trainer.devices=N without torchrun)",
        )
    workers.broadcast(job)
    return run_worker(job, recipe, workers)


def release_followers() -> None:
    """Rank 0 of a torchrun or Slurm job, after its last job (or none): let the other workers exit."""
    if launched_world() > 1 and not _released:
        workers = join(_torchrun_device_type())
        workers.broadcast(NOTHING_TO_RUN)
        _released.append(True)
        leave(workers)


def follow(recipe: Recipe) -> int:
    """A torchrun (or Slurm) worker of rank > 0: run rank 0's jobs with the others until it sends no more; a job
    that fails as kd-hydra's error (rank 0 records it) does not end the others. The exit status."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    workers = join(_torchrun_device_type())
    try:
        while (job := workers.broadcast(None)) != NOTHING_TO_RUN:
            try:
                run_worker(job, recipe, workers)
            except KDHydraError as error:
                log.warning("worker %d: the job failed: %s", workers.rank, error)
        return 0
    finally:
        leave(workers)


def join_cluster_tasks() -> bool:
    """In a Slurm job of several tasks (``hydra/launcher=slurm_ddp``), give torch.distributed its environment
    (``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``...) from submitit's job environment: the tasks are
    then the job's workers, as torchrun's processes are. Whether it did."""
    if launched_world() > 1 or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SUBMITIT_EXECUTOR" not in os.environ:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def _torchrun_device_type() -> str:
    """The device torchrun's workers join on before any of them has a config: CUDA when present."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_type(job: WorkerJob) -> str:
    import torch

    device = str(job.resolved_config().trainer.device)
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "cuda" if on_cuda else "cpu"


def _configure_logging(workers: Workers, out_dir: Path) -> None:
    """The leader logs as a 1-device run does (the console and the run's run.log); the others their warnings."""
    root = logging.getLogger()
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    handlers: list[logging.Handler] = [console]
    if workers.leader:
        run_log = logging.FileHandler(out_dir / "run.log", mode="a", encoding="utf-8")
        run_log.setFormatter(formatter)
        handlers.append(run_log)
    else:
        console.setFormatter(logging.Formatter(f"[worker {workers.rank}] " + LOG_FORMAT))
    root.handlers[:] = handlers
    root.setLevel(logging.INFO if workers.leader else logging.WARNING)
