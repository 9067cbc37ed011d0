"""Evaluating a trained model without training: top-1, top-5, accuracy per class and the confusion matrix."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kd_hydra.records import schema
from kd_hydra.records.files import atomic_write_text
from kd_hydra.train.runtime import Runtime


@dataclass(frozen=True)
class Evaluation:
    """Counts of one pass: ``confusion[i, j]`` = images of class i predicted as j; ``top5_hits`` over all images."""

    confusion: Tensor
    top5_hits: int

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return 100.0 * float(self.confusion.diag().sum()) / max(self.images, 1)

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_hits / max(self.images, 1)

    def per_class(self) -> list[tuple[int, int, float | None]]:
        """(images, correct, accuracy %) per class; accuracy None for a class without test images."""
        rows = []
        for images, correct in zip(self.confusion.sum(dim=1).tolist(), self.confusion.diag().tolist()):
            rows.append((images, correct, 100.0 * correct / images if images else None))
        return rows


@torch.inference_mode()
def evaluate_classes(
    model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], runtime: Runtime, num_classes: int
) -> Evaluation:
    """The confusion matrix and top-5 hits of ``model`` over ``batches`` (one host sync at the end)."""
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=runtime.device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=runtime.device)
    for images, targets in batches:
        with runtime.autocast():
            logits = model(images).float()
        predicted = logits.argmax(dim=1)
        confusion += torch.bincount(targets * num_classes + predicted, minlength=num_classes * num_classes)
        top = logits.topk(min(schema.TOP5, num_classes), dim=1).indices
        top5_hits += (top == targets[:, None]).any(dim=1).sum()
    return Evaluation(confusion.view(num_classes, num_classes).cpu(), int(top5_hits))


def write_evaluation(out_dir: Path, evaluation: Evaluation, classes: Sequence[str]) -> None:
    """``per_class.csv`` and ``confusion_matrix.csv`` (see :mod:`kd_hydra.records.schema`), each written atomically."""
    per_class = io.StringIO()
    writer = csv.writer(per_class, lineterminator="\n")
    writer.writerow(schema.PER_CLASS_COLUMNS)
    for index, (images, correct, accuracy) in enumerate(evaluation.per_class()):
        writer.writerow([index, classes[index], images, correct, "" if accuracy is None else f"{accuracy:.6g}"])
    atomic_write_text(out_dir / schema.PER_CLASS_FILE, per_class.getvalue())
    matrix = io.StringIO()
    writer = csv.writer(matrix, lineterminator="\n")
    writer.writerow(["true\\predicted", *classes])
    for name, row in zip(classes, evaluation.confusion.tolist()):
        writer.writerow([name, *row])
    atomic_write_text(out_dir / schema.CONFUSION_FILE, matrix.getvalue())
