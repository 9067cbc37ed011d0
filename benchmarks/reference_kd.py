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
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so that `python benchmarks/reference_kd.py` finds kd_hydra
    sys.path.insert(0, str(REPO_ROOT))

from kd_hydra.models import build_model  # noqa: E402  (only the architectures are shared)

DEFAULT_NPZ = REPO_ROOT.parent / "shared" / "data" / "cifar10-prefix.npz"
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


@dataclass(frozen=True)
class ReferenceSettings:
    """Everything besides T, alpha, epochs and seed; defaults match the suite's ``optimizer=sgd scheduler=cosine``."""

    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 2
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    cosine: bool = True  # lr * 0.5 * (1 + cos(pi * epoch / epochs)), stepped per epoch; False: constant
    teacher_arch: str = "deep_cnn"
    student_arch: str = "light_cnn"
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads in the main process; None leaves torch's default


def build_loaders(splits: Splits, settings: ReferenceSettings, seed: int) -> tuple[DataLoader, DataLoader]:
    """The tutorial's loaders: augmented shuffled train split, plain test split, ``num_workers`` each."""
    mean, std = channel_mean_std(splits.x_train)
    size = splits.image_size
    train_transform = transforms.Compose(
        [
            transforms.RandomCrop(size, padding=CROP_PADDING),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    test_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
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


def build_teacher(state_dict: Mapping[str, Tensor], splits: Splits, settings: ReferenceSettings) -> nn.Module:
    """The frozen teacher with ``state_dict`` loaded (strict), on the device, in eval mode."""
    teacher = build_model(settings.teacher_arch, splits.num_classes, splits.channels, splits.image_size)
    teacher.load_state_dict(dict(state_dict), strict=True)
    return teacher.to(settings.device).eval()


def load_teacher_state_dict(checkpoint: str | Path) -> dict[str, Tensor]:
    """The weights of a kd-hydra checkpoint (or any ``{"state_dict": ...}`` file), loaded with weights_only."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def test_accuracy(model: nn.Module, loader: DataLoader, device: str) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``loader``, as the tutorial's ``test`` function."""
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return 100.0 * correct / total


def distill_loop(
    teacher: nn.Module,
    student: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    T: float,
    alpha: float,
    epochs: int,
    settings: ReferenceSettings,
) -> dict[str, Any]:
    """The tutorial's training loop (teacher forward on every batch); keys as :func:`train_reference_student`'s.

    Shared with ``reference_tiny_imagenet.py``. The optimizer (SGD, ``settings``' lr, momentum, weight
    decay, Nesterov) and the per-epoch cosine schedule are built here.
    """
    device = settings.device
    ce_loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov,
    )
    decay = (lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))) if settings.cosine else (lambda _: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    soft_target_loss_weight, ce_loss_weight = alpha, 1.0 - alpha

    epoch_seconds: list[float] = []
    epoch_losses: list[float] = []
    test_accs: list[float] = []
    train_seconds, train_images = 0.0, 0
    for _ in range(epochs):
        synchronize(device)
        epoch_start = time.perf_counter()
        teacher.eval()  # teacher set to evaluation mode
        student.train()  # student to train mode
        running_loss = 0.0
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            # Forward pass with the teacher model: no gradients kept for it
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            student_logits = student(inputs)
            # Soften the student logits with a softmax first, then log(); soften the teacher's with softmax
            soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
            soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
            # KL(teacher || student), scaled by T^2 as in "Distilling the knowledge in a neural network"
            soft_targets_loss = (
                torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)
            )
            label_loss = ce_loss(student_logits, labels)
            loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            train_images += labels.size(0)
        synchronize(device)
        train_seconds += time.perf_counter() - epoch_start
        scheduler.step()
        epoch_losses.append(running_loss / len(train_loader))
        test_accs.append(test_accuracy(student, test_loader, device))
        epoch_seconds.append(time.perf_counter() - epoch_start)

    return {
        "final_test_acc": test_accs[-1],
        "images_per_second": train_images / train_seconds if train_seconds > 0 else float("nan"),
        "epoch_seconds": epoch_seconds,
        "epoch_losses": epoch_losses,
        "test_accs": test_accs,
    }


def train_reference_student(
    teacher_state_dict: Mapping[str, Tensor],
    T: float,
    alpha: float,
    epochs: int,
    seed: int,
    splits: Splits | None = None,
    npz_path: str | Path = DEFAULT_NPZ,
    settings: ReferenceSettings = ReferenceSettings(),
) -> dict[str, Any]:
    """Distil ``settings.student_arch`` from the given teacher weights; see the module doc for the result keys.

    Loss per batch: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, the KL
    summed over classes and averaged over the batch, written inline as in the tutorial. The student
    is initialised from ``torch.manual_seed(seed)`` exactly as kd-hydra initialises it.
    """
    started = time.perf_counter()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    splits = load_npz(npz_path) if splits is None else splits
    device = settings.device
    teacher = build_teacher(teacher_state_dict, splits, settings)
    torch.manual_seed(seed)
    student = build_model(settings.student_arch, splits.num_classes, splits.channels, splits.image_size).to(device)
    train_loader, test_loader = build_loaders(splits, settings, seed)

    result = distill_loop(teacher, student, train_loader, test_loader, T, alpha, epochs, settings)
    return {
        **result,
        "wall_seconds": time.perf_counter() - started,
        "temperature": T,
        "alpha": alpha,
        "epochs": epochs,
        "seed": seed,
        "settings": asdict(settings),
        "threads": torch.get_num_threads(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Tutorial-style KD reference loop (one run; JSON result).")
    parser.add_argument("--teacher-checkpoint", required=True, help="kd-hydra teacher model.pt (has 'state_dict')")
    parser.add_argument("--npz", default=str(DEFAULT_NPZ), help="dataset .npz (x_train, y_train, x_test, y_test)")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the soft-target term")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--no-cosine", action="store_true", help="constant lr instead of per-epoch cosine decay")
    parser.add_argument("--teacher-arch", default="deep_cnn")
    parser.add_argument("--student-arch", default="light_cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = ReferenceSettings(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        lr=args.lr,
        cosine=not args.no_cosine,
        teacher_arch=args.teacher_arch,
        student_arch=args.student_arch,
        device=args.device,
        threads=args.threads,
    )
    result = train_reference_student(
        load_teacher_state_dict(args.teacher_checkpoint),
        args.temperature,
        args.alpha,
        args.epochs,
        args.seed,
        npz_path=args.npz,
        settings=settings,
    )
    text = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
