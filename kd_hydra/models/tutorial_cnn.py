"""Teacher/student pair of the PyTorch knowledge-distillation tutorial.

https://pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html: ``DeepNN`` (``deep_cnn``,
1,186,986 parameters on 32x32 RGB / 10 classes) and ``LightNN`` (``light_cnn``, 267,738). Weights
keep PyTorch's default initialisation, as in the tutorial.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import require_image_size
from .registry import register_model

# Two 2x2 max-pools shrink each side by this factor before the classifier.
DOWNSAMPLING_FACTOR = 4
POOL_SIZE = 2
KERNEL_SIZE = 3
PADDING = 1
DROPOUT = 0.1
HIDDEN_ACTIVATION_INDEX = 1  # classifier = Linear, ReLU, Dropout, Linear

DEEP_CONV_WIDTHS = (128, 64, 64, 32)
DEEP_HIDDEN_UNITS = 512
LIGHT_CONV_WIDTHS = (16, 16)
LIGHT_HIDDEN_UNITS = 256


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Size-preserving 3x3 convolution (with bias) followed by ReLU."""
    return [nn.Conv2d(in_channels, out_channels, KERNEL_SIZE, padding=PADDING), nn.ReLU(inplace=True)]


class TutorialCNN(nn.Module):
    """``features`` -> flatten -> ``classifier`` (Linear, ReLU, Dropout, Linear): maps images to logits."""

    def __init__(self, features: nn.Sequential, feature_count: int, hidden_units: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Linear(feature_count, hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT),
            nn.Linear(hidden_units, num_classes),
        )

    def feature_points(self) -> dict[str, str]:
        """Feature point -> module path: the first conv's ReLU, each max-pool (a stage), the hidden
        ReLU of the classifier (its input to the final layers; there is no pooling layer)."""
        points: dict[str, str] = {}
        for index, module in enumerate(self.features):
            if isinstance(module, nn.ReLU) and not points:
                points["stem"] = f"features.{index}"
            elif isinstance(module, nn.MaxPool2d):
                points[f"stage{len(points)}"] = f"features.{index}"
        points["pre_logit"] = f"classifier.{HIDDEN_ACTIVATION_INDEX}"
        return points

    def feature_modules(self) -> tuple[str, ...]:
        """The convolutional part; the classifier is the head."""
        return ("features",)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _flattened_size(channels: int, image_size: int) -> int:
    """Number of features left after the two max-pools."""
    side = image_size // DOWNSAMPLING_FACTOR
    return channels * side * side


@register_model("deep_cnn")
def deep_cnn(num_classes: int, in_channels: int, image_size: int) -> TutorialCNN:
    """The tutorial's ``DeepNN`` teacher: four convs (128, 64 | 64, 32) with a max-pool after each pair."""
    require_image_size("deep_cnn", image_size, DOWNSAMPLING_FACTOR, multiple_of=DOWNSAMPLING_FACTOR)
    first, second, third, fourth = DEEP_CONV_WIDTHS
    features = nn.Sequential(
        *_conv_relu(in_channels, first),
        *_conv_relu(first, second),
        nn.MaxPool2d(POOL_SIZE),
        *_conv_relu(second, third),
        *_conv_relu(third, fourth),
        nn.MaxPool2d(POOL_SIZE),
    )
    return TutorialCNN(features, _flattened_size(fourth, image_size), DEEP_HIDDEN_UNITS, num_classes)


@register_model("light_cnn")
def light_cnn(num_classes: int, in_channels: int, image_size: int) -> TutorialCNN:
    """The tutorial's ``LightNN`` student: two 16-channel convs, each followed by a max-pool."""
    require_image_size("light_cnn", image_size, DOWNSAMPLING_FACTOR, multiple_of=DOWNSAMPLING_FACTOR)
    first, second = LIGHT_CONV_WIDTHS
    features = nn.Sequential(
        *_conv_relu(in_channels, first),
        nn.MaxPool2d(POOL_SIZE),
        *_conv_relu(first, second),
        nn.MaxPool2d(POOL_SIZE),
    )
    return TutorialCNN(features, _flattened_size(second, image_size), LIGHT_HIDDEN_UNITS, num_classes)
