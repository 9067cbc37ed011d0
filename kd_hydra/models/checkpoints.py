"""Model checkpoints: kd-hydra's own format (weights + arch signature) and loading of any published layout."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_hydra.errors import CheckpointError
from kd_hydra.models.features import unwrap
from kd_hydra.models.published import IncompatiblePublishedCheckpoint, detect_published_layout, to_zoo_layout
from kd_hydra.records.files import atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kd-hydra/model-v1"


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


def save_checkpoint(path: Path, model: nn.Module, arch: ArchSignature, method: nn.Module | None = None) -> str:
    """Write ``model``'s weights with their arch signature (and a method's trainable parts) atomically.

    Returns the file's SHA-256. ``method`` is stored under ``"method"`` as ``{"name", "state_dict"}``.
    """
    payload = {"format": CHECKPOINT_FORMAT, "arch": arch.__dict__.copy(), "state_dict": unwrap(model).state_dict()}
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
    target = unwrap(model)
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
