"""Loading teacher checkpoints: the RepDistiller/mdistiller CIFAR teachers, and refusing bad files.

The reference networks below re-state the architecture definitions of RepDistiller's
``models/resnet.py``, ``resnetv2.py`` and ``wrn.py`` (mdistiller's ``models/cifar`` copies are the
same) with their module names, so a random state dict of them has exactly the keys of a published
checkpoint. Loading it into the kd-hydra zoo arch must reproduce their logits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_hydra.errors import CheckpointError
from kd_hydra.models import build_model
from kd_hydra.models.published import PUBLISHED_LAYOUTS
from kd_hydra.teachers import ArchSignature, load_checkpoint

CIFAR_SIZE = 32
CLASSES = 100
BATCH = 4
PUBLISHED_EPOCH = 240
ATOL = 1e-5
MAX_ERROR_CHARS = 600  # a key-mismatch error stays one readable line


# --- Reference architectures, in the published key layout ----------------------------------------


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, bias=False)


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

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + residual)


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

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


class RefResNetV2Block(nn.Module):
    """resnetv2.py BasicBlock: the shortcut is an (empty or conv-bn) Sequential called ``shortcut``."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class RefResNet18(nn.Module):
    """resnetv2.py ResNet18: 64-channel conv1/bn1, layer1..4 of 2 blocks, adaptive pool, ``linear``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(RefResNetV2Block(in_planes, planes, stride), RefResNetV2Block(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).view(out.size(0), -1))


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
    """wrn.py WideResNet: conv1, block1..3, bn1 + relu, avg_pool2d(8), fc."""

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

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.channels))


REFERENCES = {
    "resnet20": lambda: RefCifarResNet(20, (16, 16, 32, 64), CLASSES),
    "resnet32": lambda: RefCifarResNet(32, (16, 16, 32, 64), CLASSES),
    "resnet8x4": lambda: RefCifarResNet(8, (32, 64, 128, 256), CLASSES),
    "resnet32x4": lambda: RefCifarResNet(32, (32, 64, 128, 256), CLASSES),
    "resnet18": lambda: RefResNet18(CLASSES),
    "wrn_16_2": lambda: RefWideResNet(16, 2, CLASSES),
    "wrn_40_2": lambda: RefWideResNet(40, 2, CLASSES),
}


def _randomize_(model: nn.Module, generator: torch.Generator) -> None:
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


def _published_file(tmp_path: Path, reference: nn.Module, name: str = "ckpt_epoch_240.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": reference.state_dict(), "epoch": PUBLISHED_EPOCH, "accuracy": 73.5}, path)
    return path


def _signature(arch: str, num_classes: int = CLASSES) -> ArchSignature:
    return ArchSignature(arch, "zoo", num_classes, 3, CIFAR_SIZE)


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_published_teacher_predicts_as_their_model(arch: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(sum(map(ord, arch)))
    reference = REFERENCES[arch]()
    _randomize_(reference, generator)
    reference.eval()
    path = _published_file(tmp_path, reference)

    ours = build_model(arch, CLASSES, 3, CIFAR_SIZE).eval()
    load_checkpoint(ours, path, _signature(arch))

    images = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE, generator=generator)
    with torch.no_grad():
        expected, actual = reference(images), ours(images)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero logits
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    theirs = reference.state_dict()
    assert ours.state_dict()["fc.weight"].equal(theirs["linear.weight" if arch == "resnet18" else "fc.weight"])


def test_every_shared_arch_has_a_reference_or_shares_its_layout() -> None:
    layouts_tested = {PUBLISHED_LAYOUTS[arch] for arch in REFERENCES}
    assert set(PUBLISHED_LAYOUTS.values()) == layouts_tested
    assert set(PUBLISHED_LAYOUTS) == {
        "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "resnet18", "wrn_16_2", "wrn_40_2",
    }  # fmt: skip


def test_dataparallel_prefix_of_a_published_file_is_accepted(tmp_path: Path) -> None:
    reference = REFERENCES["wrn_16_2"]().eval()
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    ours = build_model("wrn_16_2", CLASSES, 3, CIFAR_SIZE).eval()
    load_checkpoint(ours, path, _signature("wrn_16_2"))
    images = torch.randn(2, 3, CIFAR_SIZE, CIFAR_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), atol=ATOL, rtol=0)


def test_published_checkpoint_of_another_depth_is_a_short_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _published_file(tmp_path, REFERENCES["resnet8x4"]())
    model = build_model("resnet32x4", CLASSES, 3, CIFAR_SIZE)
    with caplog.at_level(logging.ERROR, logger="kd_hydra.teachers"), pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, path, _signature("resnet32x4"))
    message = str(caught.value)
    # resnet32x4 has 4 more blocks per stage; each: 2 convs + 2 BNs of 4 tensors (num_batches_tracked is filled in)
    missing = 3 * 4 * (2 + 2 * 4)
    assert (
        f"{missing} missing key(s) (stages.0.1.conv1.weight, stages.0.1.bn1.weight, stages.0.1.bn1.bias, ...)"
        in message
    )
    assert "CIFAR ResNet (models/resnet.py) layout" in message
    assert "\n" not in message and len(message) < MAX_ERROR_CHARS


def test_published_mobilenetv2_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "mobile_half.pth"
    torch.save(
        {"model": {"conv1.0.weight": torch.zeros(16, 3, 3, 3), "blocks.0.0.conv.0.weight": torch.zeros(16, 16, 1, 1)}},
        path,
    )
    with pytest.raises(CheckpointError, match=r"mobile_half\) do not fit kd-hydra's mobilenetv2: .*stride-2 stem"):
        load_checkpoint(build_model("mobilenetv2", CLASSES, 3, CIFAR_SIZE), path, _signature("mobilenetv2"))


# --- Refusing bad files (issue 9) ------------------------------------------------------------------


def test_key_layout_mismatch_is_one_readable_line_and_the_full_lists_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = build_model("resnet56", 10, 3, CIFAR_SIZE)
    renamed = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "other_layout.pt"
    torch.save(renamed, path)
    with caplog.at_level(logging.ERROR, logger="kd_hydra.teachers"), pytest.raises(CheckpointError) as caught:
        load_checkpoint(build_model("resnet56", 10, 3, CIFAR_SIZE), path, _signature("resnet56", 10))
    message = str(caught.value)
    keys = list(model.state_dict())
    expected_missing = [k for k in keys if not k.endswith("num_batches_tracked")]
    assert message.startswith(f"teacher.checkpoint={path}: does not fit resnet56 with 10 classes")
    assert f"{len(expected_missing)} missing key(s) ({', '.join(expected_missing[:3])}, ...)" in message
    assert f"{len(keys)} unexpected key(s) ({', '.join(f'backbone.{k}' for k in keys[:3])}, ...)" in message
    assert "\n" not in message and len(message) < MAX_ERROR_CHARS
    logged = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)
    assert all(key in logged for key in expected_missing) and all(f"backbone.{k}" in logged for k in keys)


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "hundred.pt"
    torch.save(build_model("resnet20", 100, 3, CIFAR_SIZE).state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"2 shape-mismatched key\(s\) \(fc.weight: file \[100, 64\] vs model \[10, 64\]"
    ):
        load_checkpoint(build_model("resnet20", 10, 3, CIFAR_SIZE), path, _signature("resnet20", 10))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_tensor(tmp_path: Path, bad_value: float) -> None:
    state = build_model("resnet20", 10, 3, CIFAR_SIZE).state_dict()
    state["stages.1.0.conv1.weight"][0, 0, 0, 0] = bad_value
    state["stages.2.0.bn1.running_var"][3] = bad_value
    path = tmp_path / "diverged.pt"
    torch.save({"state_dict": state}, path)
    model = build_model("resnet20", 10, 3, CIFAR_SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, path, _signature("resnet20", 10))
    message = str(caught.value)
    assert message.startswith(f"teacher.checkpoint={path}: tensor 'stages.1.0.conv1.weight' holds NaN or inf")
    assert "2 non-finite tensor(s)" in message and "\n" not in message
    assert all(before[k].equal(v) for k, v in model.state_dict().items())  # nothing was loaded
