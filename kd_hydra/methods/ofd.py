"""A comprehensive overhaul of feature distillation (Heo et al., ICCV 2019), as mdistiller's ``OFD``.

On the pre-activation stage outputs (``stageN_preact``, the deepest common number of both networks): each
student map goes through a connector (conv ``kernel_size`` without bias + BatchNorm, He-normal init) to the
teacher's channels; the loss is :func:`kd_hydra.losses.ofd_loss`, the partial L2 against ``max(t, margin)``
where the margin is ``E[x | x < 0]`` of the teacher's BatchNorm before that ReLU (:func:`kd_hydra.losses.ofd_margin`).
``ce_weight * CE + feat_weight * OFD``. Those BatchNorms are found from the teacher's feature points
(:func:`preact_batchnorm`), or named by its ``preact_batchnorms()`` method (``{"stageN_preact": module path}``).

As in the reference code (clovaai's CIFAR script, mdistiller's ``OFD.train``), which runs the teacher in train
mode, the teacher's BatchNorms use batch statistics (``teacher_batch_statistics``; its running statistics and
other layers stay as they are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, ofd_loss, ofd_margin
from kd_hydra.models.features import feature_points, unwrap

from .base import DistillMethod, FeatureRequest, FeatureShapes, LossOutput, MethodBatch
from .checks import require_positive_int
from .points import require_preact_pairs

#: The model method that names the BatchNorm before each pre-activation point.
PREACT_BATCHNORMS = "preact_batchnorms"


def ofd_connector(student_channels: int, teacher_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm, conv weights N(0, 2 / (k * k * C_t)), BatchNorm 1 / 0."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
    batch_norm = nn.BatchNorm2d(teacher_channels)
    nn.init.ones_(batch_norm.weight)
    nn.init.zeros_(batch_norm.bias)
    return nn.Sequential(conv, batch_norm)


def preact_batchnorm(teacher: nn.Module, point: str) -> nn.BatchNorm2d:
    """The BatchNorm before the ReLU at ``point`` of ``teacher`` (mdistiller's ``get_bn_before_relu``).

    Named by the model's ``preact_batchnorms()`` when it has one; else found from the point's module: the
    module itself if it is a BatchNorm (Wide ResNets), else the last BatchNorm inside it (MobileNetV2 blocks,
    which end in a linear BatchNorm), else the last BatchNorm child of its block (ResNets' ``bn2``/``bn3``
    before the ``preact`` marker on the residual sum).
    """
    inner = unwrap(teacher)
    declared = getattr(inner, PREACT_BATCHNORMS, None)
    if callable(declared) and point in dict(declared()):
        found = inner.get_submodule(dict(declared())[point])
    else:
        path = feature_points(inner).get(point)
        found = None if path is None else _batchnorm_at(inner, path)
    if not isinstance(found, nn.BatchNorm2d):
        raise ConfigError(
            "loss.name",
            f"ofd takes its margins from the teacher's BatchNorm before {point}; none found in "
            f"{type(inner).__name__} (name it with {PREACT_BATCHNORMS}())",
        )
    return found


def _batchnorm_at(model: nn.Module, path: str) -> nn.Module | None:
    module = model.get_submodule(path)
    if isinstance(module, nn.BatchNorm2d):
        return module
    inside = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if inside:
        return inside[-1]
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    children = [m for m in parent.children() if isinstance(m, nn.BatchNorm2d)]
    return children[-1] if children else None


class OFD(DistillMethod):
    """OFD; parts ``ce`` and ``ofd`` (unweighted). Trainable: ``connectors``; buffers ``margin_<teacher point>``."""

    parts = ("ce", "ofd")
    teacher_batch_statistics = True
    weight_keys = {"ofd": "feat_weight"}

    def __init__(self, *, ce_weight: float, feat_weight: float, kernel_size: int) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.feat_weight = feat_weight
        self.kernel_size = kernel_size
        self.connectors: nn.ModuleList | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        if require_positive_int(loss, "kernel_size") % 2 == 0:
            raise ConfigError("loss.kernel_size", f"must be odd to keep the map size (got {loss['kernel_size']})")

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        return self.keep_request(*require_preact_pairs(student_points, teacher_points))

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Any, num_classes: int
    ) -> None:
        student, teacher = self.requested_channels(student_shapes, teacher_shapes)
        self.connectors = nn.ModuleList(ofd_connector(s, t, self.kernel_size) for s, t in zip(student, teacher))

    def setup_teacher(self, teacher: nn.Module) -> None:
        device = next(self.connectors.parameters()).device if self.connectors is not None else None
        for point in self.request.teacher:
            bn = preact_batchnorm(teacher, point)
            self.register_buffer(f"margin_{point}", ofd_margin(bn.weight, bn.bias).float().to(device))

    def margins(self) -> list[Tensor]:
        """The per-channel margins of the teacher points, in order (set by :meth:`setup_teacher`)."""
        missing = [p for p in self.request.teacher if not hasattr(self, f"margin_{p}")]
        if self.connectors is None or missing:
            raise RuntimeError("OFD.setup() and OFD.setup_teacher() must run before the first batch")
        return [getattr(self, f"margin_{p}") for p in self.request.teacher]

    def forward(self, batch: MethodBatch) -> LossOutput:
        margins = self.margins()
        ce = cross_entropy(batch.student_logits, batch.targets)
        student, teacher = self.requested(batch.student_features, batch.teacher_features)
        connected = [connector(feature) for connector, feature in zip(self.connectors, student)]
        ofd = ofd_loss(connected, teacher, margins)
        return self.weighted_loss(batch, {"ce": ce, "ofd": ofd})
