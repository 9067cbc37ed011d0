"""Building blocks and initialisation shared by the zoo architectures."""

from __future__ import annotations

from torch import Tensor, nn

from kd_hydra.errors import ConfigError


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows): keeps size at stride 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias, used for projections and shortcuts."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def init_conv_bn_(model: nn.Module) -> None:
    """He et al. (2015) init in place: Kaiming-normal (fan_out, ReLU) convs, BatchNorm weight 1 bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def require_image_size(arch: str, image_size: int, minimum: int, multiple_of: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``image_size >= minimum`` and divisible by ``multiple_of``."""
    if image_size < minimum:
        raise ConfigError("name", f"{arch} needs images of at least {minimum} px, dataset has {image_size} px")
    if image_size % multiple_of != 0:
        raise ConfigError(
            "name",
            f"{arch} needs an image size divisible by {multiple_of} px, dataset has {image_size} px",
        )


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: ``(N, g*k, H, W)`` channels regrouped as ``k`` groups of ``g``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        grouped = x.reshape(batch, self.groups, channels // self.groups, height, width)
        return grouped.transpose(1, 2).reshape(batch, channels, height, width)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
