"""kd-hydra's methods as the configs build them, for tests: the shared ``loss`` keys of ``conf/config.yaml``, then
``conf/loss/<name>.yaml``, plus overrides."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from kd_hydra.methods import DistillMethod, build_method

CONF = Path(__file__).resolve().parents[1] / "conf"
LOSS_DIR = CONF / "loss"


def common_loss_keys() -> dict[str, Any]:
    """The ``loss`` keys every method shares, as ``conf/config.yaml`` gives them."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").loss)  # type: ignore[return-value]


def loss_node(method: str | type[DistillMethod], **overrides: Any) -> dict[str, Any]:
    """The composed ``loss`` node of a built-in method (by YAML name or class), with ``overrides`` applied."""
    name = method if isinstance(method, str) else method.name
    values = OmegaConf.to_container(OmegaConf.load(LOSS_DIR / f"{name}.yaml"))
    return {**common_loss_keys(), **values, **overrides}


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


#: Where a method may assign the attributes it reads (the rest of its methods only update them).
ASSIGNING_METHODS = ("__init__", "setup")


def _self_attributes(function: ast.FunctionDef, context: type[ast.expr_context]) -> set[str]:
    """The names ``x`` of the ``self.x`` in ``function`` (nested code included) used in ``context`` (Load, Store)."""
    return {
        node.attr
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, context)
    }


def unassigned_reads(cls: type[DistillMethod]) -> set[str]:
    """The ``self.<name>`` read in a method of ``cls`` or of its DistillMethod bases that nothing provides (static,
    from the source): not assigned in an ``__init__``/``setup`` of the hierarchy, not a class attribute, property
    or method, and not an attribute of every ``nn.Module``."""
    reads: set[str] = set()
    provided = set(dir(cls)) | set(vars(nn.Module()))
    for owner in (c for c in cls.__mro__ if issubclass(c, DistillMethod)):
        (body,) = ast.parse(textwrap.dedent(inspect.getsource(owner))).body
        for function in (node for node in body.body if isinstance(node, ast.FunctionDef)):
            reads |= _self_attributes(function, ast.Load)
            if function.name in ASSIGNING_METHODS:
                provided |= _self_attributes(function, ast.Store)
    return reads - provided


def unkept_settings(method: DistillMethod) -> list[str]:
    """The method's settings (``config_keys()``) its ``__init__`` did not keep as instance attributes."""
    return [key for key in method.config_keys() if key not in vars(method)]
