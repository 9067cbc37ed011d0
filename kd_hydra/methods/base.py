"""The contract every distillation method follows (one module + one YAML per method).

A method is an ``nn.Module`` built by ``hydra.utils.instantiate(cfg.loss)``. It says what it needs
from the teacher (logits, named feature points), owns its trainable parts (connectors, embeddings,
memory banks: ordinary submodules, so they follow the student to the device, into the optimizer and
into checkpoints), and turns one batch into a :class:`LossOutput`. The training loop knows nothing
else about it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy  # noqa: F401  (re-exported for the methods)

#: Feature shapes from the probe forward, per feature point, without the batch dimension.
FeatureShapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class FeatureRequest:
    """Which feature points of each network a method reads (names from ``kd_hydra.models.features``)."""

    student: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.student or self.teacher)


@dataclass
class MethodBatch:
    """Everything a method may read for one training batch (features only where requested)."""

    student_logits: Tensor
    targets: Tensor
    sample_indices: Tensor
    teacher_logits: Tensor | None = None
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)


class LossOutput(NamedTuple):
    """The optimised loss and its unweighted parts by name (``ce`` first; the names become history columns)."""

    total: Tensor
    parts: dict[str, Tensor]


class DistillMethod(nn.Module):
    """Base class of distillation methods: subclasses set ``name``/``parts`` and implement ``forward``.

    Class attributes describe the method to the trainer:

    - ``parts``: names of the loss parts ``forward`` returns, in order (history columns ``train_<part>``);
    - ``uses_teacher``: False only for plain cross-entropy (no teacher is built, loaded or run);
    - ``needs_teacher_logits``: whether ``forward`` reads ``teacher_logits``.

    Methods that read intermediate features override :meth:`feature_request`; they run the teacher
    live, while logit-only methods can read the soft-label cache.
    """

    name: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ("ce",)
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        """The feature points to record, given the points each network offers (none by default)."""
        return FeatureRequest()

    @property
    def uses_features(self) -> bool:
        """Whether any feature point is read (then the teacher runs live, never from the cache)."""
        return type(self).feature_request is not DistillMethod.feature_request

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        """Build trainable parts sized to the probed feature shapes (called once, before the optimizer).

        ``train_targets`` are the labels of the training split by sample index (CPU int64), for methods
        that keep per-sample state (CRD's memory bank and its negatives).
        """

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (1-based); for schedules such as DKD's warm-up."""

    def forward(self, batch: MethodBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        """Python-side state to checkpoint besides the module's state dict (e.g. the current epoch)."""
        return {}

    def load_extra_state_from_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state_for_checkpoint` returned."""

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        """Check the method's ``loss.*`` values (ranges, finiteness); raise ConfigError on the first bad one."""


# -- helpers for validate_config --------------------------------------------------------------------------


def require_finite(
    loss: Mapping[str, Any],
    key: str,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """``loss[key]`` as a finite float within the bounds, else ConfigError naming ``loss.<key>``."""
    value = loss[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"loss.{key}", f"must be a number (got {value!r})")
    value = float(value)
    low = "" if minimum is None else f"{'>' if strict_minimum else '>='} {minimum:g}"
    high = "" if maximum is None else f"<= {maximum:g}"
    allowed = " and ".join(p for p in (low, high) if p) or "finite"
    if not math.isfinite(value):
        raise ConfigError(f"loss.{key}", f"must be a finite number {allowed} (got {value})")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        raise ConfigError(f"loss.{key}", f"must be {allowed} (got {value:g})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"loss.{key}", f"must be {allowed} (got {value:g})")
    return value


def require_weights(loss: Mapping[str, Any], *keys: str) -> None:
    """Each ``loss.<key>`` is a finite weight >= 0."""
    for key in keys:
        require_finite(loss, key, minimum=0.0)


def require_positive_int(loss: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = loss[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"loss.{key}", f"must be an integer >= {minimum} (got {value!r})")
    return value


def stage_points(points: Sequence[str]) -> list[str]:
    """The ``stageN`` feature points of a network, in order."""
    return [p for p in points if p.startswith("stage") and not p.endswith("_preact")]
