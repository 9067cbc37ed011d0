"""The tutorial-style KD loop both reference scripts run (``reference_kd.py``, ``reference_tiny_imagenet.py``).

Not a script. Written as the official PyTorch KD tutorial writes it: the teacher under ``torch.no_grad()``
on every batch, the loss inline, ``loss.item()`` per batch. Only the architectures
(``kd_hydra.models.build_model``) come from kd-hydra; nothing of its data or training code is used.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path for kd_hydra)
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_hydra.models import build_model


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


def tutorial_transforms(
    image_size: int, crop_padding: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
    """The tutorial's PIL transforms: random crop with padding + flip + normalise (train), normalise (test)."""
    from torchvision import transforms

    train = transforms.Compose(
        [
            transforms.RandomCrop(image_size, padding=crop_padding),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return train, transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def build_pair(
    state_dict: Mapping[str, Tensor],
    num_classes: int,
    channels: int,
    image_size: int,
    seed: int,
    settings: ReferenceSettings,
) -> tuple[nn.Module, nn.Module]:
    """The frozen teacher with ``state_dict`` loaded (strict, eval mode) and the student, both on the device.

    The student is initialised right after ``torch.manual_seed(seed)``, exactly as kd-hydra initialises it.
    """
    teacher = build_model(settings.teacher_arch, num_classes, channels, image_size)
    teacher.load_state_dict(dict(state_dict), strict=True)
    torch.manual_seed(seed)
    student = build_model(settings.student_arch, num_classes, channels, image_size)
    return teacher.to(settings.device).eval(), student.to(settings.device)


def run_record(
    result: Mapping[str, Any], started: float, T: float, alpha: float, epochs: int, seed: int, settings: Any
) -> dict[str, Any]:
    """``distill_loop``'s result plus the settings and the whole call's wall seconds (since ``started``)."""
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


def add_loop_arguments(parser: argparse.ArgumentParser, teacher_arch: str, student_arch: str, epochs: int) -> None:
    """The arguments every reference loop takes (architectures, T, alpha, schedule, loader, device, output)."""
    parser.add_argument("--teacher-checkpoint", required=True, help="kd-hydra teacher checkpoint (has 'state_dict')")
    parser.add_argument("--teacher-arch", default=teacher_arch)
    parser.add_argument("--student-arch", default=student_arch)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the soft-target term")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    parser.add_argument("--out", default=None, help="also write the JSON result here")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> ReferenceSettings:
    """The :class:`ReferenceSettings` of :func:`add_loop_arguments`' arguments (``extra`` overrides fields)."""
    return ReferenceSettings(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        lr=args.lr,
        teacher_arch=args.teacher_arch,
        student_arch=args.student_arch,
        device=args.device,
        threads=args.threads,
        **extra,
    )
