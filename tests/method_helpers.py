"""kd-hydra's methods as the configs build them, for tests: values from ``conf/loss/<name>.yaml`` plus overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kd_hydra.config.structured import LOSS_COMMON_DEFAULTS
from kd_hydra.methods import DistillMethod, build_method

LOSS_DIR = Path(__file__).resolve().parents[1] / "conf" / "loss"


def loss_node(method: str | type[DistillMethod], **overrides: Any) -> dict[str, Any]:
    """The composed ``loss`` node of a built-in method (by YAML name or class), with ``overrides`` applied."""
    name = method if isinstance(method, str) else method.name
    values = OmegaConf.to_container(OmegaConf.load(LOSS_DIR / f"{name}.yaml"))
    return {**LOSS_COMMON_DEFAULTS, **values, **overrides}


def method_from_yaml(method: str | type[DistillMethod], **overrides: Any) -> DistillMethod:
    """The method ``loss=<name>`` builds, with ``overrides`` of its ``loss.*`` keys."""
    return build_method(loss_node(method, **overrides))


def set_up_like_the_trainer(
    name: str,
    student: Any,
    teacher: Any,
    image_shape: tuple[int, ...],
    targets: Any,
    num_classes: int,
    **overrides: Any,
) -> tuple[DistillMethod, Any]:
    """The method as ``loss=<name>`` builds it, set up on the two networks as the trainer does: (method, request)."""
    import torch

    from kd_hydra.models.features import probe_feature_shapes

    method = method_from_yaml(name, **overrides)
    request = method.feature_request(tuple(student.feature_points()), tuple(teacher.feature_points()))
    torch.manual_seed(0)
    student_shapes = probe_feature_shapes(student, request.student, image_shape)
    teacher_shapes = probe_feature_shapes(teacher, request.teacher, image_shape)
    method.setup(student_shapes, teacher_shapes, targets, num_classes)
    method.setup_teacher(teacher)
    return method, request
