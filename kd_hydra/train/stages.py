"""Training stages: what one run of epochs of the loop trains, as data (:class:`Stage`).

A fit is a sequence of stages. The training of a teacher, a baseline or a distilled student is one stage
(:func:`training_stage`); a method's initialization stage (RepDistiller's ``init_epochs``: AB, FT, FSP) is an
ordinary stage before it (:func:`initialization_stage`), built from what the method declares
(:meth:`~kd_hydra.methods.base.DistillMethod.init_stage`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kd_hydra.methods.base import DistillMethod, LossOutput, MethodBatch
from kd_hydra.models.features import unwrap
from kd_hydra.train.schedules import constant_schedule

#: ``factory(param_groups) -> optimizer`` (an optimizer's config node instantiated with ``_partial_``).
OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
#: ``factory(optimizer, epochs=E) -> scheduler`` (see :mod:`kd_hydra.train.schedules`).
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

#: The config key a diverged initialization stage is told to lower.
INIT_LR_KEY = "loss.init_lr"


@dataclass(frozen=True)
class Stage:
    """``epochs`` epochs of one loss over the training batches with a fresh optimizer and scheduler.

    - ``name`` labels the stage in logs and progress bars; ``divergence_key`` is the config key a NaN loss names.
    - ``loss(batch)`` gives the loss and its ``parts`` (history columns); ``begin_epoch(epoch, epochs)``, when
      set, runs before each epoch (the method's warm-ups).
    - ``parameter_groups`` are the parameters it trains (the optimizer's groups): during the stage they, and no
      other parameter of ``eval_modules``/``train_modules``, require gradients.
    - Each epoch puts ``eval_modules`` in eval mode, then ``train_modules`` in train mode.
    - ``records``: each epoch is evaluated and writes a history row, snapshots and the resumable state; a stage
      that does not record is rerun from its start when interrupted.
    """

    name: str
    epochs: int
    loss: Callable[[MethodBatch], LossOutput]
    parts: tuple[str, ...]
    parameter_groups: tuple[tuple[nn.Parameter, ...], ...]
    optimizer: OptimizerFactory
    scheduler: SchedulerFactory
    divergence_key: str
    records: bool
    eval_modules: tuple[nn.Module, ...] = ()
    train_modules: tuple[nn.Module, ...] = ()
    begin_epoch: Callable[[int, int], None] | None = None

    def build_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """A fresh optimizer over ``parameter_groups`` and its scheduler for ``epochs``."""
        optimizer = self.optimizer([{"params": list(group)} for group in self.parameter_groups])
        return optimizer, self.scheduler(optimizer, epochs=self.epochs)

    def set_modes(self) -> None:
        for module in self.eval_modules:
            module.eval()
        for module in self.train_modules:
            module.train()

    @contextlib.contextmanager
    def trainable(self) -> Iterator[None]:
        """While open, exactly the stage's parameters (among its modules') require gradients; then as before."""
        chosen = {id(p) for group in self.parameter_groups for p in group}
        modules = (*self.eval_modules, *self.train_modules)
        owned = (p for module in modules for p in module.parameters())
        parameters = list(dict.fromkeys((*owned, *(p for group in self.parameter_groups for p in group))))
        before = [p.requires_grad for p in parameters]
        try:
            for p in parameters:
                p.requires_grad_(id(p) in chosen)
            yield
        finally:
            for p, flag in zip(parameters, before):
                p.requires_grad_(flag)


def training_stage(
    name: str,
    epochs: int,
    model: nn.Module,
    method: DistillMethod,
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory,
    divergence_key: str,
) -> Stage:
    """The stage training ``model`` through ``method`` (a teacher, a baseline, a distilled student), recorded.

    Its optimizer's groups: every parameter of ``model``, then the method's own trainable parts (if any).
    """
    groups = [tuple(model.parameters())]
    own = tuple(p for p in method.parameters() if p.requires_grad)
    if own:
        groups.append(own)
    return Stage(
        name=name,
        epochs=epochs,
        loss=method,
        parts=tuple(method.parts),
        parameter_groups=tuple(groups),
        optimizer=optimizer,
        scheduler=scheduler,
        divergence_key=divergence_key,
        records=True,
        train_modules=(model, method),
        begin_epoch=method.begin_epoch,
    )


def initialization_stage(method: DistillMethod, student: nn.Module, optimizer: OptimizerFactory) -> Stage | None:
    """The stage of ``method``'s :meth:`~kd_hydra.methods.base.DistillMethod.init_stage` on ``student``, or None.

    As RepDistiller's ``helper/pretrain.py``: the student (and the method) in eval mode, the declared modules in
    train mode, ``optimizer`` over their parameters alone at a constant learning rate (the stage's ``lr``, else
    the optimizer's own); not recorded.
    """
    init = method.init_stage(unwrap(student))
    if init is None or init.epochs == 0:
        return None
    parameters = tuple(dict.fromkeys(p for module in init.modules for p in module.parameters()))

    def at_init_lr(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        built = optimizer(groups)
        if init.lr is not None:
            for group in built.param_groups:
                group["lr"] = init.lr
        return built

    def loss(batch: MethodBatch) -> LossOutput:
        return LossOutput(init.loss(batch), {})

    name, groups = f"{method.name} initialization", (parameters,)
    return Stage(name, init.epochs, loss, (), groups, at_init_lr, constant_schedule, INIT_LR_KEY, records=False,
                 eval_modules=(student, method), train_modules=init.modules)  # fmt: skip
