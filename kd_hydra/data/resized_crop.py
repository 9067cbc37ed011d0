"""Random-resized crops drawn from the run's plan: torchvision's ``RandomResizedCrop`` box, from a per-sample seed.

:func:`crop_box` follows torchvision's ``RandomResizedCrop.get_params``: up to ten tries of an area fraction
~ U(scale) and a log-uniform aspect ratio in ``ratio``, a uniform position when the box fits, else the central
crop of the clamped aspect ratio. Its uniforms come from the sample's own seed (drawn by the epoch plan from
``(seed, epoch)``) and the box from the image's size read from its header, so teacher and student, every worker
count and a resumed run crop sample i of epoch e the same way. Evaluation is :func:`resize_center_crop`
(torchvision's ``Resize(R)`` + ``CenterCrop(S)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: torchvision's RandomResizedCrop defaults (ImageNet training).
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: Tries before the central-crop fallback, as torchvision's get_params.
ATTEMPTS = 10
#: Per try: area fraction, log aspect ratio, row position, column position.
DRAWS_PER_ATTEMPT = 4
#: Crop seeds are drawn in [0, 2**CROP_SEED_BITS).
CROP_SEED_BITS = 62

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ResizedCropConfig:
    """RandomResizedCrop(size) + RandomHorizontalFlip settings of the training split."""

    size: int
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    flip: bool = True


def crop_uniforms(crop_seed: int) -> np.ndarray:
    """The (ATTEMPTS, DRAWS_PER_ATTEMPT) uniforms in [0, 1) of one sample (numpy's PCG64, stable everywhere)."""
    return np.random.Generator(np.random.PCG64(int(crop_seed))).random((ATTEMPTS, DRAWS_PER_ATTEMPT))


def box_from_uniforms(
    width: int, height: int, uniforms: np.ndarray, scale: Sequence[float], ratio: Sequence[float]
) -> Box:
    """(top, left, height, width) of the crop torchvision's get_params gives for these uniforms on a W x H image."""
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in uniforms:
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(width: int, height: int, crop_seed: int, scale: Sequence[float], ratio: Sequence[float]) -> Box:
    """(top, left, height, width) of sample ``crop_seed``'s random-resized crop of a W x H image."""
    return box_from_uniforms(width, height, crop_uniforms(crop_seed), scale, ratio)


def draw_crop_plan(num: int, flip: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample crop seeds (int64) and flips (bool), drawn in that order from the epoch's CPU ``generator``."""
    seeds = torch.randint(0, 2**CROP_SEED_BITS, (num,), generator=generator, dtype=torch.int64)
    if flip:
        flips = torch.rand(num, generator=generator) < 0.5
    else:
        flips = torch.zeros(num, dtype=torch.bool)
    return seeds, flips


def crop_resize(image: torch.Tensor, box: Box, size: int, flip: bool) -> torch.Tensor:
    """uint8 (3, size, size): ``box`` of ``image`` resized (bilinear, antialiased, as torchvision's RandomResizedCrop
    on tensors), mirrored when ``flip``."""
    from torchvision.transforms.v2 import functional as TF  # on use (workers only): slow to import

    top, left, h, w = box
    out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    return TF.horizontal_flip(out) if flip else out


def resize_center_crop(image: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """uint8 (3, size, size): the shorter side resized to ``resize`` (antialiased), then the central size x size."""
    from torchvision.transforms.v2 import functional as TF

    out = TF.resize(image, [resize], antialias=True)
    return TF.center_crop(out, [size, size])
