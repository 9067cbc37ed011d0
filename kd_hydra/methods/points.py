"""Which feature points of the two networks a method pairs (names from :mod:`kd_hydra.models.features`).

Pure functions of the point names each network offers, and two bases for the common requests
(:class:`PooledFeatureMethod`, :class:`PairedStagesMethod`); the pairing errors are one-line ConfigErrors
naming ``loss.name`` and the method (its module's name).
"""

from __future__ import annotations

from collections.abc import Sequence

from kd_hydra.errors import ConfigError
from kd_hydra.models.features import PRE_LOGIT, preact_points, stage_points

from .base import DistillMethod, FeatureRequest

__all__ = [
    "PairedStagesMethod",
    "PooledFeatureMethod",
    "last_aligned",
    "paired_stages",
    "preact_points",
    "require_point",
    "require_preact_pairs",
    "stage_points",
]


def last_aligned(student: Sequence[str], teacher: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The last ``min(len)`` points of each list (mdistiller's ``_align_list``), paired from the deepest."""
    count = min(len(student), len(teacher))
    return tuple(student[len(student) - count :]), tuple(teacher[len(teacher) - count :])


def paired_stages(method: str, student_points: Sequence[str], teacher_points: Sequence[str]) -> tuple[str, ...]:
    """The ``stageN`` points of both networks when they pair one to one, else ConfigError naming ``loss.name``."""
    student, teacher = stage_points(student_points), stage_points(teacher_points)
    if not student or student != teacher:
        raise ConfigError(
            "loss.name",
            f"{method} pairs stages one to one: the student has {len(student)} stage outputs and the teacher "
            f"{len(teacher)}; pick archs with the same number of stages",
        )
    return tuple(student)


def require_point(method: str, point: str, student_points: Sequence[str], teacher_points: Sequence[str]) -> None:
    """Both networks offer feature point ``point``, else ConfigError naming ``loss.name``."""
    if point not in student_points or point not in teacher_points:
        raise ConfigError("loss.name", f"{method} needs the {point} feature of both networks")


def require_preact_pairs(student_points: Sequence[str], teacher_points: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The deepest common number of ``stageN_preact`` points of both networks, else a one-line ConfigError."""
    student, teacher = last_aligned(preact_points(student_points), preact_points(teacher_points))
    if not student:
        raise ConfigError(
            "loss.name", "this method reads pre-activation feature points (stageN_preact) that these networks lack"
        )
    return student, teacher


class PooledFeatureMethod(DistillMethod):
    """A method that reads ``pre_logit`` (the flattened pooled feature) of both networks."""

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        require_point(type(self).name, PRE_LOGIT, student_points, teacher_points)
        return self.keep_request((PRE_LOGIT,), (PRE_LOGIT,))


class PairedStagesMethod(DistillMethod):
    """A method that pairs every ``stageN`` output of the student with the teacher's (same number of stages)."""

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        stages = paired_stages(type(self).name, student_points, teacher_points)
        return self.keep_request(stages, stages)
