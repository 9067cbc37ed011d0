"""A generated, learnable dataset: each class is a fixed smooth random pattern plus Gaussian noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_hydra.data.types import ArrayData, DatasetSpec
from kd_hydra.errors import ConfigError

#: Side of the random pattern upsampled into each class prototype: smooth, so random crops keep the class.
PROTOTYPE_GRID = 4
UINT8_MAX = 255


def _check_positive(key: str, value: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"dataset.loader.{key}", f"is {value!r}; expected a positive integer")


def load_synthetic(
    name: str = "synthetic",
    *,
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    image_size: int = 16,
    channels: int = 3,
    seed: int = 0,
    noise: float = 0.2,
) -> ArrayData:
    """Balanced classes, deterministic given `seed`; `noise` is the noise std as a fraction of 255."""
    for key, value in (
        ("num_train", num_train),
        ("num_test", num_test),
        ("num_classes", num_classes),
        ("image_size", image_size),
        ("channels", channels),
    ):
        _check_positive(key, value)
    if noise < 0:
        raise ConfigError("dataset.loader.noise", f"is {noise}; expected a standard deviation >= 0 (fraction of 255)")
    generator = torch.Generator().manual_seed(int(seed))
    patterns = torch.rand(num_classes, channels, PROTOTYPE_GRID, PROTOTYPE_GRID, generator=generator)
    prototypes = F.interpolate(patterns, size=(image_size, image_size), mode="bilinear", align_corners=False)
    prototypes = prototypes * UINT8_MAX

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]
        jitter = torch.randn(count, channels, image_size, image_size, generator=generator) * (noise * UINT8_MAX)
        images = (prototypes[labels] + jitter).round_().clamp_(0, UINT8_MAX).to(torch.uint8)
        return images, labels

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    spec = DatasetSpec(
        name=name,
        num_classes=num_classes,
        channels=channels,
        image_size=image_size,
        classes=tuple(f"class_{i}" for i in range(num_classes)),
        num_train=num_train,
        num_test=num_test,
    )
    return ArrayData(x_train, y_train, x_test, y_test, spec)
