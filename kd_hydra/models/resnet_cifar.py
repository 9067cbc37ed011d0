"""CIFAR ResNets (He et al., 2016) with the definitions used by CRD / RepDistiller.

A 3x3 stride-1 stem, then stages of basic (or bottleneck) blocks; the first stage keeps the
resolution and each later one halves it. Shortcuts are identity, or 1x1 conv + BatchNorm where the
shape changes. Adaptive average pooling makes the head independent of the image size. Each block
passes its pre-activation sum through a parameter-free ``preact`` marker (an ``nn.Identity``) so the
``stageN_preact`` feature points can hook it; the state dict is unchanged by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from .features import block_stage_points
from .layers import conv1x1, conv3x3, init_conv_bn_
from .registry import register_model, register_variants

DOWNSAMPLING_STRIDE = 2
# A depth-(6n+2) net has 3 stages of n two-conv blocks, plus the stem conv and the classifier.
THIN_STAGE_COUNT = 3
CONVS_PER_BLOCK = 2
NON_BLOCK_LAYERS = 2

THIN_WIDTHS = (16, 16, 32, 64)  # stem, stages: resnet20 ... resnet110
WIDE_WIDTHS = (32, 64, 128, 256)  # stem, stages: resnet8x4, resnet32x4
RESNET18_WIDTHS = (64, 64, 128, 256, 512)
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET50_BLOCKS = (3, 4, 6, 3)  # RepDistiller's resnetv2.py ResNet50: bottlenecks, stage widths x4


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or 1x1 conv + BatchNorm where the stride or the width changes."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU; ``stride`` 2 halves the resolution."""

    expansion: ClassVar[int] = 1
    last_batchnorm: ClassVar[str] = "bn2"

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, planes, stride)
        self.preact = nn.Identity()  # marker: its output is the sum before the last ReLU

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(self.preact(out + self.shortcut(x)))  # not in place: keeps the marked sum


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (``stride``)-BN-ReLU, 1x1 (x4 width)-BN plus shortcut, then ReLU."""

    expansion: ClassVar[int] = 4
    last_batchnorm: ClassVar[str] = "bn3"

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.preact = nn.Identity()  # marker: its output is the sum before the last ReLU

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(self.preact(out + self.shortcut(x)))  # not in place: keeps the marked sum


class CifarResNet(nn.Module):
    """Stem conv, ``len(stage_widths)`` stages of ``block``s, global average pool, linear logits."""

    def __init__(
        self,
        stem_width: int,
        stage_widths: Sequence[int],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        in_channels: int,
        block: type[BasicBlock | Bottleneck] = BasicBlock,
    ) -> None:
        super().__init__()
        if len(stage_widths) != len(blocks_per_stage):
            raise ValueError("stage_widths and blocks_per_stage must have the same length")
        self.stem = nn.Sequential(conv3x3(in_channels, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        width = stem_width
        for index, (stage_width, block_count) in enumerate(zip(stage_widths, blocks_per_stage)):
            stride = 1 if index == 0 else DOWNSAMPLING_STRIDE
            blocks = [block(width, stage_width, stride)]
            width = stage_width * block.expansion
            blocks += [block(width, stage_width) for _ in range(block_count - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        init_conv_bn_(self)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path, as RepDistiller's ``feats``/``preact_feats``: post-ReLU stem
        and stage outputs, each stage's last pre-ReLU sum (``stageN_preact``), the pooled feature."""
        return block_stage_points("stem", [(f"stages.{i}", stage) for i, stage in enumerate(self.stages)], "pool")

    def feature_modules(self) -> tuple[str, ...]:
        """The modules computing the features (RepDistiller's ``get_feat_modules``: conv1, bn1, relu, layer1..N)."""
        return ("stem", "stages")

    def preact_batchnorms(self) -> dict[str, str]:
        """``stageN_preact`` -> the last BatchNorm of the stage's last block (added to the shortcut before the ReLU)."""
        return {
            f"stage{index + 1}_preact": f"stages.{index}.{len(stage) - 1}.{stage[-1].last_batchnorm}"
            for index, stage in enumerate(self.stages)
        }

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet_6n_plus_2(
    depth: int, widths: Sequence[int], num_classes: int, in_channels: int, image_size: int
) -> CifarResNet:
    """Three-stage ResNet of ``depth = 6n + 2`` layers: n basic blocks per stage."""
    convs_in_blocks = depth - NON_BLOCK_LAYERS
    blocks_per_stage, remainder = divmod(convs_in_blocks, THIN_STAGE_COUNT * CONVS_PER_BLOCK)
    if remainder or blocks_per_stage < 1:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    stem_width, *stage_widths = widths
    return CifarResNet(stem_width, stage_widths, [blocks_per_stage] * THIN_STAGE_COUNT, num_classes, in_channels)


#: The 6n+2 CIFAR ResNets: name -> (depth, widths). Parameters (100 classes): resnet8 ~0.08M, resnet14 ~0.18M,
#: resnet20 ~0.27M, resnet32 ~0.47M, resnet44 ~0.67M, resnet56 ~0.86M, resnet110 ~1.7M; RepDistiller's
#: resnet8x4 ~1.2M and resnet32x4 ~7.4M (stem 32, widths 64/128/256).
RESNET_6N_PLUS_2 = {
    "resnet8": (8, THIN_WIDTHS),
    "resnet14": (14, THIN_WIDTHS),
    "resnet20": (20, THIN_WIDTHS),
    "resnet32": (32, THIN_WIDTHS),
    "resnet44": (44, THIN_WIDTHS),
    "resnet56": (56, THIN_WIDTHS),
    "resnet110": (110, THIN_WIDTHS),
    "resnet8x4": (8, WIDE_WIDTHS),
    "resnet32x4": (32, WIDE_WIDTHS),
}
register_variants(_resnet_6n_plus_2, RESNET_6N_PLUS_2)


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    """CIFAR ResNet-18: stride-1 3x3 stem, no max-pool, 2 blocks in each of 4 stages: ~11.2M parameters."""
    stem_width, *stage_widths = RESNET18_WIDTHS
    return CifarResNet(stem_width, stage_widths, RESNET18_BLOCKS, num_classes, in_channels)


@register_model("resnet50_cifar")
def resnet50_cifar(num_classes: int, in_channels: int, image_size: int) -> CifarResNet:
    """RepDistiller's CIFAR ResNet50 (resnetv2.py): ResNet18's stem, 3/4/6/3 bottlenecks: ~23.7M parameters."""
    stem_width, *stage_widths = RESNET18_WIDTHS
    return CifarResNet(stem_width, stage_widths, RESNET50_BLOCKS, num_classes, in_channels, Bottleneck)
