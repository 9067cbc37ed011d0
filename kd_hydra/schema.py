"""The schema of a run directory: the only interface between training and ``analysis``.

Pure Python (no torch) so that ``analysis`` can import it without importing the trainer.
Every run directory written by ``run.py`` holds:

- ``.hydra/config.yaml``, ``.hydra/overrides.yaml``, ``.hydra/hydra.yaml`` (written by Hydra);
- ``history.csv``: one row per finished epoch, columns :data:`HISTORY_COLUMNS`, rewritten
  atomically after every epoch (an unfinished run keeps the epochs it finished);
- ``metrics.json``: the keys of :data:`METRICS_KEYS`, written atomically, last of all.
  A directory with ``.hydra/config.yaml`` but no ``metrics.json`` is an unfinished run.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
HYDRA_DIR = ".hydra"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
#: Status that ``analysis`` gives a run directory that has a config but no metrics.json.
STATUS_UNFINISHED = "unfinished"

MODE_TEACHER = "teacher"
MODE_STUDENT = "student"
MODE_DISTILL = "distill"
MODES = (MODE_TEACHER, MODE_STUDENT, MODE_DISTILL)

#: Where a distill run's teacher came from.
TEACHER_SOURCES = ("trained", "store", "checkpoint")

#: Keys of metrics.json. Accuracies are percentages in [0, 100]; None where not applicable
#: (for instance every accuracy of a run that failed before training).
METRICS_KEYS = (
    "schema_version",  # int, SCHEMA_VERSION
    "status",  # "completed" | "failed"
    "reason",  # str | None: one-line reason of a failure
    "mode",  # "teacher" | "student" | "distill"
    "dataset",  # dataset.name
    "model",  # arch of the model this run trained (the teacher in mode=teacher)
    "teacher",  # teacher arch (distill) or None
    "final_test_acc",  # test accuracy after the last epoch
    "best_test_acc",  # best test accuracy over the evaluated epochs
    "best_epoch",  # epoch (1-based) of best_test_acc
    "teacher_test_acc",  # test accuracy of the teacher used (distill) or None
    "teacher_source",  # one of TEACHER_SOURCES (distill) or None
    "model_params",  # parameter count of the trained model
    "teacher_params",  # parameter count of the teacher (distill) or None
    "epochs",  # epochs trained
    "wall_seconds",  # wall time of the whole run, data loading and teacher included
    "train_images_per_second",  # training images / training-loop seconds (teacher logits included, evaluation excluded)
    "soft_label_cache",  # "off" | "cold" | "warm" | None (not distill)
    "checkpoint",  # path of the trained weights (run dir model.pt, or the teacher store) or None
    "settings",  # dict of dotted key -> value: the resolved settings that define the run (loss.* None
    #              unless mode=distill: teachers and baselines train with CE)
)

#: Dotted keys copied into metrics.json["settings"].
SETTINGS_KEYS = (
    "mode",
    "dataset.name",
    "teacher.name",
    "student.name",
    "loss.name",
    "loss.temperature",
    "loss.alpha",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.seed",
    "trainer.precision",
    "optimizer._target_",
    "optimizer.lr",
    "scheduler._target_",
)

#: Columns of history.csv, in order. Losses are means over the epoch's training batches;
#: ``train_ce``/``train_kd`` are the unweighted CE and T^2-scaled KL parts (``train_kd`` empty
#: without a teacher). ``test_acc`` is empty for epochs that were not evaluated.
HISTORY_COLUMNS = (
    "epoch",  # 1-based
    "lr",  # learning rate used during the epoch
    "train_loss",  # the optimised loss
    "train_ce",
    "train_kd",
    "train_acc",  # percent, on the augmented training batches
    "test_acc",  # percent
    "test_loss",  # mean cross-entropy on the test split
    "seconds",  # wall seconds of the epoch, evaluation included
)
