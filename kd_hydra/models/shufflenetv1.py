"""ShuffleNet V1 (Zhang et al., 2018) for CIFAR, as RepDistiller's / mdistiller's ``ShuffleNetv1.py``.

A 1x1 stem to 24 channels (no downsampling), three stages of bottlenecks (grouped 1x1 convs with a
channel shuffle and a 3x3 depthwise conv; the first block of each stage halves the resolution and
concatenates a 3x3 average-pooled shortcut), global average pooling and a linear classifier.
``shufflev1`` is their ``ShuffleV1``: widths 240/480/960, 4/8/4 blocks, 3 groups. Module names are the
reference's, so their checkpoints load as they are; weights keep PyTorch's default initialisation,
as theirs. Each block passes its pre-ReLU output through a parameter-free ``preact`` marker.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .features import block_stage_points
from .layers import ChannelShuffle
from .registry import register_model

STEM_WIDTH = 24
BOTTLENECK_REDUCTION = 4  # a bottleneck's middle width is its output width / 4
DOWNSAMPLING_STRIDE = 2
SHORTCUT_POOL = 3  # 3x3 average pool, stride 2, padding 1, on the downsampling shortcut
SHUFFLEV1_WIDTHS = (240, 480, 960)
SHUFFLEV1_BLOCKS = (4, 8, 4)
SHUFFLEV1_GROUPS = 3


class ShuffleV1Bottleneck(nn.Module):
    """Grouped 1x1-BN-ReLU, shuffle, 3x3 depthwise (``stride``)-BN-ReLU, grouped 1x1-BN; stride 2
    concatenates the pooled input (the block then outputs ``out_channels + in_channels``), stride 1
    adds it; then ReLU. The first grouped conv of the net (on the stem) uses one group."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        middle = out_channels // BOTTLENECK_REDUCTION
        first_groups = 1 if in_channels == STEM_WIDTH else groups
        self.conv1 = nn.Conv2d(in_channels, middle, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(middle)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(middle, middle, 3, stride=stride, padding=1, groups=middle, bias=False)
        self.bn2 = nn.BatchNorm2d(middle)
        self.conv3 = nn.Conv2d(middle, out_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride == DOWNSAMPLING_STRIDE:
            self.shortcut = nn.Sequential(nn.AvgPool2d(SHORTCUT_POOL, stride=DOWNSAMPLING_STRIDE, padding=1))
        self.preact = nn.Identity()  # marker: its output is the block's output before the last ReLU

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(torch.relu(self.bn1(self.conv1(x))))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        joined = torch.cat([out, residual], 1) if self.stride == DOWNSAMPLING_STRIDE else out + residual
        return torch.relu(self.preact(joined))


class ShuffleNetV1(nn.Module):
    """Stem, stages of :class:`ShuffleV1Bottleneck` with output ``widths``, global pool, ``linear``."""

    def __init__(
        self, widths: tuple[int, ...], blocks: tuple[int, ...], groups: int, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU()
        width = STEM_WIDTH
        stages = []
        for stage_width, count in zip(widths, blocks):
            # The first block concatenates its (pooled) input, so it computes only the missing channels.
            stage = [ShuffleV1Bottleneck(width, stage_width - width, DOWNSAMPLING_STRIDE, groups)]
            stage += [ShuffleV1Bottleneck(stage_width, stage_width, 1, groups) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            width = stage_width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(width, num_classes)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path, as the reference ``feats``/``preact_feats``: the stem after its
        ReLU, each stage's output and its last block before the final ReLU, the pooled feature."""
        stages = (self.layer1, self.layer2, self.layer3)
        return block_stage_points("relu", [(f"layer{n}", stage) for n, stage in enumerate(stages, 1)], "avgpool")

    def feature_modules(self) -> tuple[str, ...]:
        """The modules computing the features (the reference's ``get_feat_modules``: stem and layer1..3)."""
        return ("conv1", "bn1", "relu", "layer1", "layer2", "layer3")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflev1")
def shufflev1(num_classes: int, in_channels: int, image_size: int) -> ShuffleNetV1:
    """RepDistiller's ``ShuffleV1`` (widths 240/480/960, 4/8/4 blocks, 3 groups): ~0.95M parameters on 100 classes."""
    return ShuffleNetV1(SHUFFLEV1_WIDTHS, SHUFFLEV1_BLOCKS, SHUFFLEV1_GROUPS, num_classes, in_channels)
