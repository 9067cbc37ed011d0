"""CIFAR VGGs with BatchNorm (Simonyan & Zisserman, 2015), as RepDistiller's / mdistiller's ``vgg.py``.

Five blocks of 3x3 conv-BN-ReLU layers (the last ReLU of each block is applied outside it, so the
block output is the pre-activation), 2x2 max-pools between the first four blocks (the one before
the last block only for 64 px inputs), global average pooling and one linear layer on 512 features.
Module names are the reference's (``block0..4``, ``pool0..4``, ``classifier``), so their checkpoints
load as they are; the parameter-free ``relu0..4`` are where the stage features are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import init_conv_bn_
from .registry import register_variants

KERNEL_SIZE = 3
POOL_SIZE = 2
FEATURE_WIDTH = 512  # every configuration ends with 512 channels
CLASSIFIER_INIT_STD = 0.01
POOL3_INPUT_SIZE = 64  # the reference max-pools before block4 only for 64 px (Tiny ImageNet) inputs

# Conv widths per block: configurations S (vgg8), A (vgg11), B (vgg13), D (vgg16), E (vgg19).
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def conv_bn_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """3x3 conv (with bias)-BN-ReLU per width, without the final ReLU: the block ends in a BatchNorm."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, KERNEL_SIZE, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN of ``config`` (widths per block) mapping images to logits."""

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int, in_channels: int) -> None:
        super().__init__()
        widths = [in_channels] + [block[-1] for block in config]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            conv_bn_block(widths[index], block) for index, block in enumerate(config)
        )
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(POOL_SIZE, POOL_SIZE) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        # Not in place: each block's output (before its ReLU) is the stage's pre-activation point.
        self.relu0, self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(5))
        self.classifier = nn.Linear(FEATURE_WIDTH, num_classes)
        init_conv_bn_(self)
        nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.classifier.bias)

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path, as the reference ``feats``/``preact_feats``: the first block
        after its ReLU, blocks 1..4 before (``stageN_preact``) and after (``stageN``) it, the pool."""
        points = {"stem": "relu0"}
        for index in range(1, 5):
            points[f"stage{index}_preact"] = f"block{index}"
            points[f"stage{index}"] = f"relu{index}"
        return {**points, "pre_logit": "pool4"}

    def feature_modules(self) -> tuple[str, ...]:
        """The modules computing the features (RepDistiller's ``get_feat_modules``: block0..4 and pool0..4):
        everything but the classifier."""
        return tuple(f"{kind}{index}" for index in range(5) for kind in ("block", "relu", "pool"))

    def preact_batchnorms(self) -> dict[str, str]:
        """``stageN_preact`` -> the BatchNorm that ends block N (the point is its output)."""
        blocks = (self.block1, self.block2, self.block3, self.block4)
        return {f"stage{index}_preact": f"block{index}.{len(block) - 1}" for index, block in enumerate(blocks, 1)}

    def forward(self, x: Tensor) -> Tensor:
        input_size = x.shape[2]
        x = self.relu0(self.block0(x))
        x = self.relu1(self.block1(self.pool0(x)))
        x = self.relu2(self.block2(self.pool1(x)))
        x = self.relu3(self.block3(self.pool2(x)))
        if input_size == POOL3_INPUT_SIZE:
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _vgg(name: str, num_classes: int, in_channels: int, image_size: int) -> VGG:
    """VGG configuration ``name`` with BN (RepDistiller's ``<name>_bn``). Parameters on 100 classes: vgg8 ~3.96M
    (one conv per block), vgg11 ~9.3M, vgg13 ~9.5M (the CRD/DKD teacher), vgg16 ~14.8M, vgg19 ~20.1M."""
    return VGG(VGG_CONFIGS[name], num_classes, in_channels)


register_variants(_vgg, {name: (name,) for name in VGG_CONFIGS})
