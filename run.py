"""kd-hydra's one entrypoint: ``python run.py [group=option ...] [key=value ...]``; ``-m`` sweeps.

Bad input ends a single run with a one-line ``error: ...`` and exit status 2; in a sweep, every
job is validated before any starts, and failed jobs are reported at the end (exit status 1).
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kd_hydra.config import register_configs
from kd_hydra.errors import KDHydraError

EXIT_BAD_INPUT = 2

register_configs()
log = logging.getLogger("kd_hydra")


def log_to_file_only(message: str) -> None:
    """Record ``message`` in the run log without repeating it on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from kd_hydra.app import run  # imported here so `--help` and composition errors stay fast

    try:
        run(cfg)
    except KDHydraError as error:
        message = f"error: {str(error).strip().splitlines()[-1]}"  # errors from DataLoader workers carry a traceback
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error(message)
            raise  # the job is recorded as failed and the sweep goes on
        log_to_file_only(message)
        print(message, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
