"""CIFAR checkpoints published by RepDistiller and mdistiller, renamed to kd-hydra's key layout.

Both projects save ``{"model": state_dict, "epoch": ..., "accuracy": ...}`` with their own module
names. Their ResNets (``models/resnet.py``: resnet20/32/56/110/8x4/32x4), CIFAR ResNet18
(``resnetv2.py``) and Wide ResNets (``wrn.py``: wrn_16_2, wrn_40_2) compute what kd-hydra's zoo
archs of the same name compute (same layers, biases and BatchNorm settings; their fixed 8x8 average
pool equals our global pool at 32x32), so only the names differ. Their MobileNetV2 (``mobile_half``)
is another network than kd-hydra's ``mobilenetv2`` and is refused with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

STAGE_GROUP = "stage"  # their 1-based stage number; ours is 0-based


class IncompatiblePublishedCheckpoint(ValueError):
    """A published checkpoint whose architecture differs from the kd-hydra arch of the same name."""


@dataclass(frozen=True)
class PublishedLayout:
    """One published key layout: a key only it has, and full-match rename rules (regex, template).

    Templates are ``str.format`` strings over the regex's named groups; ``stage`` is shifted to 0-based.
    """

    name: str
    marker: str
    rules: tuple[tuple[str, str], ...]

    def matches(self, state: Mapping[str, Tensor]) -> bool:
        return self.marker in state

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

RESNET_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller CIFAR ResNet (models/resnet.py)",
    marker="layer1.0.conv1.weight",
    rules=(
        (rf"conv1\.{_REST}", "stem.0.{rest}"),
        (rf"bn1\.{_REST}", "stem.1.{rest}"),
        (rf"layer{_BLOCK}\.(?P<layer>conv1|bn1|conv2|bn2)\.{_REST}", "stages.{stage}.{block}.{layer}.{rest}"),
        (rf"layer{_BLOCK}\.downsample\.(?P<index>[01])\.{_REST}", "stages.{stage}.{block}.shortcut.{index}.{rest}"),
        (rf"fc\.{_REST}", "fc.{rest}"),
    ),
)

RESNET_V2_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller CIFAR ResNet18 (resnetv2.py)",
    marker="linear.weight",
    rules=(
        *RESNET_LAYOUT.rules[:3],
        (rf"layer{_BLOCK}\.shortcut\.(?P<index>[01])\.{_REST}", "stages.{stage}.{block}.shortcut.{index}.{rest}"),
        (rf"linear\.{_REST}", "fc.{rest}"),
    ),
)

WRN_LAYOUT = PublishedLayout(
    name="RepDistiller/mdistiller Wide ResNet (wrn.py)",
    marker="block1.layer.0.conv1.weight",
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

MOBILENETV2_MARKER = "blocks.0.0.conv.0.weight"
MOBILENETV2_DIFFERENCE = (
    "RepDistiller/mdistiller MobileNetV2 checkpoints (mobile_half) do not fit kd-hydra's mobilenetv2: "
    "theirs has a stride-2 stem (16x downsampling), a 1x1 expansion conv in the first block and "
    "int()-rounded widths, ours a stride-1 stem (8x), no expansion at t=1 and widths rounded to "
    "multiples of 8; train the teacher with kd-hydra or use another arch"
)

PUBLISHED_LAYOUTS: dict[str, PublishedLayout] = {
    **{name: RESNET_LAYOUT for name in ("resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4")},
    "resnet18": RESNET_V2_LAYOUT,
    "wrn_16_2": WRN_LAYOUT,
    "wrn_40_2": WRN_LAYOUT,
}
"""kd-hydra zoo arch -> the published layout whose checkpoints it loads."""


def detect_published_layout(state: Mapping[str, Tensor]) -> str | None:
    """Name of the published layout ``state`` is in (any arch), for error messages; None if none."""
    for layout in (RESNET_V2_LAYOUT, RESNET_LAYOUT, WRN_LAYOUT):
        if layout.matches(state):
            return layout.name
    if MOBILENETV2_MARKER in state:
        return "RepDistiller/mdistiller MobileNetV2 (mobilenetv2.py)"
    return None


def to_zoo_layout(arch: str, state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """``state`` renamed to kd-hydra's keys if it is in the published layout of zoo ``arch``, else None.

    Raises :class:`IncompatiblePublishedCheckpoint` for a published MobileNetV2 checkpoint loaded into
    ``mobilenetv2``.
    """
    if arch == "mobilenetv2" and MOBILENETV2_MARKER in state:
        raise IncompatiblePublishedCheckpoint(MOBILENETV2_DIFFERENCE)
    layout = PUBLISHED_LAYOUTS.get(arch)
    if layout is None or not layout.matches(state):
        return None
    return {layout.rename(key): tensor for key, tensor in state.items()}
