"""Factor transfer (Kim et al., NeurIPS 2018) as RepDistiller trains it (``--distill factor``).

On the last ``stageN`` output of both networks: a paraphraser (conv autoencoder, LeakyReLU 0.1, no BatchNorm,
``rate`` x the teacher's channels in the middle) is trained alone in an initialization stage (``init_epochs``)
to reconstruct the teacher's map (MSE); then it is frozen and the distillation stage optimises
``ce_weight * CE + ft_weight * FT(translator(f_s), paraphraser.encode(f_t))``, the translator (conv encoder with
BatchNorm) trained with the student. FT is :func:`kd_hydra.losses.factor_transfer_loss` (RepDistiller's form).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy, factor_transfer_loss

from .base import DistillMethod, FeatureRequest, FeatureShapes, InitStage, LossOutput, MethodBatch
from .checks import require_finite, require_init_stage
from .points import stage_points

#: Negative slope of the paraphraser's and translator's LeakyReLUs (RepDistiller).
LEAKY_SLOPE = 0.1


def _conv_stack(channels: Sequence[int], batch_norm: bool, transposed: bool = False) -> nn.Sequential:
    """3x3 stride-1 (transposed) convs between consecutive ``channels``, each + [BatchNorm] + LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's paraphraser of a ``C``-channel teacher map: encoder C -> C -> k -> k, decoder k -> k -> C -> C."""

    def __init__(self, channels: int, rate: float) -> None:
        super().__init__()
        factor = int(channels * rate)
        self.encoder = _conv_stack([channels, channels, factor, factor], batch_norm=False)
        self.decoder = _conv_stack([factor, factor, channels, channels], batch_norm=False, transposed=True)

    def forward(self, feature: Tensor) -> Tensor:
        """The reconstruction of ``feature`` (what the initialization stage fits)."""
        return self.decoder(self.encoder(feature))


def translator(student_channels: int, teacher_channels: int, rate: float) -> nn.Sequential:
    """FT's translator: convs C_s -> C_s -> k -> k with BatchNorm, k = int(rate * C_t)."""
    factor = int(teacher_channels * rate)
    return _conv_stack([student_channels, student_channels, factor, factor], batch_norm=True)


class FT(DistillMethod):
    """Factor transfer; parts ``ce`` and ``ft`` (unweighted). Trainable: ``translator``; ``paraphraser`` only
    in the initialization stage (frozen after it)."""

    parts = ("ce", "ft")

    def __init__(
        self,
        *,
        ce_weight: float,
        ft_weight: float,
        p1: float,
        p2: float,
        rate: float,
        init_epochs: int,
        init_lr: float | None,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.ft_weight = ft_weight
        self.p1 = p1
        self.p2 = p2
        self.rate = rate
        self.init_epochs = init_epochs
        self.init_lr = init_lr
        self.paraphraser: Paraphraser | None = None
        self.translator: nn.Sequential | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_finite(loss, "p1", minimum=0.0, strict_minimum=True)
        require_finite(loss, "p2", minimum=0.0, strict_minimum=True)
        require_finite(loss, "rate", minimum=0.0, maximum=1.0, strict_minimum=True)
        require_init_stage(loss)

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        student, teacher = stage_points(student_points), stage_points(teacher_points)
        if not student or not teacher:
            raise ConfigError("loss.name", "ft reads the last stage output (stageN) of both networks")
        return self.keep_request(student[-1:], teacher[-1:])

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Any, num_classes: int
    ) -> None:
        (student_channels,), (teacher_channels,) = self.requested_channels(student_shapes, teacher_shapes)
        if int(teacher_channels * self.rate) < 1:
            raise ConfigError("loss.rate", f"leaves no factor channel of the teacher's {teacher_channels}")
        self.paraphraser = Paraphraser(teacher_channels, self.rate).requires_grad_(False)
        self.translator = translator(student_channels, teacher_channels, self.rate)

    def init_stage(self, student: nn.Module) -> InitStage | None:
        """RepDistiller's: the paraphraser alone, reconstructing the teacher's map (the student is not trained)."""
        if self.paraphraser is None:
            raise RuntimeError("FT.setup() must run before the initialization stage")
        return InitStage(self.init_epochs, self.init_lr, (self.paraphraser,), self._reconstruction_loss)

    def _reconstruction_loss(self, batch: MethodBatch) -> Tensor:
        teacher = batch.teacher_features[self.request.teacher[0]].detach()
        return F.mse_loss(self.paraphraser(teacher).float(), teacher.float())

    def forward(self, batch: MethodBatch) -> LossOutput:
        if self.paraphraser is None or self.translator is None:
            raise RuntimeError("FT.setup() must run before the first batch")
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        student_factor = self.translator(student)
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher)
        ft = factor_transfer_loss(student_factor, teacher_factor, self.p1, self.p2)
        return self.weighted_loss(batch, {"ce": ce, "ft": ft})
