"""ShuffleNet V2 (Ma et al., 2018) for CIFAR, as RepDistiller's / mdistiller's ``ShuffleNetv2.py``.

A 1x1 stem to 24 channels (no downsampling), three stages each of a downsampling block (two
branches, concatenated and shuffled) and split blocks (half the channels pass, the other half goes
1x1-3x3 depthwise-1x1; concatenated and shuffled), a 1x1 conv to 1024 channels with BN-ReLU, global
average pooling and a linear classifier. ``shufflev2`` is their ``ShuffleV2`` (net size 1: widths
116/232/464, 3/7/3 split blocks). Module names are the reference's, so their checkpoints load as they
are; weights keep PyTorch's default initialisation, as theirs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .features import block_stage_points
from .layers import ChannelShuffle
from .registry import register_model

STEM_WIDTH = 24
SHUFFLE_GROUPS = 2
SPLIT_RATIO = 0.5
DOWNSAMPLING_STRIDE = 2
SHUFFLEV2_WIDTHS = (116, 232, 464)
SHUFFLEV2_BLOCKS = (3, 7, 3)
SHUFFLEV2_HEAD_WIDTH = 1024


def _depthwise3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class ShuffleV2Block(nn.Module):
    """Split: the first half passes, the second goes 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN, ReLU;
    concatenated and shuffled. With ``records_preact`` (the last block of a stage) the concatenation
    with the branch before its ReLU, unshuffled (the reference's ``preact``), goes through the
    parameter-free ``preact`` marker."""

    def __init__(self, channels: int, records_preact: bool = False) -> None:
        super().__init__()
        half = int(channels * SPLIT_RATIO)
        self.records_preact = records_preact
        self.conv1 = _pointwise(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _depthwise3x3(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _pointwise(half, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(SHUFFLE_GROUPS)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        split = int(x.shape[1] * SPLIT_RATIO)
        passed, branch = x[:, :split], x[:, split:]
        branch = torch.relu(self.bn1(self.conv1(branch)))
        branch = self.bn3(self.conv3(self.bn2(self.conv2(branch))))
        if self.records_preact:
            self.preact(torch.cat([passed, branch], 1))
        return self.shuffle(torch.cat([passed, torch.relu(branch)], 1))


class ShuffleV2DownBlock(nn.Module):
    """Two stride-2 branches, each to half the output width: 3x3 depthwise-BN, 1x1-BN-ReLU; and
    1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU; concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = _depthwise3x3(in_channels, DOWNSAMPLING_STRIDE)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = _pointwise(in_channels, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _pointwise(in_channels, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = _depthwise3x3(half, DOWNSAMPLING_STRIDE)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = _pointwise(half, half)
        self.bn5 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(SHUFFLE_GROUPS)

    def forward(self, x: Tensor) -> Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """Stem, stages (a down block, then split blocks) of ``widths``, 1x1 head conv, pool, ``linear``."""

    def __init__(
        self, widths: tuple[int, ...], blocks: tuple[int, ...], head_width: int, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.conv1 = _pointwise(in_channels, STEM_WIDTH)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU()
        width = STEM_WIDTH
        stages = []
        for stage_width, count in zip(widths, blocks):
            stage = [ShuffleV2DownBlock(width, stage_width)]
            stage += [ShuffleV2Block(stage_width, records_preact=index == count - 1) for index in range(count)]
            stages.append(nn.Sequential(*stage))
            width = stage_width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _pointwise(width, head_width)
        self.bn2 = nn.BatchNorm2d(head_width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(head_width, num_classes)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path, as the reference ``feats``/``preact_feats``: the stem after its
        ReLU, each stage's (shuffled) output and its last block's unshuffled pre-ReLU concatenation,
        the pooled feature of the head conv."""
        stages = (self.layer1, self.layer2, self.layer3)
        return block_stage_points("relu", [(f"layer{n}", stage) for n, stage in enumerate(stages, 1)], "avgpool")

    def feature_modules(self) -> tuple[str, ...]:
        """The modules computing the features, as the reference's ``get_feat_modules``: stem and layer1..3, not the
        head conv."""
        return ("conv1", "bn1", "relu", "layer1", "layer2", "layer3")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflev2")
def shufflev2(num_classes: int, in_channels: int, image_size: int) -> ShuffleNetV2:
    """RepDistiller's ``ShuffleV2`` (net size 1: widths 116/232/464, 3/7/3 blocks): ~1.36M parameters on 100 classes."""
    return ShuffleNetV2(SHUFFLEV2_WIDTHS, SHUFFLEV2_BLOCKS, SHUFFLEV2_HEAD_WIDTH, num_classes, in_channels)
