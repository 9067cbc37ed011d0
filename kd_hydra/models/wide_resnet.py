"""Wide ResNets (Zagoruyko & Komodakis, 2016) as used by CRD / RepDistiller.

``wrn_d_k``: a 3x3 stem of 16 channels, then 3 stages of ``(d - 4) / 6`` pre-activation blocks of
widths 16k, 32k, 64k (the last two halve the resolution), a final BN-ReLU, global average pool and
a linear classifier. The ReLUs do not work in place, so that the BatchNorm outputs they read stay
recordable as the ``stageN_preact`` feature points.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kd_hydra.errors import ConfigError

from .layers import conv1x1, conv3x3, init_conv_bn_
from .registry import register_variants

STEM_WIDTH = 16
BASE_STAGE_WIDTHS = (16, 32, 64)  # multiplied by the widen factor k
STAGE_STRIDES = (1, 2, 2)
# depth = 6n + 4: 3 stages of n two-conv blocks, plus the stem, the classifier and the 2 projection convs.
CONVS_PER_STAGE_BLOCK = 6
NON_BLOCK_LAYERS = 4


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut, which is identity or a 1x1 conv.

    When the shape changes the projection shortcut reads the pre-activated input, as in the paper's code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()  # not in place: bn1's output is a feature point of the previous stage
        self.projection: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(activated)
        out = self.relu(self.bn2(self.conv1(activated)))
        out = self.conv2(self.dropout(out))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` classifier mapping images of any size to logits."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        blocks_per_stage, remainder = divmod(depth - NON_BLOCK_LAYERS, CONVS_PER_STAGE_BLOCK)
        if remainder or blocks_per_stage < 1:
            raise ValueError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {dropout}")
        self.stem = conv3x3(in_channels, STEM_WIDTH)
        stages: list[nn.Module] = []
        width = STEM_WIDTH
        for base_width, stride in zip(BASE_STAGE_WIDTHS, STAGE_STRIDES):
            stage_width = base_width * widen_factor
            blocks = [PreActBlock(width, stage_width, stride, dropout)]
            blocks += [PreActBlock(stage_width, stage_width, 1, dropout) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            width = stage_width
        self.stages = nn.Sequential(*stages)
        self.final_activation = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        init_conv_bn_(self)
        nn.init.zeros_(self.fc.bias)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path, as RepDistiller's/mdistiller's ``feats`` and ``preact_feats``:
        the stem conv, the raw output of each stage (the last one before the final BN-ReLU), the pooled
        feature; ``stageN_preact`` is that output after the BatchNorm that follows it (the next
        stage's first ``bn1``, or the final BatchNorm), before its ReLU."""
        points = {"stem": "stem"}
        for index in range(len(self.stages)):
            is_last = index == len(self.stages) - 1
            points[f"stage{index + 1}_preact"] = "final_activation.0" if is_last else f"stages.{index + 1}.0.bn1"
            points[f"stage{index + 1}"] = f"stages.{index}"
        return {**points, "pre_logit": "pool"}

    def feature_modules(self) -> tuple[str, ...]:
        """The modules computing the features, as RepDistiller's ``get_feat_modules`` (conv1, block1..3): not the
        final BN-ReLU, so an initialization stage leaves the BatchNorm of ``stage3_preact`` in eval mode, untrained."""
        return ("stem", "stages")

    def preact_batchnorms(self) -> dict[str, str]:
        """``stageN_preact`` -> the BatchNorm that computes it (the point is that BatchNorm's output)."""
        return {name: path for name, path in self.feature_points().items() if name.endswith("_preact")}

    def forward(self, x: Tensor) -> Tensor:
        x = self.final_activation(self.stages(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _wide_resnet(
    depth: int, widen_factor: int, num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0
) -> WideResNet:
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout)


#: WRN-depth-k: name -> (depth, widen factor). Blocks per stage (depth - 4) / 6, widths 16k/32k/64k; parameters on
#: 100 classes: wrn_16_1 ~0.18M, wrn_16_2 ~0.70M, wrn_40_1 ~0.57M, wrn_40_2 ~2.25M.
WRN_VARIANTS = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
register_variants(_wide_resnet, WRN_VARIANTS)
