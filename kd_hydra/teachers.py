"""Model checkpoints and the content-addressed teacher store.

A teacher is stored under ``<cache_dir>/teachers/<arch>-<dataset>-<key>/`` where ``key`` hashes
everything that determines it (dataset content, augmentation, arch, training settings, seed).
The directory holds ``model.pt``, ``history.csv`` and, written last, ``meta.json`` with the
SHA-256 of ``model.pt``: an entry without a matching ``meta.json`` is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from kd_hydra.errors import CheckpointError, ConfigError
from kd_hydra.models.published import IncompatiblePublishedCheckpoint, detect_published_layout, to_zoo_layout
from kd_hydra.outputs import atomic_write_bytes, write_json
from kd_hydra.schema import TRAIN_STATE_FILE

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kd-hydra/model-v1"
MODEL_FILE = "model.pt"
META_FILE = "meta.json"
LOCK_SUFFIX = ".lock"
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchSignature:
    """What a checkpoint must match: architecture name and the dataset-derived shape."""

    name: str
    source: str
    num_classes: int
    in_channels: int
    image_size: int

    def describe(self) -> str:
        size = f"{self.in_channels}x{self.image_size}x{self.image_size}"
        return f"{self.name} with {self.num_classes} classes on {size} images"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def config_digest(description: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable description, independent of key order."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _unwrapped_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return inner.state_dict()


def save_checkpoint(path: Path, model: nn.Module, arch: ArchSignature, method: nn.Module | None = None) -> str:
    """Write ``model``'s weights with their arch signature (and a method's trainable parts) atomically.

    Returns the file's SHA-256. ``method`` is stored under ``"method"`` as ``{"name", "state_dict"}``.
    """
    payload = {"format": CHECKPOINT_FORMAT, "arch": arch.__dict__.copy(), "state_dict": _unwrapped_state_dict(model)}
    if method is not None:
        payload["method"] = {"name": getattr(method, "name", type(method).__name__), "state_dict": method.state_dict()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def _state_dict_of(payload: Any, path: Path, arch: ArchSignature, key: str) -> Mapping[str, torch.Tensor]:
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        stored = payload.get("arch", {})
        for field in ("name", "num_classes", "in_channels"):
            if stored.get(field) != getattr(arch, field):
                raise CheckpointError(
                    f"{key}={path}: checkpoint is {stored.get('name')} with {stored.get('num_classes')} classes and "
                    f"{stored.get('in_channels')} channels, but the config asks for {arch.describe()}"
                )
        return payload["state_dict"]
    if isinstance(payload, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(payload.get(wrapper), Mapping):
                return payload[wrapper]
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
    raise CheckpointError(f"{key}={path}: not a state dict (expected a kd-hydra checkpoint or a mapping of tensors)")


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for name, tensor in state.items():
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        cleaned[name] = tensor
    return cleaned


SHOWN_KEYS = 3  # keys quoted per kind in a one-line key-mismatch error
NUM_BATCHES_TRACKED = "num_batches_tracked"


def _first_non_finite(state: Mapping[str, torch.Tensor]) -> tuple[str | None, int]:
    """Name of the first floating-point tensor holding NaN or inf, and how many tensors do."""
    bad = [
        name
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    return (bad[0] if bad else None), len(bad)


def _first_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (", ..." if len(keys) > SHOWN_KEYS else "")


def _layout_mismatch(
    model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and ``key: file [shape] vs model [shape]`` size mismatches.

    A missing BatchNorm ``num_batches_tracked`` is no mismatch: ``load_state_dict`` fills it in.
    """
    missing = [k for k in model_state if k not in state and not k.endswith(NUM_BATCHES_TRACKED)]
    unexpected = [k for k in state if k not in model_state]
    mismatched = [
        f"{k}: file {list(state[k].shape)} vs model {list(tensor.shape)}"
        for k, tensor in model_state.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != tensor.shape
    ]
    return missing, unexpected, mismatched


def load_checkpoint(model: nn.Module, path: Path, arch: ArchSignature, key: str = "teacher.checkpoint") -> None:
    """Load weights into ``model`` (``weights_only=True``); a file that does not fit raises CheckpointError.

    Accepts kd-hydra checkpoints, plain state dicts (``state_dict``/``model`` wrappers, ``module.``
    prefixes) and the CIFAR teachers RepDistiller/mdistiller publish (renamed by
    :func:`kd_hydra.models.published.to_zoo_layout`). NaN/inf weights are refused; a key-layout
    mismatch is summarised in one line and listed in full in the log.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{key}={path}: cannot be loaded with weights_only=True: {first_line}") from error
    state = _strip_prefixes(_state_dict_of(payload, Path(path), arch, key))
    non_finite, non_finite_count = _first_non_finite(state)
    if non_finite is not None:
        raise CheckpointError(
            f"{key}={path}: tensor '{non_finite}' holds NaN or inf ({non_finite_count} non-finite tensor(s)); "
            "the weights are corrupt or come from a diverged run"
        )
    published_layout = detect_published_layout(state)
    if arch.source == "zoo":
        try:
            converted = to_zoo_layout(arch.name, state)
        except IncompatiblePublishedCheckpoint as error:
            raise CheckpointError(f"{key}={path}: {error}") from None
        if converted is not None:
            log.info("%s=%s: %s checkpoint renamed to kd-hydra's %s layout", key, path, published_layout, arch.name)
            state = converted
    target = getattr(model, "_orig_mod", model)
    missing, unexpected, mismatched = _layout_mismatch(target.state_dict(), state)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                log.error("%s=%s: %d %s key(s): %s", key, path, len(keys), label, ", ".join(keys))
                parts.append(f"{len(keys)} {label} key(s) ({_first_keys(keys)})")
        layout_note = f"; the file is in the {published_layout} layout" if published_layout else ""
        raise CheckpointError(
            f"{key}={path}: does not fit {arch.describe()}: {'; '.join(parts)}{layout_note} (full lists in the log)"
        )
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        details = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise CheckpointError(f"{key}={path}: does not fit {arch.describe()}: {details}") from error


@dataclass(frozen=True)
class StoredTeacher:
    """A teacher ready to use: where its weights are, their hash, its test accuracy and origin."""

    model_path: Path
    sha256: str
    result: Mapping[str, Any]  # the training summary; at least "final_test_acc"
    source: str  # "trained" | "store"

    @property
    def test_acc(self) -> float:
        return float(self.result["final_test_acc"])


TrainTeacher = Callable[[nn.Module, Path], Mapping[str, Any]]


#: How long a job waits for another process's training of the same teacher before giving up.
DEFAULT_LOCK_TIMEOUT_S = 24 * 3600.0
#: The config key that most often makes a teacher's training diverge.
DIVERGENCE_KEY = "teacher_training.optimizer.lr"
_META_FIELDS = {"sha256": str, "result": Mapping}


class TeacherStore:
    """Find a teacher by its description, or train it exactly once (across processes) and keep it.

    Verified entries are read without the lock (a read-only store works); training happens under a
    per-entry file lock (``flock``: released by the OS when its holder dies), and an interrupted
    training continues from the entry's ``checkpoint.pt``.
    """

    def __init__(
        self, root: Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, root_key: str = "paths.cache_dir"
    ) -> None:
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s
        self.root_key = root_key

    def entry_dir(self, description: Mapping[str, Any], label: str) -> Path:
        return self.root / f"{label}-{config_digest(description)[:16]}"

    def get_or_train(
        self, description: Mapping[str, Any], label: str, model: nn.Module, arch: ArchSignature, train: TrainTeacher
    ) -> StoredTeacher:
        """Load the stored teacher into ``model``; if there is none (or it is corrupt), ``train`` it and store it.

        ``train(model, entry_dir)`` trains in place, may write files into ``entry_dir`` (resuming from
        ``entry_dir/checkpoint.pt`` when it exists) and returns a summary with at least ``final_test_acc``.
        A lock per entry makes concurrent callers wait for one training.
        """
        entry = self.entry_dir(description, label)
        stored = self._load_valid(entry, model, arch, quiet=True)
        if stored is not None:
            log.info("teacher found in store: %s (test acc %.2f%%)", entry, stored.test_acc)
            return stored
        self._make_writable_root()
        lock = FileLock(str(entry) + LOCK_SUFFIX, timeout=self.lock_timeout_s)
        try:
            lock.acquire()
        except Timeout:
            raise CheckpointError(
                f"{lock.lock_file}: another job has been training this teacher for over {self.lock_timeout_s:.0f} s "
                f"(the lock is freed when it ends or dies); wait for it or remove that job"
            ) from None
        except OSError as error:
            raise ConfigError(
                self.root_key,
                f"{self.root}: cannot create the teacher lock file "
                f"({error.strerror or error}); use a writable directory",
            ) from None
        try:
            stored = self._load_valid(entry, model, arch)
            if stored is not None:
                log.info("teacher found in store: %s (test acc %.2f%%)", entry, stored.test_acc)
                return stored
            self._prepare_entry(entry)
            result = dict(train(model, entry))
            self._require_finite(entry, model, result)
            sha256 = save_checkpoint(entry / MODEL_FILE, model, arch)
            write_json(
                entry / META_FILE,
                {
                    "sha256": sha256,
                    "result": result,
                    "arch": arch.__dict__,
                    "description": description,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
            (entry / TRAIN_STATE_FILE).unlink(missing_ok=True)
            stored = StoredTeacher(entry / MODEL_FILE, sha256, result, "trained")
            log.info("teacher stored: %s (test acc %.2f%%)", entry, stored.test_acc)
            return stored
        finally:
            lock.release()

    def _make_writable_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise ConfigError(
                self.root_key,
                f"{self.root}: cannot be written ({error.strerror or error}); set it to a writable directory",
            ) from None

    @staticmethod
    def _prepare_entry(entry: Path) -> None:
        """Keep an interrupted training's checkpoint; clear a corrupt or empty entry."""
        if (entry / TRAIN_STATE_FILE).is_file() and not (entry / META_FILE).exists():
            log.info("teacher training was interrupted: continuing from %s", entry / TRAIN_STATE_FILE)
            return
        if entry.exists():
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        log.info("teacher not in store: training it once, to be stored at %s", entry)

    @staticmethod
    def _require_finite(entry: Path, model: nn.Module, result: Mapping[str, Any]) -> None:
        """A teacher with non-finite weights or accuracy is never stored (and its checkpoint is dropped)."""
        accuracy = result.get("final_test_acc")
        finite_acc = isinstance(accuracy, (int, float)) and math.isfinite(accuracy)
        finite_weights = all(
            bool(torch.isfinite(t).all()) for t in _unwrapped_state_dict(model).values() if t.is_floating_point()
        )
        if finite_acc and finite_weights:
            return
        shutil.rmtree(entry, ignore_errors=True)
        what = "weights" if not finite_weights else "test accuracy"
        raise ConfigError(
            DIVERGENCE_KEY,
            f"the teacher's training diverged (non-finite {what}); it was not stored: lower the learning rate",
        )

    def _load_valid(
        self, entry: Path, model: nn.Module, arch: ArchSignature, quiet: bool = False
    ) -> StoredTeacher | None:
        meta_path, model_path = entry / META_FILE, entry / MODEL_FILE
        if not meta_path.is_file():
            return None
        backup = {name: tensor.clone() for name, tensor in _unwrapped_state_dict(model).items()}
        try:
            meta = json.loads(meta_path.read_text())
            _check_meta(meta, meta_path)
            if not model_path.is_file() or file_sha256(model_path) != meta["sha256"]:
                raise CheckpointError(f"{model_path}: SHA-256 does not match {meta_path}")
            load_checkpoint(model, model_path, arch, key="teacher store")
        except (CheckpointError, OSError, ValueError, KeyError, TypeError) as error:
            getattr(model, "_orig_mod", model).load_state_dict(backup)
            if not quiet:
                log.warning("discarding corrupt teacher store entry (%s); it will be retrained", error)
            return None
        return StoredTeacher(model_path, meta["sha256"], meta["result"], "store")


def _check_meta(meta: Any, meta_path: Path) -> None:
    """A store entry's meta.json must be an object with the fields this module writes."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{meta_path}: not a JSON object")
    for name, kind in _META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            raise CheckpointError(f"{meta_path}: field {name!r} missing or of the wrong type")
    accuracy = meta["result"].get("final_test_acc")
    if not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy):
        raise CheckpointError(f"{meta_path}: result.final_test_acc missing or not a finite number")
