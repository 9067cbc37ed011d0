"""CIFAR checkpoints published by RepDistiller and mdistiller, renamed to kd-hydra's key layout.

Both projects save ``{"model": state_dict, "epoch": ..., "accuracy": ...}`` with their own module
names. Their ResNets (``models/resnet.py``: resnet8 ... resnet110, resnet8x4, resnet32x4), CIFAR
ResNet18/ResNet50 (``resnetv2.py``) and Wide ResNets (``wrn.py``: wrn_16_1/2, wrn_40_1/2) compute what
kd-hydra's zoo archs of the same name compute (same layers, biases and BatchNorm settings; their
fixed average pools equal our global pool at 32x32), so only the names differ. Their VGGs
(``vgg.py``, the ``_bn`` variants), ``mobile_half`` (``mobilenetv2.py``) and ShuffleNets
(``ShuffleNetv1.py``, ``ShuffleNetv2.py``) are kd-hydra archs with their module names, so their
checkpoints load as they are. kd-hydra's own ``mobilenetv2`` is another network than theirs and
refuses their MobileNetV2 files with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

STAGE_GROUP = "stage"  # their 1-based stage number; ours is 0-based


class IncompatiblePublishedCheckpoint(ValueError):
    """A published checkpoint whose architecture differs from the kd-hydra arch of the same name."""


@dataclass(frozen=True)
class PublishedLayout:
    """One published key layout: keys that identify it, and full-match rename rules (regex, template).

    Templates are ``str.format`` strings over the regex's named groups; ``stage`` is shifted to 0-based.
    No rules: kd-hydra's arch has the same module names, the keys are kept.
    """

    name: str
    markers: tuple[str, ...]
    rules: tuple[tuple[str, str], ...] = ()
    absent: tuple[str, ...] = ()  # keys this layout never has (tells it from a look-alike)

    def matches(self, state: Mapping[str, Tensor]) -> bool:
        return all(key in state for key in self.markers) and not any(key in state for key in self.absent)

    def rename(self, key: str) -> str:
        """Our name for their ``key``; a key no rule matches is kept (and later reported as unexpected)."""
        for pattern, template in self.rules:
            match = re.fullmatch(pattern, key)
            if match is not None:
                groups: dict[str, object] = dict(match.groupdict())
                if STAGE_GROUP in groups:
                    groups[STAGE_GROUP] = int(match.group(STAGE_GROUP)) - 1
                return template.format(**groups)
        return key


_BLOCK = r"(?P<stage>[1-9][0-9]*)\.(?P<block>[0-9]+)"
_REST = r"(?P<rest>.+)"


def _resnet_rules(layers: str, shortcut: str, classifier: str) -> tuple[tuple[str, str], ...]:
    """Their CIFAR ResNets' renames: the stem's conv1/bn1, each block's ``layers`` (a regex alternative) and
    ``shortcut`` Sequential, and the ``classifier``."""
    return (
        (rf"conv1\.{_REST}", "stem.0.{rest}"),
        (rf"bn1\.{_REST}", "stem.1.{rest}"),
        (rf"layer{_BLOCK}\.(?P<layer>{layers})\.{_REST}", "stages.{stage}.{block}.{layer}.{rest}"),
        (rf"layer{_BLOCK}\.{shortcut}\.(?P<index>[01])\.{_REST}", "stages.{stage}.{block}.shortcut.{index}.{rest}"),
        (rf"{classifier}\.{_REST}", "fc.{rest}"),
    )


RESNET_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller CIFAR ResNet (models/resnet.py)",
    markers=("layer1.0.conv1.weight", "fc.weight"),
    rules=_resnet_rules("conv1|bn1|conv2|bn2", "downsample", "fc"),
)
RESNET_V2_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller CIFAR ResNet18/ResNet50 (resnetv2.py)",
    markers=("layer4.0.conv1.weight", "linear.weight"),
    rules=_resnet_rules("conv[123]|bn[123]", "shortcut", "linear"),
)

WRN_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller Wide ResNet (wrn.py)",
    markers=("block1.layer.0.conv1.weight",),
    rules=(
        (rf"conv1\.{_REST}", "stem.{rest}"),
        (
            rf"block(?P<stage>[1-9][0-9]*)\.layer\.(?P<block>[0-9]+)\.(?P<layer>bn1|conv1|bn2|conv2)\.{_REST}",
            "stages.{stage}.{block}.{layer}.{rest}",
        ),
        (
            rf"block(?P<stage>[1-9][0-9]*)\.layer\.(?P<block>[0-9]+)\.convShortcut\.{_REST}",
            "stages.{stage}.{block}.projection.{rest}",
        ),
        (rf"bn1\.{_REST}", "final_activation.0.{rest}"),
        (rf"fc\.{_REST}", "fc.{rest}"),
    ),
)

VGG_LAYOUT = PublishedLayout(name="RepDistiller/mdistiller VGG (vgg.py)", markers=("block0.0.weight",))
MOBILENETV2_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller MobileNetV2 (mobilenetv2.py)", markers=("blocks.0.0.conv.0.weight",)
)
SHUFFLENETV2_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller ShuffleNetV2 (ShuffleNetv2.py)", markers=("layer1.0.conv5.weight", "linear.weight")
)
SHUFFLENETV1_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller ShuffleNetV1 (ShuffleNetv1.py)",
    markers=("layer1.0.conv3.weight", "linear.weight"),
    absent=("layer1.0.conv5.weight", "layer4.0.conv1.weight"),
)

MOBILENETV2_DIFFERENCE = (
    "RepDistiller/mdistiller MobileNetV2 checkpoints do not fit kd-hydra's mobilenetv2: "
    "theirs has a stride-2 stem (16x downsampling), a 1x1 expansion conv in the first block and "
    "int()-rounded widths, ours a stride-1 stem (8x), no expansion at t=1 and widths rounded to "
    "multiples of 8; their mobile_half is kd-hydra's arch mobile_half (teacher=mobile_half)"
)

RESNET_ARCHS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
VGG_ARCHS = ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")
PUBLISHED_LAYOUTS: dict[str, PublishedLayout] = {
    **{name: RESNET_LAYOUT for name in (*RESNET_ARCHS, "resnet8x4", "resnet32x4")},
    "resnet18": RESNET_V2_LAYOUT,
    "resnet50_cifar": RESNET_V2_LAYOUT,
    **{name: WRN_LAYOUT for name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{name: VGG_LAYOUT for name in VGG_ARCHS},
    "mobile_half": MOBILENETV2_LAYOUT,
    "shufflev1": SHUFFLENETV1_LAYOUT,
    "shufflev2": SHUFFLENETV2_LAYOUT,
}
"""kd-hydra zoo arch -> the published layout whose checkpoints it loads."""

# Most specific first: ResNet50 has the keys ShuffleNetV1 is told by, ShuffleNetV2 those of V1.
DETECTION_ORDER = (
    RESNET_V2_LAYOUT,
    SHUFFLENETV2_LAYOUT,
    SHUFFLENETV1_LAYOUT,
    RESNET_LAYOUT,
    WRN_LAYOUT,
    VGG_LAYOUT,
    MOBILENETV2_LAYOUT,
)


def detect_published_layout(state: Mapping[str, Tensor]) -> str | None:
    """Name of the published layout ``state`` is in (any arch), for error messages; None if none."""
    return next((layout.name for layout in DETECTION_ORDER if layout.matches(state)), None)


def to_zoo_layout(arch: str, state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """``state`` renamed to kd-hydra's keys if it is in the published layout of zoo ``arch`` and that
    layout has other names than kd-hydra's, else None (nothing to rename).

    Raises :class:`IncompatiblePublishedCheckpoint` for a published MobileNetV2 checkpoint loaded into
    ``mobilenetv2``.
    """
    if arch == "mobilenetv2" and MOBILENETV2_LAYOUT.matches(state):
        raise IncompatiblePublishedCheckpoint(MOBILENETV2_DIFFERENCE)
    layout = PUBLISHED_LAYOUTS.get(arch)
    if layout is None or not layout.rules or not layout.matches(state):
        return None
    return {layout.rename(key): tensor for key, tensor in state.items()}


#: torchvision's ImageNet weight files, by the first 8 hex digits of their SHA-256 (the suffix of their file names):
#: (weights, published top-1 % on the ILSVRC2012 validation set, source).
TORCHVISION_IMAGENET_TOP1 = {
    "f37072fd": ("resnet18 IMAGENET1K_V1", 69.758, "torchvision ResNet18_Weights.IMAGENET1K_V1 acc@1"),
    "b627a593": ("resnet34 IMAGENET1K_V1", 73.314, "torchvision ResNet34_Weights.IMAGENET1K_V1 acc@1"),
    "0676ba61": ("resnet50 IMAGENET1K_V1", 76.130, "torchvision ResNet50_Weights.IMAGENET1K_V1 acc@1"),
    "11ad3fa6": ("resnet50 IMAGENET1K_V2", 80.858, "torchvision ResNet50_Weights.IMAGENET1K_V2 acc@1"),
}
#: ILSVRC2012's validation set: a teacher's accuracy is compared with the published one only on all of it.
IMAGENET_VAL_IMAGES, IMAGENET_CLASSES = 50_000, 1000
#: Percentage points a loaded teacher may fall short of (or exceed) its published top-1 before a warning.
PUBLISHED_TOLERANCE = 1.0


def published_top1(sha256: str) -> tuple[str, float, str] | None:
    """(weights, published top-1, source) of a torchvision ImageNet weight file by its SHA-256; None if unknown."""
    return TORCHVISION_IMAGENET_TOP1.get(sha256[:8])


def published_comparison(sha256: str, accuracy: float, num_test: int, num_classes: int) -> dict[str, Any] | None:
    """A known teacher's accuracy on the full ILSVRC2012 validation set beside its published top-1 (metrics.json's
    ``teacher_published``): weights, published and measured top-1, difference, tolerance, whether they agree, source.
    None when the weights are not known or the test split is not the full validation set."""
    published = published_top1(sha256)
    if published is None or (num_test, num_classes) != (IMAGENET_VAL_IMAGES, IMAGENET_CLASSES):
        return None
    weights, top1, source = published
    difference = accuracy - top1
    return {
        "weights": weights,
        "published_top1": top1,
        "test_acc": accuracy,
        "difference": difference,
        "tolerance": PUBLISHED_TOLERANCE,
        "agrees": abs(difference) <= PUBLISHED_TOLERANCE,
        "source": source,
    }


def published_problem(comparison: Mapping[str, Any]) -> str | None:
    """The one-line warning for a :func:`published_comparison` that does not agree; None when it does."""
    if comparison["agrees"]:
        return None
    return (
        f"teacher.checkpoint: {comparison['weights']} scores {comparison['test_acc']:.2f}% on the validation set, "
        f"published {comparison['published_top1']:.2f}% ({comparison['source']}); check the validation files and "
        "labels (devkit), dataset.normalize and dataset.eval_resize"
    )
