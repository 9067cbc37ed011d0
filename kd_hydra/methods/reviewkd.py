"""Knowledge review (Chen et al., CVPR 2021) as mdistiller's ``ReviewKD``: attention-based fusion + HCL.

The student's stage outputs (``stageN``; ``stageN_preact`` with ``student_preact``) and its pooled feature
(``pre_logit`` as a 1x1 map) go deepest first through attention-based fusion modules (ABF: 1x1 conv + BN to
``min(max_mid_channels, C_pooled)`` channels, fused with the upsampled result of the deeper level by two
sigmoid attention maps, resized to the teacher's size, 3x3 conv + BN to the teacher's channels). Each result
is compared with the teacher's pre-activation stage output (``stageN_preact``) or pooled feature by the
hierarchical context loss (:func:`kd_hydra.losses.hierarchical_context_loss`).
``ce_weight * CE + min(epoch / warmup, 1) * reviewkd_weight * HCL`` (epoch 1-based, as mdistiller).
The deepest common number of stages of both networks is used (mdistiller's CIFAR setting: all three).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, hierarchical_context_loss

from .base import DistillMethod, FeatureRequest, FeatureShapes, LossOutput, MethodBatch
from .checks import require_positive_int
from .dkd import warmup_factor, warmup_warnings
from .points import last_aligned, preact_points, stage_points

PRE_LOGIT = "pre_logit"


class ABF(nn.Module):
    """Attention-based fusion of one level: ``(result at out_size, fused map for the next, shallower level)``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            deeper = F.interpolate(deeper, x.shape[2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * attention[:, :1] + deeper * attention[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def _as_map(feature: Tensor) -> Tensor:
    """A pooled ``(N, C)`` feature as a ``(N, C, 1, 1)`` map; maps unchanged."""
    return feature.reshape(*feature.shape[:2], 1, 1) if feature.dim() == 2 else feature


class ReviewKD(DistillMethod):
    """ReviewKD; parts ``ce`` and ``reviewkd`` (the HCL, unweighted, before warm-up). Trainable: ``abfs``
    (deepest level first)."""

    parts = ("ce", "reviewkd")

    def __init__(
        self, *, ce_weight: float, reviewkd_weight: float, warmup: int, student_preact: bool, max_mid_channels: int
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.reviewkd_weight = reviewkd_weight
        self.warmup = warmup
        self.student_preact = student_preact
        self.max_mid_channels = max_mid_channels
        self.abfs: nn.ModuleList | None = None
        self.out_sizes: list[tuple[int, int]] = []
        self.warmup_factor = warmup_factor(1, warmup)

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_positive_int(loss, "warmup", minimum=0)
        require_positive_int(loss, "max_mid_channels")

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        own = preact_points(student_points) if self.student_preact else stage_points(student_points)
        student, teacher = last_aligned(own, preact_points(teacher_points))
        if not student or PRE_LOGIT not in student_points or PRE_LOGIT not in teacher_points:
            kind = "stageN_preact" if self.student_preact else "stageN"
            raise ConfigError(
                "loss.name",
                f"reviewkd reads the student's {kind} and pre_logit points and the teacher's stageN_preact and "
                "pre_logit points; these networks lack them",
            )
        return self.keep_request((*student, PRE_LOGIT), (*teacher, PRE_LOGIT))

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Any, num_classes: int
    ) -> None:
        in_channels, out_channels = self.requested_channels(student_shapes, teacher_shapes)
        self.out_sizes = [tuple(teacher_shapes[p][1:]) or (1, 1) for p in self.request.teacher][::-1]
        mid_channels = min(self.max_mid_channels, in_channels[-1])
        last = len(in_channels) - 1
        abfs = [
            ABF(c_in, mid_channels, c_out, i < last) for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        ]
        self.abfs = nn.ModuleList(abfs[::-1])

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup_factor = warmup_factor(epoch, self.warmup)

    def fit_warnings(self, epochs: int) -> list[str]:
        return warmup_warnings("reviewkd", self.warmup, epochs)

    def review(self, student_features: Mapping[str, Tensor]) -> list[Tensor]:
        """The fused student maps, shallowest first, each at its teacher point's size and channels."""
        if self.abfs is None:
            raise RuntimeError("ReviewKD.setup() must run before the first batch")
        levels = [_as_map(student_features[p]) for p in self.request.student][::-1]
        result, fused = self.abfs[0](levels[0], None, self.out_sizes[0])
        results = [result]
        for level, abf, size in zip(levels[1:], self.abfs[1:], self.out_sizes[1:]):
            result, fused = abf(level, fused, size)
            results.insert(0, result)
        return results

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        teacher = [_as_map(feature) for feature in self.requested(batch.student_features, batch.teacher_features)[1]]
        hcl = hierarchical_context_loss(self.review(batch.student_features), teacher)
        return self.weighted_loss(batch, {"ce": ce, "reviewkd": hcl}, factors={"reviewkd": self.warmup_factor})
