"""Tutorial-style KD on Tiny ImageNet: the baseline of ``compare_tiny_imagenet.py``.

What a PyTorch user writes first: ``torchvision.datasets.ImageFolder`` over ``train/`` (the
``<wnid>/images/*.JPEG`` layout; classes sorted by WordNet id, as kd-hydra numbers them), a small
``Dataset`` over ``val/images`` and ``val/val_annotations.txt``, PIL transforms
(``RandomCrop(64, padding=8)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize`` with the
statistics of ``conf/dataset/tiny_imagenet.yaml``), ``DataLoader(num_workers=2)``, the teacher in eval
mode under ``torch.no_grad()`` on every batch, ``.item()`` per step, SGD with a per-epoch cosine
schedule. The training loop is ``_tutorial_loop.distill_loop`` (the CIFAR reference's). Only the
architectures (``kd_hydra.models.build_model``) come from kd-hydra; the teacher weights are the
``state_dict`` of a kd-hydra ``model.pt`` or ``kd_hydra.models.checkpoints.save_checkpoint`` file (also the
untrained one of ``compare_tiny_imagenet.py --untrained-teacher``). Result keys as
``reference_kd.train_reference_student``'s; ``images_per_second`` covers the training loop only
(DataLoader, teacher forward, step; evaluation excluded), ``epoch_seconds`` include evaluation.

    python benchmarks/reference_tiny_imagenet.py --data-dir ROOT --teacher-checkpoint model.pt \\
        --teacher-arch resnet56 --student-arch resnet20 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import RGB_CHANNELS, SHARED_DATA, print_json_result

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64
CROP_PADDING = 8
# conf/dataset/tiny_imagenet.yaml normalize (the suite uses the same numbers)
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2770, 0.2691, 0.2821)
DEFAULT_DATA_DIR = SHARED_DATA / "tiny-imagenet-subset"


def pil_rgb(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as handle:
        return Image.open(handle).convert("RGB")


class TinyImageNetVal:
    """``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``; class index from ``class_to_idx``."""

    def __init__(self, folder: str, class_to_idx: dict[str, int], transform: Callable[[Any], Any]) -> None:
        self.samples: list[tuple[str, int]] = []
        with open(os.path.join(folder, "val", "val_annotations.txt"), encoding="utf-8") as handle:
            for line in handle:
                fields = line.rstrip("\n").split("\t")
                if len(fields) >= 2 and fields[1] in class_to_idx:
                    self.samples.append((os.path.join(folder, "val", "images", fields[0]), class_to_idx[fields[1]]))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(pil_rgb(path)), label


def build_loaders(folder: str, batch_size: int, num_workers: int, seed: int) -> tuple[Any, Any, int]:
    """ImageFolder train loader (augmented, shuffled), val loader, number of classes."""
    import torch
    from _tutorial_loop import tutorial_transforms
    from torch.utils.data import DataLoader
    from torchvision import datasets

    train_transform, test_transform = tutorial_transforms(IMAGE_SIZE, CROP_PADDING, MEAN, STD)
    train_set = datasets.ImageFolder(os.path.join(folder, "train"), transform=train_transform)
    test_set = TinyImageNetVal(folder, train_set.class_to_idx, test_transform)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, test_loader, len(train_set.classes)


def train_reference_student(
    data_dir: str | Path, teacher_checkpoint: str | Path, T: float, alpha: float, epochs: int, seed: int, settings: Any
) -> dict[str, Any]:
    """Distil ``settings.student_arch`` from the checkpoint's weights on Tiny ImageNet under ``data_dir``."""
    import torch
    from _tutorial_loop import build_pair, distill_loop, load_teacher_state_dict, run_record

    started = time.perf_counter()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    folder = os.path.join(str(data_dir), TINY_IMAGENET_FOLDER)
    train_loader, test_loader, num_classes = build_loaders(folder, settings.batch_size, settings.num_workers, seed)
    teacher, student = build_pair(
        load_teacher_state_dict(teacher_checkpoint), num_classes, RGB_CHANNELS, IMAGE_SIZE, seed, settings
    )
    result = distill_loop(teacher, student, train_loader, test_loader, T, alpha, epochs, settings)
    record = run_record(result, started, T, alpha, epochs, seed, settings)
    return {**record, "num_train": len(train_loader.dataset), "num_test": len(test_loader.dataset)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from _tutorial_loop import add_loop_arguments

    parser = argparse.ArgumentParser(description="Tutorial-style KD on Tiny ImageNet (one run; JSON result).")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help=f"folder holding {TINY_IMAGENET_FOLDER}/")
    add_loop_arguments(parser, teacher_arch="resnet56", student_arch="resnet20", epochs=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from _tutorial_loop import settings_from_args

    settings = settings_from_args(args, eval_batch_size=args.batch_size)
    result = train_reference_student(
        args.data_dir, args.teacher_checkpoint, args.temperature, args.alpha, args.epochs, args.seed, settings
    )
    print_json_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
