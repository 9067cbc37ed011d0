"""scikit-learn's bundled handwritten digits (real data, offline): 8x8 grayscale, 10 classes."""

from __future__ import annotations

import numpy as np
import torch

from kd_hydra.data.types import ArrayData, DatasetSpec
from kd_hydra.errors import ConfigError

DIGITS_SIZE = 8
DIGITS_MAX_VALUE = 16  # sklearn's digits count set pixels of a 4x4 block: values 0..16
UINT8_MAX = 255


def load_digits(name: str = "digits", *, test_fraction: float = 0.25, split_seed: int = 0) -> ArrayData:
    """The 1797 digits scaled to uint8 0..255, split stratified and deterministically by `split_seed`."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("dataset.loader.test_fraction", f"is {test_fraction}; expected a fraction in (0, 1)")
    bunch = sklearn_digits()
    pixels = np.rint(bunch.data * (UINT8_MAX / DIGITS_MAX_VALUE)).astype(np.uint8)
    images = torch.from_numpy(pixels.reshape(-1, 1, DIGITS_SIZE, DIGITS_SIZE).copy())
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=bunch.target, random_state=split_seed
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    spec = DatasetSpec(
        name=name,
        num_classes=len(bunch.target_names),
        channels=1,
        image_size=DIGITS_SIZE,
        classes=tuple(str(c) for c in bunch.target_names),
        num_train=len(train_idx),
        num_test=len(test_idx),
    )
    return ArrayData(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], spec)
