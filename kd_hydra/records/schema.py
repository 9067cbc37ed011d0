"""The schema of a run directory: the only interface between training and ``analysis``.

Pure Python (no torch) so that ``analysis`` can import it without importing the trainer.
Every run directory written by ``run.py`` holds:

- ``.hydra/config.yaml``, ``.hydra/overrides.yaml``, ``.hydra/hydra.yaml`` (written by Hydra);
- ``history.csv``: one row per finished epoch, columns :func:`history_columns` of the method's loss
  parts, rewritten atomically after every epoch (an unfinished run keeps the epochs it finished);
- ``checkpoint.pt``: the training state after the last finished epoch (resume), removed when the run completes;
- ``metrics.json``: the keys of :data:`METRICS_KEYS`, written atomically, last of all.
  A directory with ``.hydra/config.yaml`` but no ``metrics.json`` is an unfinished run.
"""

from __future__ import annotations

SCHEMA_VERSION = 3

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
TRAIN_STATE_FILE = "checkpoint.pt"
HYDRA_DIR = ".hydra"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
#: Status that ``analysis`` gives a run directory that has a config but no metrics.json.
STATUS_UNFINISHED = "unfinished"

#: Where a distill run's teacher came from.
TEACHER_SOURCES = ("trained", "store", "checkpoint")
#: How a distill run got its teacher's outputs: the soft-label cache (logit methods) or a live forward pass.
TEACHER_OUTPUTS = ("cache", "live")
SOFT_LABEL_CACHE_STATES = ("off", "cold", "warm")

#: Datasets of at least this many classes also report top-5 accuracy.
TOP5_MIN_CLASSES = 11
#: The k of the top-k accuracy reported beside top-1 (``final_test_acc_top5``, ``test_acc_top5``).
TOP5 = 5

#: Keys of metrics.json. Accuracies are percentages in [0, 100]; None where not applicable
#: (for instance every accuracy of a run that failed before training).
METRICS_KEYS = (
    "schema_version",  # int, SCHEMA_VERSION
    "status",  # "completed" | "failed"
    "reason",  # str | None: one-line reason of a failure
    "mode",  # "teacher" | "student" | "distill" | "eval" (evaluation of teacher.checkpoint, no training)
    "method",  # loss.name of a distill run ("kd", "dkd", ...); "ce" for teachers and baselines
    "dataset",  # dataset.name
    "model",  # arch of the model this run trained (the teacher in mode=teacher, the evaluated one in mode=eval)
    "teacher",  # teacher arch (distill) or None
    "final_test_acc",  # test accuracy after the last epoch
    "best_test_acc",  # best test accuracy over the evaluated epochs
    "best_epoch",  # epoch (1-based) of best_test_acc
    "final_test_acc_top5",  # top-5 test accuracy after the last epoch (datasets of >= TOP5_MIN_CLASSES classes)
    "final_val_acc",  # validation accuracy after the last epoch (dataset.val_fraction > 0) or None
    "best_val_acc",  # best validation accuracy over the evaluated epochs or None
    "best_val_epoch",  # epoch (1-based) of best_val_acc or None
    "teacher_test_acc",  # test accuracy of the teacher used (distill) or None
    "teacher_source",  # one of TEACHER_SOURCES (distill) or None
    "teacher_outputs",  # one of TEACHER_OUTPUTS (distill) or None
    "model_params",  # parameter count of the trained model
    "method_params",  # parameter count of the method's own trainable parts (connectors, embeddings) or None
    "teacher_params",  # parameter count of the teacher (distill) or None
    "epochs",  # epochs trained
    "resumed_from_epoch",  # last epoch of the checkpoint this run resumed from, or None
    "wall_seconds",  # wall time of the whole run, data loading and teacher included
    "topology",  # where it computed: {"workers": data-parallel processes, "nodes", "backend": "gloo" | "nccl" | None,
    #              "device": "cpu" | "cuda" | "mps", "batchnorm_batch": samples per BatchNorm batch in training}
    "train_images_per_second",  # training images / training-loop seconds (teacher logits included, evaluation excluded)
    "soft_label_cache",  # "off" | "cold" | "warm" | None (not distill)
    "checkpoint",  # path of the trained weights (run dir model.pt, or the teacher store; mode=eval: the evaluated file)
    "best_checkpoint",  # path of checkpoints/best.pt (trainer.save_best) or None
    "best_checkpoint_split",  # "val" | "test": the split that chose best.pt (validation when the run has one)
    "best_checkpoint_epoch",  # epoch of best.pt or None
    "config_digest",  # digest of the run's identity: the settings its mode reads, data_digest and teacher_id
    "data_digest",  # content digest of the dataset the run read (train, validation and test splits)
    "teacher_id",  # the teacher's identity digest (store teachers) or "sha256:<file>" (teacher.checkpoint)
    "train_images",  # images of the training split (the validation images held out of it excluded)
    "val_images",  # images of the validation split (0 without dataset.val_fraction)
    "test_images",  # images of the test split
    "train_seconds",  # seconds of the epoch loop (training and evaluation; teacher training, data loading excluded)
    "soft_label_cache_fill_seconds",  # seconds this run spent computing and storing soft labels for the cache
    #              (included in train_seconds; 0 when it read every epoch) or None (no cache)
    "model_macs",  # multiply-accumulates of one forward of the trained model on one image (FLOPs = 2 x MACs)
    "teacher_macs",  # the same for the teacher (distill) or None
    "method_macs",  # the same for the method's own modules (connectors, embeddings, memory) per training image,
    #              0 for a method without modules, None where it cannot be measured
    "test_ece",  # expected calibration error (%) of the trained model on the test split: 15 equal-width bins of the
    #              top-1 softmax confidence, sum over bins of (bin images / images) x |accuracy - mean confidence|
    "teacher_test_ece",  # the same for the teacher used (distill) or None
    "teacher_agreement",  # top-1 agreement (%) of the student's and the teacher's predictions on the test split
    #              (distill; the analysis computes a baseline's from TEST_LOGITS_FILE) or None
    "teacher_kl",  # mean KL(teacher || student) over the test images at temperature 1, in nats (distill) or None
    "teacher_val_acc",  # validation accuracy of the teacher used (distill; a stored teacher trained with one) or None
    "teacher_published",  # a teacher.checkpoint of known published weights (torchvision's ImageNet files), tested on
    #              the full ILSVRC2012 validation set: {weights, published_top1, test_acc, difference, tolerance,
    #              agrees, source}; a disagreement is also one of the warnings; None otherwise
    "warnings",  # list of one-line texts "<key>: <what happens>": settings that do not fit the run (a warm-up
    #              longer than the run, a clamped loss.nce_k, lr decays that never happen, a small validation
    #              split, a data subset); empty when all fit
    "settings",  # dict of dotted key -> value: every training setting of the resolved config (the
    #              authoritative record of what ran); None for the keys the run's mode does not read
)

#: metrics.json keys whose value must be a number (or null); keys of neither list may hold any value.
NUMBER_METRICS = (
    "schema_version", "final_test_acc", "best_test_acc", "best_epoch", "final_test_acc_top5", "final_val_acc",
    "best_val_acc", "best_val_epoch", "teacher_test_acc", "model_params", "method_params", "teacher_params",
    "epochs", "resumed_from_epoch", "wall_seconds", "train_images_per_second", "train_images", "val_images",
    "test_images", "train_seconds", "soft_label_cache_fill_seconds", "model_macs", "teacher_macs", "method_macs",
    "test_ece", "teacher_test_ece", "teacher_agreement", "teacher_kl", "teacher_val_acc",
)  # fmt: skip
#: metrics.json keys whose value must be text (or null); ``status`` must be text.
TEXT_METRICS = (
    "status", "reason", "mode", "method", "dataset", "model", "teacher", "teacher_source", "teacher_outputs",
    "soft_label_cache", "checkpoint", "config_digest", "data_digest", "teacher_id",
)  # fmt: skip
#: metrics.json keys whose value must be a mapping (or null).
MAPPING_METRICS = ("settings",)

#: Files of a mode=eval run beside metrics.json: accuracy per class, and the confusion matrix (rows: true class,
#: columns: predicted class, counts), both CSV with a header.
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.csv"
#: Logits of a teacher (mode=teacher) or baseline (mode=student) run on the test split, in the split's order: a
#: float16 ``(images, classes)`` NumPy ``.npy`` array (the analysis compares a baseline with its setup's teacher).
TEST_LOGITS_FILE = "test_logits.npy"
PER_CLASS_COLUMNS = ("class", "name", "images", "correct", "accuracy")

#: Dotted keys copied into metrics.json["settings"] (plus every ``loss.*`` key of the run's method).
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

#: Prefix of the history columns of a method's loss parts: ``train_ce``, ``train_kd``, ``train_dkd``, ...
LOSS_PART_PREFIX = "train_"

#: Columns of history.csv around the loss-part columns. Losses are means over the epoch's training
#: batches; ``train_<part>`` are the method's unweighted parts. Evaluation columns are empty for
#: epochs that were not evaluated; ``test_acc_top5`` for datasets of >= TOP5_MIN_CLASSES classes;
#: ``val_*`` with a validation split.
HISTORY_LEADING_COLUMNS = (
    "epoch",  # 1-based
    "lr",  # learning rate used during the epoch
    "train_loss",  # the optimised loss
)
HISTORY_TRAILING_COLUMNS = (
    "train_acc",  # percent, on the augmented training batches
    "test_acc",  # percent
    "test_acc_top5",  # percent
    "test_loss",  # mean cross-entropy on the test split
    "val_acc",  # percent, on the held-out validation split
    "val_loss",
    "seconds",  # wall seconds of the epoch, evaluation included
)
#: The columns every history.csv has (a method adds ``train_<part>`` columns between them).
HISTORY_COLUMNS = HISTORY_LEADING_COLUMNS + HISTORY_TRAILING_COLUMNS


def history_columns(parts: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The history.csv columns of a run whose method reports loss ``parts`` (e.g. ``("ce", "kd")``)."""
    return HISTORY_LEADING_COLUMNS + tuple(LOSS_PART_PREFIX + part for part in parts) + HISTORY_TRAILING_COLUMNS
