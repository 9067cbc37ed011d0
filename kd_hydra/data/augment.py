"""Batched augmentation and normalisation of uint8 NCHW images: pure tensor functions, any device.

`sample_crop_flip` + `crop_flip` give the same distribution as torchvision's
``RandomCrop(H, padding=p)`` (zero fill) followed by ``RandomHorizontalFlip()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

UINT8_MAX = 255
FLIP_PROBABILITY = 0.5
#: Images per chunk when computing channel statistics: bounds the float64 working memory.
STATS_CHUNK = 1024


def sample_crop_flip(
    num: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets dy, dx ~ U{0..2*padding} (int64) and flip ~ Bernoulli(0.5) (bool), on CPU.

    Drawn in the order dy, dx, flip from the CPU `generator`: sample i's draws depend on `num` only.
    """
    if padding < 0:
        raise ValueError(f"padding is {padding}; expected >= 0")
    span = 2 * padding + 1
    dy = torch.randint(0, span, (num,), generator=generator, device="cpu")
    dx = torch.randint(0, span, (num,), generator=generator, device="cpu")
    if flip:
        flips = torch.rand(num, generator=generator, device="cpu") < FLIP_PROBABILITY
    else:
        flips = torch.zeros(num, dtype=torch.bool)
    return dy, dx, flips


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Zero-pad each (C, H, W) image by `padding`, crop H x W at (dy, dx), then mirror it where `flip`.

    `dy`, `dx` (int64) and `flip` (bool, or None for no flips) have shape (N,) on x's device.
    """
    n, c, h, w = x.shape
    padded_h, padded_w = h + 2 * padding, w + 2 * padding
    interior = (slice(None), slice(None), slice(padding, padding + h), slice(padding, padding + w))
    # Plane 0 holds the padded images; plane 1 the padded mirrored images, where a mirrored crop
    # at dx is a plain crop at 2 * padding - dx. Every output row is then one contiguous source run.
    planes = 1 if flip is None else 2
    source = x.new_zeros(planes, n, c, padded_h, padded_w)
    source[0][interior] = x
    image = torch.arange(n, device=x.device)
    if flip is not None:
        source[1][interior] = x.flip(3)
        image = image + flip.long() * n
        dx = torch.where(flip, 2 * padding - dx, dx)
    flat = source.view(-1)
    runs = flat.as_strided((flat.numel() - w + 1, w), (1, 1))  # runs[i] = flat[i : i + w]
    plane_row = (image.view(n, 1) * c + torch.arange(c, device=x.device)).view(n, c, 1) * padded_h
    row = plane_row + dy.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h)
    starts = row * padded_w + dx.view(n, 1, 1)
    return runs.index_select(0, starts.view(-1)).view(n, c, h, w)


def normalization_constants(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each float32 (C,), such that x_uint8 * scale + shift == (x / 255 - mean) / std."""
    mean_t = torch.tensor(list(mean), dtype=torch.float64)
    std_t = torch.tensor(list(std), dtype=torch.float64)
    scale = 1.0 / (UINT8_MAX * std_t)
    shift = -mean_t / std_t
    return scale.to(device, torch.float32), shift.to(device, torch.float32)


def normalize(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """x * scale + shift per channel, as `dtype`; uint8 (N, C, H, W) in, one fused op on accelerators."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
    if x.device.type == "cpu":
        # CPU kernels cast mixed dtypes element by element; converting first keeps them vectorised.
        out = x.to(torch.float32, memory_format=memory_format).mul_(scale).add_(shift)
        return out.to(dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=memory_format)
    return torch.addcmul(shift, x, scale, out=out)


def channel_mean_std(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images, in units of 1/255."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(x), STATS_CHUNK):
        chunk = x[start : start + STATS_CHUNK].to(torch.float64) / UINT8_MAX
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = x.numel() // channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
