"""The CIFAR networks of RepDistiller (``models/*.py``) and mdistiller (``mdistiller/models/cifar``),
re-stated for the tests with their module names, so that their state dict has exactly the keys of a
published checkpoint, and with their forward, which returns what their ``feats``, ``preact_feats``
and ``pooled_feat`` hold (both suites define the same tensors).

Every model returns a :class:`ReferenceOutput`. ``feats[0]`` is the stem feature, ``feats[i]`` the
output of stage ``i``; ``preact_feats[i]`` (i >= 1) the same stage before its last ReLU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceOutput(NamedTuple):
    logits: Tensor
    feats: list[Tensor]
    preact_feats: list[Tensor]
    pooled_feat: Tensor


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, bias=False)


def _run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Blocks of a stage; the last one (``is_last``) also returns its pre-activation."""
    for block in stage[:-1]:
        x = block(x)
    return stage[-1](x, with_preact=True)


# --- models/resnet.py: resnet8 ... resnet110, resnet8x4, resnet32x4 ----------------------------------


class RefResNetBlock(nn.Module):
    """resnet.py BasicBlock: conv-bn-relu-conv-bn, ``downsample`` shortcut, relu after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor, with_preact: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + residual
        out = F.relu(preact)
        return (out, preact) if with_preact else out


class RefCifarResNet(nn.Module):
    """resnet.py ResNet(depth, num_filters, 'basicblock'): conv1/bn1/relu, layer1..3, AvgPool2d(8), fc."""

    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        blocks = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(3, filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(filters[1], blocks, 1)
        self.layer2 = self._layer(filters[2], blocks, 2)
        self.layer3 = self._layer(filters[3], blocks, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(filters[3], num_classes)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [RefResNetBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [RefResNetBlock(planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.layer1[-1].bn2, self.layer2[-1].bn2, self.layer3[-1].bn2]

    def forward(self, x: Tensor) -> ReferenceOutput:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = self.avgpool(f3).reshape(x.size(0), -1)
        return ReferenceOutput(self.fc(pooled), [f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


# --- resnetv2.py: ResNet18, ResNet50 ----------------------------------------------------------------


class RefResNetV2Block(nn.Module):
    """resnetv2.py BasicBlock: the shortcut is an (empty or conv-bn) Sequential called ``shortcut``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _v2_shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor, with_preact: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        out = F.relu(preact)
        return (out, preact) if with_preact else out


class RefResNetV2Bottleneck(nn.Module):
    """resnetv2.py Bottleneck: 1x1, 3x3 (stride), 1x1 (x4) convs with BN, ``shortcut``, relu after the sum."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = _v2_shortcut(in_planes, 4 * planes, stride)

    def forward(self, x: Tensor, with_preact: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.relu(preact)
        return (out, preact) if with_preact else out


def _v2_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class RefResNetV2(nn.Module):
    """resnetv2.py ResNet: 64-channel conv1/bn1, layer1..4 (64..512 planes), adaptive pool, ``linear``."""

    def __init__(
        self, block: type[RefResNetV2Block | RefResNetV2Bottleneck], blocks: tuple[int, ...], num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride, count in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks):
            stage = []
            for index in range(count):
                stage.append(block(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes * block.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def get_bn_before_relu(self) -> list[nn.Module]:
        last = "bn3" if isinstance(self.layer1[0], RefResNetV2Bottleneck) else "bn2"
        return [getattr(stage[-1], last) for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def forward(self, x: Tensor) -> ReferenceOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        feats, preacts, out = [f0], [f0], f0
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out, preact = _run_stage(stage, out)
            feats.append(out)
            preacts.append(preact)
        pooled = self.avgpool(out).reshape(x.size(0), -1)
        return ReferenceOutput(self.linear(pooled), feats, preacts, pooled)


# --- wrn.py: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2 ---------------------------------------------------


class RefWRNBlock(nn.Module):
    """wrn.py BasicBlock: pre-activation; when channels change, the 1x1 ``convShortcut`` reads the
    activated input and so does conv1."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_planes, out_planes)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class RefNetworkBlock(nn.Module):
    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                RefWRNBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class RefWideResNet(nn.Module):
    """wrn.py WideResNet: conv1, block1..3, bn1 + relu, avg_pool2d(8), fc. Its ``preact_feats`` are
    the raw stage outputs after the BatchNorm that reads them next (block2/3's first bn1, bn1)."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = RefNetworkBlock(blocks, channels[0], channels[1], 1)
        self.block2 = RefNetworkBlock(blocks, channels[1], channels[2], 2)
        self.block3 = RefNetworkBlock(blocks, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.channels = channels[3]

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor) -> ReferenceOutput:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.avg_pool2d(self.relu(self.bn1(f3)), 8).reshape(-1, self.channels)
        preacts = [f0, self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)]
        return ReferenceOutput(self.fc(pooled), [f0, f1, f2, f3], preacts, pooled)


# --- vgg.py: vgg8_bn ... vgg19_bn ---------------------------------------------------------------------

VGG_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class RefVGG(nn.Module):
    """vgg.py VGG(cfg, batch_norm=True): block0..4 (conv-BN-ReLU..., the last ReLU dropped), max-pools
    pool0..3 (pool3 only for 64 px inputs), adaptive ``pool4``, ``classifier``."""

    def __init__(self, config: list[list[int]], num_classes: int) -> None:
        super().__init__()
        in_channels = 3
        for index, widths in enumerate(config):
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                in_channels = width
            setattr(self, f"block{index}", nn.Sequential(*layers[:-1]))
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x: Tensor) -> ReferenceOutput:
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        f4_pre = self.block4(self.pool3(f3) if height == 64 else f3)
        f4 = F.relu(f4_pre)
        pooled = self.pool4(f4).reshape(x.size(0), -1)
        feats = [f0, f1, f2, f3, f4]
        return ReferenceOutput(self.classifier(pooled), feats, [f0, f1_pre, f2_pre, f3_pre, f4_pre], pooled)


# --- mobilenetv2.py: mobile_half = mobilenetv2_T_w(6, 0.5) -----------------------------------------


class RefInvertedResidual(nn.Module):
    """mobilenetv2.py InvertedResidual: pw (always, even at t=1) - dw - pw-linear in ``conv``."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    """mobilenetv2.py MobileNetV2(T, width_mult): stride-2 conv1, blocks[0..6], conv2 1x1 to 1280,
    AvgPool2d(input_size // 16, ceil_mode=True), classifier = Sequential(Linear). ``preact_feats``
    equal ``feats`` (RepDistiller returns the same list)."""

    SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
                (None, 160, 3, 2), (None, 320, 1, 1))  # fmt: skip

    def __init__(self, expansion: int, width_mult: float, num_classes: int, input_size: int = 32) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTINGS:
            out_channels = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(RefInvertedResidual(channels, out_channels, stride, expansion if t is None else t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, last, 1, 1, 0, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.blocks[index][-1].conv[-1] for index in (1, 2, 4, 6)]

    def forward(self, x: Tensor) -> ReferenceOutput:
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        pooled = self.avgpool(self.conv2(f4)).reshape(x.size(0), -1)
        feats = [f0, f1, f2, f3, f4]
        return ReferenceOutput(self.classifier(pooled), feats, list(feats), pooled)


# --- ShuffleNetv1.py: ShuffleV1 -------------------------------------------------------------------


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.size()
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class RefShuffleV1Block(nn.Module):
    """ShuffleNetv1.py Bottleneck: grouped 1x1 (g=1 on the 24-channel stem), shuffle, 3x3 depthwise,
    grouped 1x1; stride 2 concatenates a 3x3 average-pooled shortcut, else adds the input; then ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = int(out_planes / 4)
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor, with_preact: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        out = _channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        preact = torch.cat([out, residual], 1) if self.stride == 2 else out + residual
        out = F.relu(preact)
        return (out, preact) if with_preact else out


class RefShuffleV1(nn.Module):
    """ShuffleNetv1.py ShuffleV1: 1x1 conv1/bn1 to 24, layer1..3 (240/480/960, 4/8/4 blocks, g=3),
    avg_pool2d(4), ``linear``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes, layers = 24, []
        for out_planes, count in ((240, 4), (480, 8), (960, 4)):
            blocks = []
            for index in range(count):
                cat_planes = in_planes if index == 0 else 0
                blocks.append(RefShuffleV1Block(in_planes, out_planes - cat_planes, 2 if index == 0 else 1, 3))
                in_planes = out_planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(960, num_classes)

    def forward(self, x: Tensor) -> ReferenceOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = F.avg_pool2d(f3, 4).reshape(x.size(0), -1)
        return ReferenceOutput(self.linear(pooled), [f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


# --- ShuffleNetv2.py: ShuffleV2 (net_size 1) -------------------------------------------------------


class RefShuffleV2Block(nn.Module):
    """ShuffleNetv2.py BasicBlock: split in halves; the second goes 1x1-BN-ReLU, 3x3 dw-BN, 1x1-BN
    (= preact), ReLU; concatenated with the first half, then shuffled (2 groups). Its preact is the
    concatenation with the pre-ReLU half, not shuffled."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        half = in_channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor, with_preact: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        split = int(x.size(1) * 0.5)
        x1, x2 = x[:, :split], x[:, split:]
        out = F.relu(self.bn1(self.conv1(x2)))
        preact = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        out = _channel_shuffle(torch.cat([x1, F.relu(preact)], 1), 2)
        return (out, torch.cat([x1, preact], 1)) if with_preact else out


class RefShuffleV2Down(nn.Module):
    """ShuffleNetv2.py DownBlock: left 3x3 dw s2-BN, 1x1-BN-ReLU; right 1x1-BN-ReLU, 3x3 dw s2-BN,
    1x1-BN-ReLU; concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _channel_shuffle(torch.cat([left, right], 1), 2)


class RefShuffleV2(nn.Module):
    """ShuffleNetv2.py ShuffleNetV2(net_size=1): 1x1 conv1/bn1 to 24, layer1..3 (116/232/464; a
    DownBlock then 3/7/3 blocks), 1x1 conv2/bn2 to 1024 + ReLU, avg_pool2d(4), ``linear``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels, layers = 24, []
        for out_channels, count in ((116, 3), (232, 7), (464, 3)):
            blocks = [RefShuffleV2Down(in_channels, out_channels)]
            blocks += [RefShuffleV2Block(out_channels) for _ in range(count)]
            layers.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(464, 1024, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(1024)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> ReferenceOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(f3))), 4).reshape(x.size(0), -1)
        return ReferenceOutput(self.linear(pooled), [f0, f1, f2, f3], [f0, f1_pre, f2_pre, f3_pre], pooled)


THIN = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)

REFERENCE_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    **{
        f"resnet{depth}": (lambda classes, depth=depth: RefCifarResNet(depth, THIN, classes))
        for depth in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": lambda classes: RefCifarResNet(8, WIDE, classes),
    "resnet32x4": lambda classes: RefCifarResNet(32, WIDE, classes),
    "resnet18": lambda classes: RefResNetV2(RefResNetV2Block, (2, 2, 2, 2), classes),
    "resnet50_cifar": lambda classes: RefResNetV2(RefResNetV2Bottleneck, (3, 4, 6, 3), classes),
    **{
        f"wrn_{depth}_{width}": (lambda classes, depth=depth, width=width: RefWideResNet(depth, width, classes))
        for depth in (16, 40)
        for width in (1, 2)
    },
    **{name: (lambda classes, config=config: RefVGG(config, classes)) for name, config in VGG_CONFIGS.items()},
    "mobile_half": lambda classes: RefMobileNetV2(6, 0.5, classes),
    "shufflev1": RefShuffleV1,
    "shufflev2": RefShuffleV2,
}
"""kd-hydra zoo arch -> ``builder(num_classes)`` of the reference network it re-implements."""

REFERENCE_FILES = {
    **{name: "models/resnet.py" for name in REFERENCE_BUILDERS if name.startswith("resnet") and "_" not in name},
    "resnet18": "models/resnetv2.py",
    "resnet50_cifar": "models/resnetv2.py",
    **{name: "models/wrn.py" for name in REFERENCE_BUILDERS if name.startswith("wrn")},
    **{name: "models/vgg.py" for name in VGG_CONFIGS},
    "mobile_half": "models/mobilenetv2.py",
    "shufflev1": "models/ShuffleNetv1.py",
    "shufflev2": "models/ShuffleNetv2.py",
}
"""kd-hydra zoo arch -> RepDistiller's model file (mdistiller's ``mdistiller/models/cifar`` copy)."""


def randomize_(model: nn.Module, generator: torch.Generator) -> None:
    """Random weights (fan-in scaled, so activations stay O(1)) and random BatchNorm statistics."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=generator)))
