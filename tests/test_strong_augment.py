"""MLKD's strong view: each op against PIL's (the reference applies them to PIL images), and the batch function."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kd_hydra.data import strong_augment as sa
from kd_hydra.errors import ConfigError

MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def image(seed=0, size=12):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def ours(op, array, v):
    out = op(torch.from_numpy(array).permute(2, 0, 1).double(), v)
    return out.permute(1, 2, 0).numpy()


PIL_OPS = [
    (sa.auto_contrast, lambda im, v: ImageOps.autocontrast(im), 0.0),
    (sa.brightness, lambda im, v: ImageEnhance.Brightness(im).enhance(v), 0.37),
    (sa.color, lambda im, v: ImageEnhance.Color(im).enhance(v), 0.61),
    (sa.contrast, lambda im, v: ImageEnhance.Contrast(im).enhance(v), 0.23),
    (sa.equalize, lambda im, v: ImageOps.equalize(im), 0.0),
    (sa.posterize, lambda im, v: ImageOps.posterize(im, int(v)), 5.7),
    (sa.solarize, lambda im, v: ImageOps.solarize(im, v), 131.5),
    (sa.rotate, lambda im, v: im.rotate(v), 23.0),
    (sa.rotate, lambda im, v: im.rotate(v), -17.5),
    (sa.shear_x, lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)), 0.21),
    (sa.shear_y, lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)), -0.27),
    (sa.translate_x, lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)), 0.26),
    (sa.translate_y, lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])), -0.13),
]


@pytest.mark.parametrize("op,pil,v", PIL_OPS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_ops_equal_pil(op, pil, v):
    for seed in range(3):
        array = image(seed)
        expected = np.asarray(pil(Image.fromarray(array), v)).astype(np.float64)
        np.testing.assert_array_equal(ours(op, array, v), expected)


def test_sharpness_is_within_one_level_of_pil():
    array = image(4)
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(array)).enhance(0.4)).astype(np.float64)
    assert np.abs(ours(sa.sharpness, array, 0.4) - expected).max() <= 1.0


def test_cutout_fills_the_square_as_pil_draws_it():
    array = image(5)
    out = sa.cutout(torch.from_numpy(array).permute(2, 0, 1).double(), 0.25, 0.5, 0.3)
    pil = Image.fromarray(array)
    side = 0.25 * 12
    x0, y0 = int(max(0, 0.5 * 12 - side / 2)), int(max(0, 0.3 * 12 - side / 2))
    ImageDraw.Draw(pil).rectangle((x0, y0, min(12, x0 + side), min(12, y0 + side)), (125, 123, 114))
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), np.asarray(pil).astype(np.float64))
    assert torch.equal(sa.cutout(out, 0.0, 0.1, 0.1), out)


def test_strong_view_is_a_seeded_per_image_augmentation_of_the_normalized_batch():
    pixels = torch.from_numpy(np.stack([image(s, 16) for s in range(6)])).permute(0, 3, 1, 2).float()
    mean, std = torch.tensor(MEAN).reshape(1, 3, 1, 1), torch.tensor(STD).reshape(1, 3, 1, 1)
    images = (pixels / 255 - mean) / std
    first = sa.strong_view(images, MEAN, STD, torch.Generator().manual_seed(3))
    again = sa.strong_view(images, MEAN, STD, torch.Generator().manual_seed(3))
    other = sa.strong_view(images, MEAN, STD, torch.Generator().manual_seed(4))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    decoded = (first * std + mean) * 255
    torch.testing.assert_close(decoded, decoded.round().clamp(0, 255), atol=1e-3, rtol=0)
    # per image: the draws of rand_augment, in order
    generator = torch.Generator().manual_seed(3)
    for index in range(6):
        expected = sa.rand_augment(pixels[index].clone(), generator)
        torch.testing.assert_close(decoded[index], expected, atol=1e-3, rtol=0)
    channels_last = sa.strong_view(images.contiguous(memory_format=torch.channels_last), MEAN, STD)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="RGB"):
        sa.strong_view(images[:, :1], MEAN[:1], STD[:1])
