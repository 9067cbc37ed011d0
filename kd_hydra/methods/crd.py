"""Contrastive representation distillation (Tian et al., ICLR 2020): ``ce_weight * CE + crd_weight * CRD``.

On ``pre_logit`` of both networks: embedding heads (:class:`CRDEmbed`, Linear + L2 norm) to ``feat_dim``, a
memory bank over the training samples (:class:`ContrastMemory`, RepDistiller's 'exact' mode: K negatives of
other classes per sample), and the NCE objective (:func:`kd_hydra.losses.crd_nce_loss`) on both views, summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kd_hydra.errors import ConfigError, DataError
from kd_hydra.losses import crd_nce_loss, cross_entropy
from kd_hydra.models.features import PRE_LOGIT

from .base import FeatureShapes, LossOutput, MethodBatch
from .checks import require_finite, require_positive_int
from .points import PooledFeatureMethod


def _workers() -> int:
    """The number of data-parallel workers of this job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _mean_over_workers(values: Tensor) -> Tensor:
    if _workers() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= _workers()
    return values


def _rows_of_all_workers(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor's rows from every worker, concatenated in rank order (the tensors themselves in one process)."""
    world = _workers()
    if world == 1:
        return tensors
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    gathered = []
    for tensor in tensors:
        padded = torch.cat((tensor, tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))))
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:size] for part, size in zip(parts, sizes)]))
    return tuple(gathered)


class CRDEmbed(nn.Module):
    """CRD's embedding head: flatten, ``Linear(in_dim, feat_dim)``, L2-normalise each row."""

    def __init__(self, in_dim: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)


#: The value of a normalisation constant not yet estimated (constants are positive once set).
Z_UNSET = -1.0

#: Sort key given to same-class samples so they are never drawn as negatives (uniform draws are < 1).
_EXCLUDED = 2.0


class ContrastMemory(nn.Module):
    """CRD's memory bank over sample indices (RepDistiller's ``ContrastMemory``, 'exact' negatives).

    Two memories of L2-normalised embeddings, ``memory_student`` and ``memory_teacher`` (num_data x feat_dim,
    initialised uniformly in ``[-s, s]``, ``s = 1 / sqrt(feat_dim / 3)``). :meth:`forward` scores each anchor
    against its own memory row and K negatives, ``exp(<v, m> / T) / Z``, then updates the rows of the batch
    (``m * old + (1 - m) * new``, renormalised). ``Z`` per view is estimated once, on the first batch, as
    ``mean(exp(score / T)) * num_data`` and kept in a buffer, so a resumed run continues exactly. Negatives
    are K distinct samples of other classes (``train_targets``), drawn with torch's RNG on the bank's device.
    """

    def __init__(
        self, feat_dim: int, train_targets: Tensor, nce_k: int, temperature: float = 0.07, momentum: float = 0.5
    ) -> None:
        super().__init__()
        targets = train_targets.reshape(-1).long().cpu()
        num_data = targets.numel()
        counts = torch.bincount(targets)
        fewest_negatives = int(num_data - counts[counts > 0].max())
        if fewest_negatives < 1:
            raise ValueError("CRD needs training samples of at least two classes (negatives come from other classes)")
        self.nce_k = min(int(nce_k), fewest_negatives)  # a smaller one is reported by CRD.fit_warnings
        self.num_data = num_data
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        bound = 1.0 / math.sqrt(feat_dim / 3.0)
        self.register_buffer("memory_student", torch.rand(num_data, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_teacher", torch.rand(num_data, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("z_student", torch.tensor(Z_UNSET))
        self.register_buffer("z_teacher", torch.tensor(Z_UNSET))
        # Labels by sample index: derived from the data at setup, so not part of the state dict.
        self.register_buffer("train_targets", targets, persistent=False)

    def draw_contrast_indices(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(N, 1 + K)`` sample indices: each row's own index, then K distinct samples of other classes."""
        indices = indices.to(self.train_targets.device)
        same_class = self.train_targets.unsqueeze(0) == self.train_targets[indices].unsqueeze(1)
        keys = torch.rand(same_class.shape, device=same_class.device, generator=generator)
        keys = keys.masked_fill(same_class, _EXCLUDED)
        negatives = keys.topk(self.nce_k, dim=1, largest=False, sorted=False).indices
        return torch.cat([indices.unsqueeze(1), negatives], dim=1)

    def _scores(self, anchor: Tensor, memory: Tensor, contrast_indices: Tensor) -> Tensor:
        """``exp(<anchor_i, memory[j]> / T)`` for each row's contrast indices j, shape ``(N, 1 + K)``."""
        memory = memory.detach()
        if memory.shape[0] <= contrast_indices.shape[1] * memory.shape[1]:
            # Score every sample once (N x num_data) and pick: less memory than gathering N x (1+K) x D rows.
            # (a copy: autograd keeps it, and the rows are updated in place right after)
            dots = torch.mm(anchor, memory.clone().t()).gather(1, contrast_indices)
        else:
            dots = torch.bmm(memory[contrast_indices], anchor.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.temperature)

    def forward(
        self, student_embed: Tensor, teacher_embed: Tensor, indices: Tensor, contrast_indices: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Scores of (student anchor vs teacher memory, teacher anchor vs student memory); then updates the bank."""
        if contrast_indices is None:
            contrast_indices = self.draw_contrast_indices(indices)
        indices = indices.to(self.memory_student.device)
        contrast_indices = contrast_indices.to(self.memory_student.device)
        with torch.autocast(device_type=student_embed.device.type, enabled=False):
            student_embed, teacher_embed = student_embed.float(), teacher_embed.float()
            student_scores = self._scores(student_embed, self.memory_teacher, contrast_indices)
            teacher_scores = self._scores(teacher_embed, self.memory_student, contrast_indices)
            with torch.no_grad():
                # Estimated once (first batch); torch.where keeps it free of host syncs.
                student_mean, teacher_mean = _mean_over_workers(
                    torch.stack((student_scores.mean(), teacher_scores.mean()))
                )
                self.z_student.copy_(torch.where(self.z_student < 0, student_mean * self.num_data, self.z_student))
                self.z_teacher.copy_(torch.where(self.z_teacher < 0, teacher_mean * self.num_data, self.z_teacher))
            student_scores = student_scores / self.z_student.detach().clone()
            teacher_scores = teacher_scores / self.z_teacher.detach().clone()
            with torch.no_grad():  # every worker's rows: the bank stays the same on every worker
                indices, student_rows, teacher_rows = _rows_of_all_workers(
                    indices, student_embed.detach(), teacher_embed.detach()
                )
                self._update(self.memory_student, student_rows, indices)
                self._update(self.memory_teacher, teacher_rows, indices)
        return student_scores, teacher_scores

    def _update(self, memory: Tensor, embed: Tensor, indices: Tensor) -> None:
        rows = memory[indices] * self.momentum + embed * (1.0 - self.momentum)
        memory.index_copy_(0, indices, F.normalize(rows, dim=1))

    def extra_repr(self) -> str:
        return (
            f"num_data={self.num_data}, feat_dim={self.memory_student.shape[1]}, nce_k={self.nce_k}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )


class CRD(PooledFeatureMethod):
    """CRD; parts ``ce`` and ``crd`` (both views' NCE, unweighted). Trainable: ``embed_student``, ``embed_teacher``;
    state: ``memory`` (buffers ``memory_student``, ``memory_teacher``, ``z_student``, ``z_teacher``)."""

    parts = ("ce", "crd")

    def __init__(
        self, *, ce_weight: float, crd_weight: float, feat_dim: int, nce_k: int, nce_t: float, momentum: float
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.crd_weight = crd_weight
        self.feat_dim = feat_dim
        self.nce_k = nce_k
        self.nce_t = nce_t
        self.momentum = momentum
        self.embed_student: CRDEmbed | None = None
        self.embed_teacher: CRDEmbed | None = None
        self.memory: ContrastMemory | None = None

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        super().validate_config(loss)
        require_positive_int(loss, "feat_dim")
        require_positive_int(loss, "nce_k")
        require_finite(loss, "nce_t", minimum=0.0, strict_minimum=True)
        if require_finite(loss, "momentum", minimum=0.0, maximum=1.0) == 1.0:
            raise ConfigError("loss.momentum", "must be >= 0 and < 1 (1 would never update the memory)")

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        self.embed_student = CRDEmbed(math.prod(student_shapes[PRE_LOGIT]), self.feat_dim)
        self.embed_teacher = CRDEmbed(math.prod(teacher_shapes[PRE_LOGIT]), self.feat_dim)
        try:
            self.memory = ContrastMemory(self.feat_dim, train_targets, self.nce_k, self.nce_t, self.momentum)
        except ValueError as error:
            raise DataError(f"crd: {error}") from None

    def fit_warnings(self, epochs: int) -> list[str]:
        if self.memory is None or self.memory.nce_k == self.nce_k:
            return []
        return [
            f"loss.nce_k: {self.nce_k} clamped to {self.memory.nce_k}, the fewest other-class samples a class has "
            f"among the {self.memory.num_data} training images"
        ]

    def forward(self, batch: MethodBatch) -> LossOutput:
        if self.memory is None or self.embed_student is None or self.embed_teacher is None:
            raise RuntimeError("CRD.setup() must run before the first batch")
        ce = cross_entropy(batch.student_logits, batch.targets)
        (student,), (teacher,) = self.requested(batch.student_features, batch.teacher_features)
        student, teacher = self.embed_student(student), self.embed_teacher(teacher)
        student_scores, teacher_scores = self.memory(student, teacher, batch.sample_indices)
        num_data = self.memory.num_data
        crd = crd_nce_loss(student_scores, num_data) + crd_nce_loss(teacher_scores, num_data)
        return self.weighted_loss(batch, {"ce": ce, "crd": crd})
