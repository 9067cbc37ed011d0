"""Tiny CIFAR-style ResNets for the feature-method tests: hook points incl. ``stageN_preact``, and an explicit
forward (:meth:`TinyResNet.reference_features`) that computes the same tensors without hooks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_SHAPE = (3, 16, 16)
CLASSES = 5


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, a ``preact`` point, then ReLU (not in place: the point stays raw)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.reference(x)[0])

    def reference(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pre-activation, output) written out."""
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.preact(self.bn2(self.conv2(out)) + self.shortcut(x))
        return preact, F.relu(preact)


class TinyResNet(nn.Module):
    """Stem (conv-BN-ReLU), three one-block stages (strides 1, 2, 2), pooled feature, linear head."""

    def __init__(self, widths: tuple[int, int, int, int], seed: int, classes: int = CLASSES) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = nn.Sequential(
            Block(widths[0], widths[1], 1), Block(widths[1], widths[2], 2), Block(widths[2], widths[3], 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], classes)
        for module in self.modules():  # BatchNorm away from 1 / 0 so margins and statistics are not trivial
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, -0.5, 0.5)

    def feature_points(self) -> dict[str, str]:
        points = {"stem": "stem"}
        points.update({f"stage{i + 1}": f"stages.{i}" for i in range(3)})
        points.update({f"stage{i + 1}_preact": f"stages.{i}.preact" for i in range(3)})
        points["pre_logit"] = "pool"
        return points

    def preact_batchnorms(self) -> dict[str, str]:
        return {f"stage{i + 1}_preact": f"stages.{i}.bn2" for i in range(3)}

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))

    def reference_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and every feature point, computed explicitly (no hooks)."""
        features = {"stem": self.stem(x)}
        out = features["stem"]
        for i, block in enumerate(self.stages):
            preact, out = block.reference(out)
            features[f"stage{i + 1}_preact"], features[f"stage{i + 1}"] = preact, out
        features["pre_logit"] = torch.flatten(self.pool(out), 1)
        return self.fc(features["pre_logit"]), features


def batches(count: int, size: int = 8, seed: int = 0) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``count`` fixed float64 batches of (images, targets, sample indices)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        images = torch.randn(size, *IMAGE_SHAPE, generator=generator, dtype=torch.float64)
        targets = torch.randint(0, CLASSES, (size,), generator=generator)
        out.append((images, targets, torch.arange(i * size, (i + 1) * size)))
    return out
