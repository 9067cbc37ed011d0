"""The config groups a user picks (``group=option``), with their options, for ``--help``.

``conf/hydra/default.yaml``'s help template shows them through the ``kd_usage_groups`` resolver; the other
folders of ``conf/`` are internal (the model files behind ``teacher=``/``student=``, a dataset's loader, the
per-method values of the presets) or hold one option (``trainer``, ``paths``). Imports no torch.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from kd_hydra.config.sources import config_directories

#: Groups users pick, in the order ``--help`` shows them, each with what it chooses.
USER_GROUPS = {
    "experiment": "a preset: dataset, networks, recipe (and a sweep for some)",
    "dataset": "the data",
    "teacher": "the teacher network",
    "student": "the student network",
    "loss": "the distillation method",
    "optimizer": "the student's optimizer (the teacher's: optimizer@teacher_training.optimizer=...)",
    "scheduler": "the student's learning-rate schedule",
    "logger": "trackers besides history.csv and metrics.json: logger=[csv,tensorboard]",
    "debug": "a smoke test of any preset on a CPU (one epoch on 64 images per split)",
    "hparams_search": "an Optuna search (pip install '.[optuna]')",
    "table": "a published table as one sweep, beside the authors' numbers (with -m)",
}
#: Folders of ``conf/`` that are not picked on the command line (or hold a single option).
INTERNAL_GROUPS = ("model", "dataset/loader", "preset_method", "published", "hydra", "trainer", "paths")
#: The groups built from ``conf/model`` (kd_hydra.models.model_configs).
MODEL_ROLES = ("teacher", "student")
WIDTH = 100


def group_options(group: str) -> list[str]:
    """The options of ``group`` in kd-hydra's configs (``teacher``/``student``: the architectures of conf/model)."""
    folder = config_directories()[-1] / ("model" if group in MODEL_ROLES else group)
    return sorted(path.stem for path in Path(folder).glob("*.yaml"))


def usage_groups() -> str:
    """The ``--help`` lines of :data:`USER_GROUPS`: each group, what it picks, and its options."""
    lines = []
    for group, what in USER_GROUPS.items():
        lines.append(f"{group}: {what}")
        options = ", ".join(group_options(group))
        lines += textwrap.wrap(options, WIDTH, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)
