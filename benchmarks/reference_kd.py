"""A plain knowledge-distillation loop in the style of the official PyTorch KD tutorial: the baseline.

https://pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html trains a student with a
``Dataset`` of PIL images, torchvision transforms, a ``DataLoader(num_workers=2)``, the teacher run
under ``torch.no_grad()`` on every batch, the loss written inline and ``loss.item()`` per batch.
This module does exactly that, on the same arrays, architectures (``kd_hydra.models.build_model``),
normalisation, loss, optimizer and schedule as the kd-hydra run it is compared with; only the data
path and the per-step teacher forward differ. Nothing from kd-hydra's data or training code is used.

Contract of :func:`train_reference_student`: returns ``final_test_acc`` (percent, after the last
epoch), ``images_per_second`` (training images / seconds inside the training loops, teacher forward
and data loading included, evaluation excluded: the suite's ``train_images_per_second`` definition),
``wall_seconds`` (the whole call) and ``epoch_seconds`` (per epoch, training plus evaluation: the
suite's ``history.csv`` ``seconds``).

CLI (one run, result as one JSON line on stdout and optionally in ``--out``)::

    python benchmarks/reference_kd.py --teacher-checkpoint PATH --temperature 4 --alpha 0.9 --epochs 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import DEFAULT_NPZ, print_json_result
from _tutorial_loop import (
    ReferenceSettings,
    add_loop_arguments,
    build_pair,
    distill_loop,
    load_teacher_state_dict,
    run_record,
    settings_from_args,
    tutorial_transforms,
)
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

UINT8_MAX = 255.0
CROP_PADDING = 4


@dataclass(frozen=True)
class Splits:
    """Train and test images as uint8 NHWC numpy arrays with int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        """Highest label + 1, as kd-hydra's ``dataset=arrays`` infers it."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[3])


def load_npz(path: str | Path) -> Splits:
    """The four arrays of an ``.npz`` with keys x_train, y_train, x_test, y_test (NHWC uint8 images)."""
    with np.load(path, allow_pickle=False) as archive:
        return Splits(
            archive["x_train"],
            archive["y_train"].astype(np.int64),
            archive["x_test"],
            archive["y_test"].astype(np.int64),
        )


def channel_mean_std(x_nhwc: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 NHWC images in units of 1/255.

    This is what kd-hydra computes when ``dataset.normalize`` is null (``dataset=arrays``).
    """
    pixels = x_nhwc.reshape(-1, x_nhwc.shape[-1]).astype(np.float64) / UINT8_MAX
    return pixels.mean(axis=0).tolist(), pixels.std(axis=0).tolist()


class PILImageDataset(Dataset):
    """Item i is ``(transform(PIL image of x[i]), label y[i])``, as torchvision's CIFAR10 dataset does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def build_loaders(splits: Splits, settings: ReferenceSettings, seed: int) -> tuple[DataLoader, DataLoader]:
    """The tutorial's loaders: augmented shuffled train split, plain test split, ``num_workers`` each."""
    mean, std = channel_mean_std(splits.x_train)
    train_transform, test_transform = tutorial_transforms(splits.image_size, CROP_PADDING, mean, std)
    pin = settings.device.startswith("cuda")
    train_loader = DataLoader(
        PILImageDataset(splits.x_train, splits.y_train, train_transform),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=settings.num_workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )
    test_loader = DataLoader(
        PILImageDataset(splits.x_test, splits.y_test, test_transform),
        batch_size=settings.eval_batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
        pin_memory=pin,
    )
    return train_loader, test_loader


def train_reference_student(
    teacher_state_dict: Mapping[str, Tensor],
    T: float,
    alpha: float,
    epochs: int,
    seed: int,
    splits: Splits | None = None,
    npz_path: str | Path = DEFAULT_NPZ,
    settings: ReferenceSettings | None = None,
) -> dict[str, Any]:
    """Distil ``settings.student_arch`` from the given teacher weights; see the module doc for the result keys.

    Loss per batch: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, the KL
    summed over classes and averaged over the batch, written inline as in the tutorial. The student
    is initialised from ``torch.manual_seed(seed)`` exactly as kd-hydra initialises it.
    """
    started = time.perf_counter()
    settings = ReferenceSettings() if settings is None else settings
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    splits = load_npz(npz_path) if splits is None else splits
    teacher, student = build_pair(
        teacher_state_dict, splits.num_classes, splits.channels, splits.image_size, seed, settings
    )
    train_loader, test_loader = build_loaders(splits, settings, seed)
    result = distill_loop(teacher, student, train_loader, test_loader, T, alpha, epochs, settings)
    return run_record(result, started, T, alpha, epochs, seed, settings)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tutorial-style KD reference loop (one run; JSON result).")
    add_loop_arguments(parser, teacher_arch="deep_cnn", student_arch="light_cnn", epochs=3)
    parser.add_argument("--npz", default=str(DEFAULT_NPZ), help="dataset .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("--no-cosine", action="store_true", help="constant lr instead of per-epoch cosine decay")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = train_reference_student(
        load_teacher_state_dict(args.teacher_checkpoint),
        args.temperature,
        args.alpha,
        args.epochs,
        args.seed,
        npz_path=args.npz,
        settings=settings_from_args(args, cosine=not args.no_cosine),
    )
    print_json_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
