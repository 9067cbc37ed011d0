"""The initialization stage some methods run before distillation (RepDistiller's ``init_epochs``: AB, FT, FSP).

For ``epochs`` passes over the training batches, the method's :meth:`~kd_hydra.methods.base.DistillMethod.init_loss`
on the requested feature points alone trains :meth:`~kd_hydra.methods.base.DistillMethod.init_parameters` with a
fresh optimizer at a constant learning rate (``method.init_lr``, else the optimizer's own), as RepDistiller's
``helper/pretrain.py`` does. The student runs (in train mode) only for methods whose stage trains it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from kd_hydra.stores.teacher_outputs import TeacherSource
from kd_hydra.train.runtime import Runtime
from kd_hydra.train.trainer import BatchSource, DivergedError

from .base import DistillMethod

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def run_init_stage(
    student: nn.Module,
    method: DistillMethod,
    teacher: TeacherSource,
    pipeline: BatchSource,
    runtime: Runtime,
    optimizer_factory: OptimizerFactory,
    epochs: int,
    student_features: Callable[[], Mapping[str, Tensor]] | None = None,
) -> list[float]:
    """Run ``epochs`` epochs of ``method``'s initialization stage; returns each epoch's mean init loss.

    ``teacher`` must record the method's teacher feature points (a live teacher) and ``student_features`` the
    student's (the recorder the distillation stage uses). Parameters keep their ``requires_grad`` afterwards.
    """
    if epochs <= 0:
        return []
    if method.init_trains_student and student_features is None:
        raise ValueError(f"{type(method).__name__}'s initialization stage needs the student's feature recorder")
    parameters = list(dict.fromkeys(method.init_parameters(student)))
    trainable = [p.requires_grad for p in parameters]
    means: list[float] = []
    try:
        for p in parameters:
            p.requires_grad_(True)
        optimizer = optimizer_factory(parameters)
        if method.init_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = method.init_lr
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
        student.train(method.init_trains_student)
        method.train()
        for epoch in range(epochs):
            teacher.begin_epoch(epoch)
            total = torch.zeros((), dtype=torch.float64, device=runtime.device)
            seen = 0
            for images, _, sample_indices in pipeline.train_batches(epoch):
                teacher_out = teacher(images, sample_indices)
                with runtime.autocast():
                    features: Mapping[str, Tensor] = {}
                    if method.init_trains_student:
                        student(images)
                        features = student_features()
                    loss = method.init_loss(features, teacher_out.features)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.detach().double() * images.shape[0]
                seen += images.shape[0]
            mean = (total / max(seen, 1)).item()
            if not math.isfinite(mean):
                raise DivergedError(
                    f"loss.init_lr: the {method.name} initialization loss became {mean} in epoch {epoch + 1}; "
                    "lower loss.init_lr (or optimizer.lr)"
                )
            means.append(mean)
            log.info("%s initialization epoch %d/%d: loss %.4f", method.name, epoch + 1, epochs, mean)
    finally:
        for p, flag in zip(parameters, trainable):
            p.requires_grad_(flag)
    return means
