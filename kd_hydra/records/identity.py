"""What makes two runs, or two teachers, "the same": one definition used by the store, the sweep and resume.

Pure Python on top of OmegaConf (no torch): ``analysis`` and the sweeper may import it.

- :func:`digest` is the one content hash of a JSON-able description (key order does not matter).
- :func:`flatten` is the one flattener of nested settings into dotted keys.
- :func:`training_settings` is a run's resolved config without the keys that do not change what it computes.
- :func:`teacher_identity` says which teacher a run needs; :func:`run_identity` what a run directory holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Config keys that do not change what a run computes: they may differ between a run and its resumption, and
#: two runs that differ only in them are one setting (the analysis's bookkeeping). Matched as prefixes (:func:`under`).
#: Not among them: the CPU thread count (trainer.num_threads), which changes float summation order and so the
#: numbers a run reports.
NON_TRAINING_KEYS = (
    "paths",
    "logger",
    "hydra",
    "optimized_metric",
    "table",
    "trainer.resume",
    "trainer.max_restarts",
    "trainer.checkpoint_every",
    "trainer.progress",
    "trainer.num_workers",
    "trainer.save_checkpoint",
    "trainer.save_best",
    "trainer.save_every",
    "trainer.eval_batch_size",
    "soft_label_cache.max_gb",
    "soft_label_cache.batch_size",
)
#: The device changes a result in its last bits, never the experiment: it stays in a run's identity (a run
#: resumed on another device would mix numerics), but runs that differ only in it are seeds of one setting, and a
#: baseline trained on one device matches a distill run on another.
DEVICE_KEYS = ("trainer.device",)
#: Keys that never tell two settings of an experiment apart: :data:`NON_TRAINING_KEYS` and :data:`DEVICE_KEYS`.
SAME_SETTING_KEYS = NON_TRAINING_KEYS + DEVICE_KEYS

#: Keys of data-parallel training: with one device (the default) they change nothing and stay out of a run's settings
#: (its identity equals a run's from before they existed); with several, the samples per BatchNorm batch
#: (:data:`BATCHNORM_BATCH_KEY`) join them: they change what a run computes.
DISTRIBUTED_KEYS = ("trainer.devices", "trainer.sync_batchnorm", "trainer.gather_batch")
#: Keys that count only when set: null changes nothing (the identity of a run without them stays what it was).
ONLY_WHEN_SET_KEYS = ("dataset.eval_resize", "soft_label_cache.crops_per_image")
#: Keys that count only when another key is set (key -> that key): the crop pool's seed means nothing without a pool.
COUNTED_WITH = {"soft_label_cache.pool_seed": "soft_label_cache.crops_per_image"}
BATCHNORM_BATCH_KEY = "trainer.batchnorm_batch"

#: The top-level config groups that hold training settings (the others are :data:`NON_TRAINING_KEYS`).
TRAINING_GROUPS = (
    "mode", "dataset", "teacher", "student", "loss", "optimizer", "scheduler", "trainer", "teacher_training",
    "soft_label_cache",
)  # fmt: skip
#: Config groups a run of each mode reads; the others do not change what it computes (distill: every group).
MODE_GROUPS: dict[str, tuple[str, ...] | None] = {
    "teacher": ("mode", "dataset", "teacher", "teacher_training"),
    "student": ("mode", "dataset", "student", "optimizer", "scheduler", "trainer"),
    "distill": None,  # everything
    "eval": ("mode", "dataset", "teacher"),  # or "student": the network it evaluates (evaluated_role)
}
#: Where a network's weights come from: identified by the file's content (``teacher_id``) instead of its path.
CHECKPOINT_KEYS = ("teacher.checkpoint", "student.checkpoint")


def unread_groups(mode: str) -> tuple[str, ...]:
    """The training groups a distill run reads and a run of ``mode`` does not (with ``mode`` itself, which differs).

    ``unread_groups("student")`` is what a matched baseline may differ in from its distill run (teacher, loss, ...);
    ``unread_groups("teacher")`` what never changes the teacher a distill run needs (student, optimizer, ...).
    """
    read = MODE_GROUPS[mode] or TRAINING_GROUPS
    return ("mode", *(group for group in TRAINING_GROUPS if group not in read))


#: Dataset keys that say where the data is or how it is read, not what it is (the content digest says that).
DATA_LOCATION_KEYS = ("loader", "path", "root", "in_memory", "max_memory_gb", "download", "verify_checksums")
IDENTITY_FORMAT = 2


def digest(description: Any) -> str:
    """SHA-256 (hex) of a JSON-serialisable description, independent of key order."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def plain(node: Any) -> Any:
    """A config node as plain resolved Python values (enums as their values); other values unchanged."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node.value if isinstance(node, Enum) else node


def flatten(node: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"loss.temperature": 4.0, ...}``; lists and other leaves kept as they are."""
    flat: dict[str, Any] = {}
    items = node.items() if isinstance(node, Mapping) and not OmegaConf.is_config(node) else plain(node).items()
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = plain(value)
    return flat


def under(dotted: str, prefixes: Iterable[str]) -> bool:
    """True when ``dotted`` is one of the dotted ``prefixes`` or lies below one (``trainer.seed`` under ``trainer``)."""
    return any(dotted == p or dotted.startswith(p + ".") for p in prefixes)


def training_settings(cfg: DictConfig) -> dict[str, Any]:
    """Every resolved setting as dotted keys, without :data:`NON_TRAINING_KEYS` (the record in metrics.json)."""
    top = {key: cfg[key] for key in cfg if not under(str(key), NON_TRAINING_KEYS)}  # never resolve hydra.*
    flat = flatten(top)
    settings = {
        k: v
        for k, v in flat.items()
        if not under(k, NON_TRAINING_KEYS)
        and not (k in ONLY_WHEN_SET_KEYS and v is None)
        and not (k in COUNTED_WITH and flat.get(COUNTED_WITH[k]) is None)
    }
    devices = int(settings.get("trainer.devices") or 1)
    if devices == 1:
        return {k: v for k, v in settings.items() if k not in DISTRIBUTED_KEYS}
    settings[BATCHNORM_BATCH_KEY] = batchnorm_batch(
        settings["trainer.batch_size"], devices, bool(settings.get("trainer.sync_batchnorm"))
    )
    return settings


def batchnorm_batch(batch_size: int, devices: int, synchronized: bool) -> int:
    """The samples a BatchNorm layer normalises over in a step of ``devices`` workers (the largest share)."""
    return batch_size if synchronized else -(-batch_size // devices)


def evaluated_role(student_checkpoint: Any) -> str:
    """The network a mode=eval run evaluates: the student when ``student.checkpoint`` is given, else the teacher."""
    return "teacher" if student_checkpoint is None else "student"


def mode_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Of a run's training settings, those its mode reads (a baseline ignores the teacher and the loss; mode=eval
    the network it does not evaluate); a checkpoint is named by its content (``teacher_id``), not its path."""
    groups = MODE_GROUPS.get(str(settings.get("mode")))
    if groups is None:
        return dict(settings)
    if settings.get("mode") == "eval":
        groups = (*groups[:-1], evaluated_role(settings.get("student.checkpoint")))
    return {k: v for k, v in settings.items() if under(k, groups) and k not in CHECKPOINT_KEYS}


def recorded_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as metrics.json keeps them: every key, None where the run's mode does not read it."""
    read = mode_settings(settings)
    return {k: (read[k] if k in read else None) for k in settings}


def data_identity(dataset: DictConfig | Mapping[str, Any], content_digest: str) -> dict[str, Any]:
    """What determines the images a model trains on: the content digest plus the dataset's other settings."""
    settings = {k: v for k, v in plain(dataset).items() if k not in DATA_LOCATION_KEYS}
    dataset_keys = [key.removeprefix("dataset.") for key in ONLY_WHEN_SET_KEYS if key.startswith("dataset.")]
    unset = {key for key in dataset_keys if settings.get(key) is None}
    return {"content": content_digest, **{k: v for k, v in settings.items() if k not in unset}}


def dataset_config_digest(dataset: DictConfig) -> str:
    """Stand-in for the content digest before any data is read (equal configs of one sweep read equal files)."""
    return digest(plain(dataset))


def teacher_identity(cfg: DictConfig, content_digest: str) -> dict[str, Any]:
    """Everything that determines a trained teacher: its arch, the data and its own recipe (``teacher_training``).

    It is the teacher store's key, the sweep's grouping of distill jobs into teacher jobs (with
    :func:`dataset_config_digest` standing in for the content digest) and part of a distill run's identity.
    Not in it: the student's settings (``trainer``, ``optimizer``, ``scheduler``), which never train a teacher,
    and the device, since a teacher trained on one device serves runs on any other; but with several workers
    (``trainer.devices``), their number and the samples per BatchNorm batch, which change the teacher trained.
    """
    arch = {k: v for k, v in plain(cfg.teacher).items() if k not in ("checkpoint", "_target_")}
    identity = {
        "format": IDENTITY_FORMAT,
        "arch": arch,
        "data": data_identity(cfg.dataset, content_digest),
        "training": plain(cfg.teacher_training),
    }
    devices = int(OmegaConf.select(cfg, "trainer.devices", default=1) or 1)
    if devices > 1:  # the job's workers train the teacher too
        synchronized = bool(OmegaConf.select(cfg, "trainer.sync_batchnorm", default=False))
        identity["workers"] = {
            "devices": devices,
            "batchnorm_batch": batchnorm_batch(int(cfg.teacher_training.batch_size), devices, synchronized),
        }
    return identity


def teacher_id(cfg: DictConfig, content_digest: str, checkpoint_sha256: str | None = None) -> str:
    """The digest that names a distill run's teacher: its checkpoint's SHA-256, else its identity's digest."""
    if checkpoint_sha256 is not None:
        return f"sha256:{checkpoint_sha256}"
    return digest(teacher_identity(cfg, content_digest))


def run_identity(settings: Mapping[str, Any], content_digest: str | None, teacher: str | None) -> dict[str, Any]:
    """What a run directory's results depend on: the settings its mode reads, the data's content, the teacher.

    ``settings`` are :func:`training_settings` (as metrics.json keeps them).
    """
    return {"settings": mode_settings(settings), "data_digest": content_digest, "teacher_id": teacher}


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any], shown: int = 4) -> str:
    """``key: saved -> current`` for the first differing settings, data content or teacher; empty when equal."""
    old, new = dict(saved.get("settings") or {}), dict(current.get("settings") or {})
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    lines = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:shown]]
    if len(keys) > shown:
        lines.append(f"and {len(keys) - shown} more settings")
    if saved.get("data_digest") != current.get("data_digest"):
        lines.append("the dataset's content changed")
    if saved.get("teacher_id") != current.get("teacher_id"):
        lines.append("the teacher's weights changed")
    return "; ".join(lines)
