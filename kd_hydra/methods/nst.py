"""Neuron selectivity transfer (Huang & Wang, 2017): ``ce_weight * CE + nst_weight * sum_j NST_j``.

Every ``stageN`` output of the student is paired with the teacher's (both need the same number of stages, as
RepDistiller's ``feat[1:-1]`` and mdistiller's ``feats[1:]``); ``NST_j`` is :func:`kd_hydra.losses.nst_loss`
on pair j (squared MMD with a degree-2 polynomial kernel). RepDistiller trains NST without an initialisation
stage (``train_student.py`` runs ``init`` only for AB, FT and FSP), so there is no ``init_epochs``. No
trainable parts.
"""

from __future__ import annotations

from kd_hydra.losses import cross_entropy, nst_loss

from .base import LossOutput, MethodBatch
from .points import PairedStagesMethod


class NST(PairedStagesMethod):
    """Neuron selectivity transfer over all stage pairs; parts ``ce`` and ``nst`` (the summed terms, unweighted)."""

    parts = ("ce", "nst")

    def __init__(self, *, ce_weight: float, nst_weight: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.nst_weight = nst_weight

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits, batch.targets)
        terms = [nst_loss(s, t) for s, t in zip(*self.requested(batch.student_features, batch.teacher_features))]
        nst = sum(terms[1:], terms[0])
        return self.weighted_loss(batch, {"ce": ce, "nst": nst})
