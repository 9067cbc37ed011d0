"""``mobile_half``: the MobileNetV2 of RepDistiller / mdistiller (``mobilenetv2.py``, from "Knowledge
Distillation via Route Constrained Optimization"), expansion 6 and width 0.5.

Unlike kd-hydra's ``mobilenetv2`` it has a stride-2 stem (16x downsampling), a 1x1 expansion conv in
every block (also at t=1), ReLU (not ReLU6) and ``int()``-truncated widths; the last conv keeps 1280
channels. Module names are the reference's (``conv1``, ``blocks.i.j.conv``, ``conv2``, ``classifier.0``)
so their checkpoints load as they are. Its global pool equals their ``AvgPool2d(input_size // 16,
ceil_mode=True)`` at the 32 and 64 px they support, and also runs on other sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import init_conv_bn_
from .registry import register_model

EXPANSION = 6
WIDTH_MULT = 0.5
STEM_WIDTH = 32
STEM_STRIDE = 2
LAST_WIDTH = 1280  # kept at width multipliers <= 1
CLASSIFIER_INIT_STD = 0.01

# (expansion, output channels, repeats, stride of the first block); None is the net's expansion.
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
FEATURE_BLOCK_GROUPS = (1, 2, 4, 6)  # stages end after these block groups, as the reference's feats


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Convolution (same padding, no bias), BatchNorm, ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, linear 1x1 project-BN (``conv``); residual when the
    stride is 1 and the widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn_relu(in_channels, hidden, kernel_size=1),
            nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Half(nn.Module):
    """RepDistiller's MobileNetV2 at ``expansion`` and ``width_mult``, mapping images to logits."""

    def __init__(
        self, num_classes: int, in_channels: int, expansion: int = EXPANSION, width_mult: float = WIDTH_MULT
    ) -> None:
        super().__init__()
        width = int(STEM_WIDTH * width_mult)
        self.conv1 = conv_bn_relu(in_channels, width, kernel_size=3, stride=STEM_STRIDE)
        self.blocks = nn.ModuleList()
        for block_expansion, channels, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
            out_width = int(channels * width_mult)
            group = []
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                group.append(InvertedResidual(width, out_width, stride, block_expansion or expansion))
                width = out_width
            self.blocks.append(nn.Sequential(*group))
        last_width = int(LAST_WIDTH * width_mult) if width_mult > 1.0 else LAST_WIDTH
        self.conv2 = conv_bn_relu(width, last_width, kernel_size=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_width, num_classes))
        init_conv_bn_(self)
        nn.init.normal_(self.classifier[0].weight, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.classifier[0].bias)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path: the stem, the ends of block groups 1, 2, 4 and 6 (24, 32, 96
        and 320 channels at width 1), the pooled feature. Blocks end in a linear BatchNorm, so
        ``stageN_preact`` is ``stageN``, as the reference returns the same list for ``preact``."""
        points = {"stem": "conv1"}
        for number, group in enumerate(FEATURE_BLOCK_GROUPS, 1):
            points[f"stage{number}_preact"] = points[f"stage{number}"] = f"blocks.{group}"
        return {**points, "pre_logit": "avgpool"}

    def feature_modules(self) -> tuple[str, ...]:
        """The modules computing the features, as the reference's ``get_feat_modules``: not the final 1x1 conv."""
        return ("conv1", "blocks")

    def preact_batchnorms(self) -> dict[str, str]:
        """``stageN_preact`` -> the projection BatchNorm of the group's last block, as the reference's."""
        points = {}
        for number, group in enumerate(FEATURE_BLOCK_GROUPS, 1):
            last = len(self.blocks[group]) - 1
            points[f"stage{number}_preact"] = f"blocks.{group}.{last}.conv.{len(self.blocks[group][last].conv) - 1}"
        return points

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("mobile_half")
def mobile_half(num_classes: int, in_channels: int, image_size: int) -> MobileNetV2Half:
    """RepDistiller's ``mobile_half`` (MobileNetV2, expansion 6, width 0.5): ~0.81M parameters on 100 classes."""
    return MobileNetV2Half(num_classes, in_channels)
