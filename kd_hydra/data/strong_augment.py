"""The strongly augmented view MLKD trains on: RandAugment(2, 10) + Cutout, on the device, per image.

The logit-standardization repository (like FixMatch) applies to each PIL image two ops drawn with replacement
from 14 (AutoContrast, Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate, Sharpness, ShearX,
ShearY, Solarize, TranslateX, TranslateY), each at a magnitude drawn uniformly from its range, then a Cutout of
side ``u * 0.5 * width`` filled with (125, 123, 114). :func:`strong_view` does the same on a normalized float
batch: back to 0..255 pixel values, the ops on each image (PIL's formulas: integer-valued results, affine maps
sampled at pixel centres with nearest neighbour and black fill), normalized again. The reference draws its own
crop and flip for the strong view; here it starts from the (already cropped and flipped) weak view.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_hydra.errors import ConfigError

PIXEL_MAX = 255.0
OPS_PER_IMAGE = 2
CUTOUT_MAX = 0.5
CUTOUT_FILL = (125.0, 123.0, 114.0)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's L conversion
SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL ImageFilter.SMOOTH (sum 13)

Op = Callable[[Tensor, float], Tensor]


def _round(img: Tensor) -> Tensor:
    return img.round().clamp(0.0, PIXEL_MAX)


def _truncate(img: Tensor) -> Tensor:
    """PIL's cast of a float result to uint8: clipped to [0, 255], fraction dropped."""
    return img.clamp(0.0, PIXEL_MAX).floor()


def _blend(degenerate: Tensor, img: Tensor, factor: float) -> Tensor:
    """PIL ImageEnhance (``Image.blend``): ``degenerate + factor * (img - degenerate)`` as uint8."""
    return _truncate(degenerate + factor * (img - degenerate))


def _gray(img: Tensor) -> Tensor:
    weights = torch.tensor(GRAY_WEIGHTS, dtype=img.dtype, device=img.device).reshape(3, 1, 1)
    return (img * weights).sum(0, keepdim=True).round()


def auto_contrast(img: Tensor, _: float) -> Tensor:
    """Per channel, stretch [min, max] to [0, 255] (channels with min == max unchanged)."""
    low = img.amin(dim=(1, 2), keepdim=True)
    high = img.amax(dim=(1, 2), keepdim=True)
    scale = PIXEL_MAX / (high - low).clamp_min(1.0)
    stretched = _truncate(img * scale - low * scale)  # PIL's ix * scale + offset, offset = -lo * scale
    return torch.where(high > low, stretched, img)


def brightness(img: Tensor, v: float) -> Tensor:
    return _blend(torch.zeros_like(img), img, v)


def color(img: Tensor, v: float) -> Tensor:
    return _blend(_gray(img).expand_as(img), img, v)


def contrast(img: Tensor, v: float) -> Tensor:
    mean = _gray(img).mean().round()
    return _blend(torch.full_like(img, float(mean)), img, v)


def equalize(img: Tensor, _: float) -> Tensor:
    """PIL's per-channel histogram equalization."""
    out = []
    for channel in img:
        values = channel.long().reshape(-1)
        histogram = torch.bincount(values, minlength=256)
        nonzero = histogram[histogram > 0]
        step = (int(histogram.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            out.append(channel)
            continue
        lut = ((torch.cumsum(histogram, 0) - histogram + step // 2) // step).clamp(0, 255)
        out.append(lut[values].reshape(channel.shape).to(img.dtype))
    return torch.stack(out)


def identity(img: Tensor, _: float) -> Tensor:
    return img


def posterize(img: Tensor, v: float) -> Tensor:
    shift = 2 ** (8 - max(1, int(v)))
    return torch.div(img, shift, rounding_mode="floor") * shift


def sharpness(img: Tensor, v: float) -> Tensor:
    """Blend with PIL's SMOOTH filter (the one-pixel border keeps its values)."""
    kernel = torch.tensor(SMOOTH_KERNEL, dtype=img.dtype, device=img.device) / 13.0
    smooth = F.conv2d(img.unsqueeze(1), kernel.reshape(1, 1, 3, 3)).squeeze(1).round()
    degenerate = img.clone()
    degenerate[:, 1:-1, 1:-1] = smooth
    return _blend(degenerate, img, v)


def solarize(img: Tensor, v: float) -> Tensor:
    return torch.where(img >= v, PIXEL_MAX - img, img)


def affine(img: Tensor, matrix: Sequence[float]) -> Tensor:
    """PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f))``: output (x, y) takes the input pixel at
    ``(a x' + b y' + c, d x' + e y' + f)``, ``(x', y') = (x + .5, y + .5)``, nearest, black outside."""
    _, height, width = img.shape
    a, b, c, d, e, f = matrix
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=img.device) + 0.5,
        torch.arange(width, dtype=torch.float64, device=img.device) + 0.5,
        indexing="ij",
    )
    src_x = torch.floor(a * xs + b * ys + c).long()
    src_y = torch.floor(d * xs + e * ys + f).long()
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    gathered = img[:, src_y.clamp(0, height - 1), src_x.clamp(0, width - 1)]
    return torch.where(inside, gathered, torch.zeros_like(gathered))


def rotate(img: Tensor, degrees: float) -> Tensor:
    """Counter-clockwise about the centre (PIL ``Image.rotate``)."""
    _, height, width = img.shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return affine(img, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy))


def shear_x(img: Tensor, v: float) -> Tensor:
    return affine(img, (1.0, v, 0.0, 0.0, 1.0, 0.0))


def shear_y(img: Tensor, v: float) -> Tensor:
    return affine(img, (1.0, 0.0, 0.0, v, 1.0, 0.0))


def translate_x(img: Tensor, v: float) -> Tensor:
    return affine(img, (1.0, 0.0, v * img.shape[2], 0.0, 1.0, 0.0))


def translate_y(img: Tensor, v: float) -> Tensor:
    return affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, v * img.shape[1]))


#: (op, low, high) of the reference's ``augment_list``.
AUGMENT_LIST: tuple[tuple[Op, float, float], ...] = (
    (auto_contrast, 0.0, 1.0),
    (brightness, 0.05, 0.95),
    (color, 0.05, 0.95),
    (contrast, 0.05, 0.95),
    (equalize, 0.0, 1.0),
    (identity, 0.0, 1.0),
    (posterize, 4.0, 8.0),
    (rotate, -30.0, 30.0),
    (sharpness, 0.05, 0.95),
    (shear_x, -0.3, 0.3),
    (shear_y, -0.3, 0.3),
    (solarize, 0.0, 256.0),
    (translate_x, -0.3, 0.3),
    (translate_y, -0.3, 0.3),
)


def cutout(img: Tensor, fraction: float, x_draw: float, y_draw: float) -> Tensor:
    """Fill the square of side ``fraction * width`` around the drawn centre (``x_draw``, ``y_draw`` in [0, 1))
    with (125, 123, 114), clipped to the image, both end rows and columns included (PIL's rectangle)."""
    if fraction <= 0:
        return img
    _, height, width = img.shape
    side = fraction * width
    x0, y0 = int(max(0.0, x_draw * width - side / 2.0)), int(max(0.0, y_draw * height - side / 2.0))
    x1, y1 = min(width, x0 + side), min(height, y0 + side)
    out = img.clone()
    fill = torch.tensor(CUTOUT_FILL, dtype=img.dtype, device=img.device).reshape(3, 1, 1)
    out[:, y0 : int(y1) + 1, x0 : int(x1) + 1] = fill
    return out


def rand_augment(img: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Two random ops at random magnitudes, then Cutout, on one ``(3, H, W)`` image of 0..255 values."""
    choices = torch.randint(len(AUGMENT_LIST), (OPS_PER_IMAGE,), generator=generator).tolist()
    draws = torch.rand(OPS_PER_IMAGE + 3, generator=generator, dtype=torch.float64).tolist()
    for index, u in zip(choices, draws):
        op, low, high = AUGMENT_LIST[index]
        img = op(img, low + (high - low) * u)
    return cutout(img, draws[-3] * CUTOUT_MAX, draws[-2], draws[-1])


def strong_view(
    images: Tensor, mean: Sequence[float], std: Sequence[float], generator: torch.Generator | None = None
) -> Tensor:
    """The strongly augmented view of a normalized RGB batch ``(N, 3, H, W)``: same dtype, device, layout."""
    if images.dim() != 4 or images.shape[1] != len(CUTOUT_FILL):
        raise ConfigError(
            "loss.name",
            f"the strong view (RandAugment) needs RGB image batches (N, 3, H, W), got {tuple(images.shape)}",
        )
    mean_t = torch.tensor(list(mean), dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    pixels = _round((images.float() * std_t + mean_t) * PIXEL_MAX)
    augmented = torch.stack([rand_augment(img, generator) for img in pixels])
    out = (augmented / PIXEL_MAX - mean_t) / std_t
    return out.to(images.dtype).contiguous(memory_format=_memory_format(images))


def _memory_format(images: Tensor) -> torch.memory_format:
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
