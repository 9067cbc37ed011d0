"""ImageNet architectures of the published ImageNet tables: MobileNetV1 as mdistiller defines it, and torchvision's
ResNet18/34/50 with the feature points of mdistiller's ImageNet ResNets.

``mobilenetv1`` has mdistiller's module names (``model.<i>``, ``fc``: its checkpoints load as they are) and an
adaptive average pool where theirs is ``AvgPool2d(7)`` (equal at 224 x 224). Its points are mdistiller's
``feats``/``preact_feats``: the outputs of blocks 3, 5, 11 and 13 and of their last BatchNorm, and the pooled
feature. ``resnet18_imagenet``, ``resnet34_imagenet``, ``resnet50_imagenet`` are torchvision's networks (the same
state-dict keys: torchvision's weight files load as they are, ``teacher.checkpoint=<file>`` or the ``pretrained``
option) with a ``preact`` marker on each stage's residual sum before its last ReLU: ``stem`` is the ReLU after
the first BatchNorm, ``stageN_preact``/``stageN`` the stage output before/after that ReLU, ``pre_logit`` the pool,
as mdistiller's ``preact_feats``/``feats``/``pooled_feat``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from kd_hydra.errors import ConfigError

from .features import block_stage_points
from .registry import register_model, register_variants

#: (output channels, stride) of MobileNetV1's depthwise-separable blocks 1..13 (block 0 is the stem convolution).
MOBILENETV1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))
#: Blocks whose outputs are mdistiller's four features.
MOBILENETV1_STAGE_BLOCKS = (3, 5, 11, 13)
STEM_WIDTH = 32
IMAGENET_CLASSES = 1000


def _conv_bn(inp: int, out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU())


def _conv_dw(inp: int, out: int, stride: int) -> nn.Sequential:
    # ReLUs not in place: the BatchNorm output before the last one is a feature point (preact).
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(),
    )


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1 (Howard et al. 2017, width 1.0): 4.2 M parameters at 1,000 classes."""

    def __init__(self, num_classes: int = IMAGENET_CLASSES, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, STEM_WIDTH, 2)]
        width = STEM_WIDTH
        for out, stride in MOBILENETV1_BLOCKS:
            layers.append(_conv_dw(width, out, stride))
            width = out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.model(x), 1))

    def feature_points(self) -> dict[str, str]:
        points: dict[str, str] = {}
        for number, block in enumerate(MOBILENETV1_STAGE_BLOCKS, 1):
            points[f"stage{number}_preact"] = f"model.{block}.4"
            points[f"stage{number}"] = f"model.{block}"
        return {**points, "pre_logit": f"model.{len(self.model) - 1}"}

    def feature_modules(self) -> tuple[str, ...]:
        return ("model",)

    def preact_batchnorms(self) -> dict[str, str]:
        return {f"stage{n}_preact": f"model.{block}.4" for n, block in enumerate(MOBILENETV1_STAGE_BLOCKS, 1)}


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int, in_channels: int, image_size: int) -> MobileNetV1:
    """MobileNetV1 for ImageNet-sized images (five stride-2 stages: image_size >= 32)."""
    del image_size
    return MobileNetV1(num_classes, in_channels)


def _marked_forward(block: nn.Module, x: Tensor) -> Tensor:
    """torchvision's BasicBlock/Bottleneck forward with ``block.preact`` on the residual sum (the last ReLU out of
    place, so that the recorded sum stays as it was)."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    return torch.relu(block.preact(out + identity))


class _Marked(nn.Module):
    """Mixed into a stage's last torchvision block (its class swapped): the forward with the preact marker."""

    def forward(self, x: Tensor) -> Tensor:
        return _marked_forward(self, x)


class ImageNetResNet(nn.Module):
    """Holder of the points of a torchvision ResNet marked by :func:`imagenet_resnet` (methods bound on the net)."""


def _weights_file(arch: str, pretrained: str) -> Path:
    """The local file of ``pretrained``: a path, or torchvision weights name found in torch.hub's checkpoint folder."""
    if os.sep in pretrained or pretrained.endswith((".pth", ".pt")):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError("pretrained", f"{path} is not a file; expected torchvision's {arch} weights file there")
        return path
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    try:
        weights = enum.verify(pretrained)
    except (KeyError, ValueError, TypeError):
        choices = ", ".join(["DEFAULT", *(member.name for member in enum)])
        raise ConfigError(
            "pretrained", f"unknown weights '{pretrained}' for {arch}; choose one of: {choices}"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not path.is_file():
        raise ConfigError(
            "pretrained",
            f"{pretrained} of {arch} is not on this machine; offline, download {weights.url} elsewhere and place it "
            f"at {path} (or give pretrained=/path/to/that/file)",
        )
    return path


def imagenet_resnet(
    arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: str | None = None
) -> nn.Module:
    """torchvision's ``arch`` (resnet18/34/50) with mdistiller's ImageNet feature points; ``pretrained``: a
    torchvision weights name (from torch.hub's checkpoint folder, offline) or a local weights file, loaded before
    the head is replaced when ``num_classes`` is not 1,000."""
    del image_size
    if in_channels != 3:
        raise ConfigError("name", f"{arch}_imagenet takes 3-channel RGB images, the dataset has {in_channels}")
    from torchvision.models import get_model

    model = get_model(arch, weights=None, num_classes=IMAGENET_CLASSES if pretrained else num_classes)
    if pretrained:
        state = torch.load(_weights_file(arch, pretrained), map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        if num_classes != IMAGENET_CLASSES:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    stages = []
    for number in range(1, 5):
        stage = model.get_submodule(f"layer{number}")
        last = stage[len(stage) - 1]
        last.preact = nn.Identity()
        last.__class__ = type(f"Marked{type(last).__name__}", (_Marked, type(last)), {})
        stages.append((f"layer{number}", stage))
    points = block_stage_points("relu", stages, "avgpool")
    model.kd_feature_points = points  # the config override's attribute (kd_hydra.models.features)
    return model


register_variants(imagenet_resnet, {f"{arch}_imagenet": (arch,) for arch in ("resnet18", "resnet34", "resnet50")})
