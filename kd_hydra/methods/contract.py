"""What a method must give the training loop, checked as one line naming ``loss._target_``.

A method's ``parts`` become history columns ``train_<part>``: the names must be distinct identifiers whose
columns are not built-in ones (``train_loss``, ``train_acc``). Its ``forward`` must return a
:class:`~kd_hydra.methods.base.LossOutput` whose total is a finite scalar and whose parts are exactly
``parts``, each a scalar. :func:`probe_method` checks the output on a generated batch while the run is
planned (on a copy of the method, so its state and the RNG are as before); :func:`check_output` checks it
again at the first training step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from kd_hydra.errors import ConfigError
from kd_hydra.records.schema import HISTORY_COLUMNS, LOSS_PART_PREFIX

from .base import DistillMethod, FeatureShapes, MethodBatch

TARGET_KEY = "loss._target_"

#: Images of the generated batch of :func:`probe_method` (BatchNorm in train mode needs more than one).
PROBE_BATCH = 4


def target_of(method: DistillMethod | type[DistillMethod]) -> str:
    """The ``module.Class`` of a method, as ``loss._target_`` names it."""
    cls = method if isinstance(method, type) else type(method)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_parts(cls: type[DistillMethod]) -> None:
    """``cls.parts``: distinct identifiers, ``ce``-style, none whose history column is a built-in column."""
    parts = cls.parts
    if not isinstance(parts, (tuple, list)) or not all(isinstance(p, str) and p.isidentifier() for p in parts):
        raise ConfigError(TARGET_KEY, f"{target_of(cls)}.parts must be a tuple of identifiers (got {parts!r})")
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise ConfigError(TARGET_KEY, f"{target_of(cls)}.parts names {', '.join(repeated)} more than once")
    taken = [p for p in parts if LOSS_PART_PREFIX + p in HISTORY_COLUMNS]
    if taken:
        builtin = ", ".join(c[len(LOSS_PART_PREFIX) :] for c in HISTORY_COLUMNS if c.startswith(LOSS_PART_PREFIX))
        raise ConfigError(
            TARGET_KEY,
            f"{target_of(cls)}.parts has {taken[0]!r}, whose history column {LOSS_PART_PREFIX}{taken[0]} is a "
            f"built-in one; rename the part (taken: {builtin})",
        )


def check_output(output: Any, parts: Sequence[str], target: str, finite: bool = True) -> None:
    """``output`` has a scalar total (finite, when ``finite``: one host sync) and exactly the scalar ``parts``."""
    total, given = getattr(output, "total", None), getattr(output, "parts", None)
    if not isinstance(total, Tensor) or not isinstance(given, Mapping):
        raise ConfigError(TARGET_KEY, f"{target}.forward must return LossOutput(total, parts) (got {type(output)})")
    if total.numel() != 1:
        raise ConfigError(TARGET_KEY, f"{target}.forward's total must be a scalar (got shape {tuple(total.shape)})")
    if set(given) != set(parts):
        raise ConfigError(
            TARGET_KEY, f"{target}.forward returned parts {sorted(given)}, its parts declare {sorted(parts)}"
        )
    for name in parts:
        value = given[name]
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(TARGET_KEY, f"{target}.forward's part {name!r} must be a scalar tensor (got {shape})")
    if finite and not bool(torch.isfinite(total.detach()).all()):
        raise ConfigError(TARGET_KEY, f"{target}.forward's total is not finite ({total.detach().item()})")


def probe_method(
    method: DistillMethod, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, num_classes: int
) -> None:
    """Run a copy of the set-up ``method`` on a generated batch (random logits and features of the probed
    shapes) and :func:`check_output` its output; ``method`` and the RNG states are left as they were."""
    target = target_of(method)
    probe = copy.deepcopy(method).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        size = PROBE_BATCH

        def logits() -> Tensor:
            return torch.randn(size, num_classes, requires_grad=True)

        def features(shapes: FeatureShapes, points: Sequence[str]) -> dict[str, Tensor]:
            return {p: torch.randn(size, *shapes[p], requires_grad=True) for p in points}

        batch = MethodBatch(
            student_logits=logits(),
            targets=torch.arange(size) % num_classes,
            sample_indices=torch.arange(size),
            teacher_logits=logits().detach() if method.uses_teacher else None,
            student_features=features(student_shapes, method.request.student),
            teacher_features=features(teacher_shapes, method.request.teacher),
            strong_student_logits=logits() if method.needs_strong_view else None,
            strong_teacher_logits=logits().detach() if method.needs_strong_view else None,
        )
        try:
            output = probe(batch)
        except ConfigError:
            raise
        except Exception as error:  # the user's code: one line naming the class, like every bad input
            raise ConfigError(
                TARGET_KEY, f"{target}.forward fails on a probe batch ({type(error).__name__}: {error})"
            ) from None
        check_output(output, method.parts, target)
