"""MobileNetV2 (Sandler et al., 2018) adapted to 32x32 inputs.

The ImageNet network downsamples 32x; here the stem conv and the first stride-2 stage (24 channels)
use stride 1, so the net downsamples 8x (32 px -> 4x4 before pooling), as in the common CIFAR ports.
Blocks, widths and the width-multiplier rounding follow the paper / torchvision; no dropout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kd_hydra.errors import ConfigError

from .layers import init_conv_bn_
from .registry import register_model

STEM_WIDTH = 32
LAST_WIDTH = 1280
CHANNEL_DIVISOR = 8  # widths are rounded to multiples of this
MAX_ROUNDING_LOSS = 0.9  # rounding may not drop a width below 90% of its target
CLASSIFIER_INIT_STD = 0.01

# (expansion t, output channels c, repeats n, stride of the first block s); the paper's table 2,
# with the 24-channel stage at stride 1 instead of 2 for CIFAR-sized images.
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Feature stages end after these setting rows (0-based: the 24, 32, 96 and 320-channel groups), the
# last block before each resolution change and the last block, as RepDistiller's ``feats``.
FEATURE_STAGE_ROWS = (1, 2, 4, 6)


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), losing at most 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < MAX_ROUNDING_LOSS * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution (same padding, no bias), BatchNorm, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (if t > 1), 3x3 depthwise, linear 1x1 project; residual when stride 1 and shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers += [
            conv_bn_relu6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """CIFAR MobileNetV2 with width multiplier ``width_mult``; maps images of any size to logits."""

    def __init__(self, num_classes: int, in_channels: int, width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError("width_mult", f"must be > 0, got {width_mult}")
        width = make_divisible(STEM_WIDTH * width_mult)
        last_width = make_divisible(LAST_WIDTH * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, width, kernel_size=3)]
        row_ends: list[int] = []  # index in ``features`` of the last block of each settings row
        for expansion, channels, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
            out_width = make_divisible(channels * width_mult)
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                layers.append(InvertedResidual(width, out_width, stride, expansion))
                width = out_width
            row_ends.append(len(layers) - 1)
        self._stage_ends = tuple(row_ends[row] for row in FEATURE_STAGE_ROWS)
        layers.append(conv_bn_relu6(width, last_width, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_width, num_classes)
        init_conv_bn_(self)
        nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.classifier.bias)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path: stem, the ends of the 24/32/96/320-channel groups, pooled feature.

        Blocks end in a linear BatchNorm (no ReLU), so ``stageN_preact`` is ``stageN`` itself, as in
        RepDistiller's MobileNetV2, whose ``preact_feats`` equal its ``feats``.
        """
        points = {"stem": "features.0"}
        for number, end in enumerate(self._stage_ends, 1):
            points[f"stage{number}_preact"] = points[f"stage{number}"] = f"features.{end}"
        return {**points, "pre_logit": "pool"}

    def feature_modules(self) -> tuple[str, ...]:
        """The stem and the inverted-residual blocks, not the final 1x1 conv (as RepDistiller's MobileNetV2
        ``get_feat_modules`` leaves its ``conv2`` out)."""
        return tuple(f"features.{index}" for index in range(len(self.features) - 1))

    def preact_batchnorms(self) -> dict[str, str]:
        """``stageN_preact`` -> the projection BatchNorm ending the stage's last block."""
        return {
            f"stage{number}_preact": f"features.{end}.body.{len(self.features[end].body) - 1}"
            for number, end in enumerate(self._stage_ends, 1)
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int, image_size: int, width_mult: float = 1.0) -> MobileNetV2Cifar:
    """CIFAR MobileNetV2 (8x downsampling): ~2.24M parameters on 10 classes at ``width_mult=1.0``."""
    return MobileNetV2Cifar(num_classes, in_channels, width_mult)
