"""Where kd-hydra's configs are: the clone's ``conf/`` directory, else the copy installed as ``kd_hydra/conf``."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_NAME = "config"
#: Hydra job name: the run log is ``<run dir>/run.log`` whichever entrypoint started the job.
JOB_NAME = "run"
#: The configs inside an installed package (``conf/`` of the repository, shipped as ``kd_hydra/conf``).
PACKAGED_CONFIGS = "pkg://kd_hydra.conf"
#: The configs of a clone (or an editable install): the repository's top-level ``conf/``.
CLONE_CONFIGS = Path(__file__).resolve().parents[2] / "conf"


def config_source() -> str:
    """Where the configs are: the clone's ``conf/`` directory when there is one, else the installed package."""
    return str(CLONE_CONFIGS) if (CLONE_CONFIGS / f"{CONFIG_NAME}.yaml").is_file() else PACKAGED_CONFIGS


def config_directories(config_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories of the config search path: ``config_dir`` (when given) and kd-hydra's own configs."""
    source = config_source()
    if source == PACKAGED_CONFIGS:
        from importlib.resources import files

        own = Path(str(files("kd_hydra.conf")))
    else:
        own = Path(source)
    return ([Path(config_dir).absolute()] if config_dir is not None else []) + [own]
