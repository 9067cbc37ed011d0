"""Distillation losses as pure functions (no Hydra, no state, no modules).

Each public function returns one method's distillation term (no cross-entropy, no warm-up), with the
semantics of the authors' reference code; ``tests/test_losses.py`` pins each against an independent
float64 implementation of the paper's equations.

Hinton et al. (2015)::

    loss = kd_weight * T^2 * KL(softmax(t / T) || softmax(s / T)) + ce_weight * CE(s, y)

The KL term is averaged over the batch; the ``T^2`` factor keeps the soft-target gradients on
the same scale as the hard-target gradients whatever the temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _full_precision(logits: Tensor) -> Tensor:
    """Upcast half-precision logits (autocast output) to float32; leave float32/float64 alone."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over the batch."""
    student_log_probs = F.log_softmax(_full_precision(student_logits) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(_full_precision(teacher_logits) / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score over classes, ``(z - mean) / (eps + std)`` with the unbiased std (Sun et al., CVPR 2024)."""
    logits = _full_precision(logits)
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def cross_entropy(student_logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy on the labels, computed in at least float32 (autocast logits are upcast)."""
    return F.cross_entropy(_full_precision(student_logits), targets)


class KDLoss(NamedTuple):
    """Hinton's loss: the weighted total and its unweighted parts."""

    total: Tensor
    ce: Tensor
    kd: Tensor


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    standardize: bool = False,
) -> KDLoss:
    """Hinton's distillation loss ``kd_weight * T^2 * KL + ce_weight * CE`` (``alpha``: ``kd_weight = alpha``,
    ``ce_weight = 1 - alpha``). ``standardize`` z-scores both logits for the KL term only (Sun et al.)."""
    ce = cross_entropy(student_logits, targets)
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    kd = soft_target_kl(student_logits, teacher_logits, temperature)
    return KDLoss(total=kd_weight * kd + ce_weight * ce, ce=ce, kd=kd)


# -- logit methods ---------------------------------------------------------------------------------------

#: Subtracted from the target logit (after the temperature) to drop it from NCKD's softmax, as in
#: mdistiller's reference (``exp(-1000)`` is 0 in every float type; no host sync, unlike boolean indexing).
NCKD_MASK_OFFSET = 1000.0

#: Added to the norms' product in DIST's Pearson correlation (the official code's value).
DIST_EPS = 1e-8


def _target_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """1.0 at each row's target class, 0.0 elsewhere (same dtype and shape as ``logits``)."""
    return torch.zeros_like(logits).scatter_(1, targets.reshape(-1, 1), 1.0)


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, each ``T^2 * sum KL / N``.

    TCKD is the KL between the binary distributions ``[p_target, 1 - p_target]`` of teacher and student
    (softmax at temperature T); NCKD the KL between their softmaxes over the non-target classes only.
    """
    student = _full_precision(student_logits) / temperature
    teacher = _full_precision(teacher_logits) / temperature
    mask = _target_mask(student, targets)
    masked_student = student - NCKD_MASK_OFFSET * mask
    masked_teacher = teacher - NCKD_MASK_OFFSET * mask
    # Binary log-probabilities, exact in log space: log p_target and log(1 - p_target) = lse(others) - lse(all).
    student_all, teacher_all = student.logsumexp(1, keepdim=True), teacher.logsumexp(1, keepdim=True)
    student_binary = torch.cat(
        [(student * mask).sum(1, keepdim=True) - student_all, masked_student.logsumexp(1, keepdim=True) - student_all],
        dim=1,
    )
    teacher_binary = torch.cat(
        [(teacher * mask).sum(1, keepdim=True) - teacher_all, masked_teacher.logsumexp(1, keepdim=True) - teacher_all],
        dim=1,
    )
    batch = student.shape[0]
    scale = temperature**2 / batch
    tckd = F.kl_div(student_binary, teacher_binary, reduction="sum", log_target=True) * scale
    nckd = F.kl_div(F.log_softmax(masked_student, 1), F.softmax(masked_teacher, 1), reduction="sum") * scale
    return alpha * tckd + beta * nckd


def _mean_pearson(a: Tensor, b: Tensor, eps: float = DIST_EPS) -> Tensor:
    """Mean over rows of the Pearson correlation of ``a[i]`` and ``b[i]`` (cosine of the mean-centred rows)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, temperature: float) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): ``T^2 * (beta * inter + gamma * intra)`` on ``y = softmax(z / T)``.

    ``inter = 1 - mean_i pearson(y_s[i, :], y_t[i, :])`` (per sample, across classes);
    ``intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])`` (per class, across the batch).
    """
    y_s = F.softmax(_full_precision(student_logits) / temperature, dim=1)
    y_t = F.softmax(_full_precision(teacher_logits) / temperature, dim=1)
    inter = 1.0 - _mean_pearson(y_s, y_t)
    intra = 1.0 - _mean_pearson(y_s.transpose(0, 1), y_t.transpose(0, 1))
    return temperature**2 * (beta * inter + gamma * intra)


# -- feature methods -------------------------------------------------------------------------------------


def attention_map(feature: Tensor, p: float) -> Tensor:
    """Zagoruyko & Komodakis' spatial attention: ``normalize(mean_c |f|^p)``, flattened per sample, unit L2 norm."""
    return F.normalize(feature.abs().pow(p).mean(1).reshape(feature.shape[0], -1), dim=1)


def attention_transfer_loss(
    student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], p: float = 2.0
) -> Tensor:
    """Attention transfer (ICLR 2017): ``sum over stage pairs of mean((at(f_s) - at(f_t))^2)``.

    Features are ``(N, C, H, W)``; channel counts may differ. Where spatial sizes differ, the larger map is
    adaptive-average-pooled to the smaller one first (as mdistiller/RepDistiller do).
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"attention transfer needs matching, non-empty stage lists "
            f"(got {len(student_features)} student and {len(teacher_features)} teacher maps)"
        )
    total = None
    for f_s, f_t in zip(student_features, teacher_features):
        f_s, f_t = _full_precision(f_s), _full_precision(f_t)
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        if tuple(f_s.shape[2:]) != size:
            f_s = F.adaptive_avg_pool2d(f_s, size)
        if tuple(f_t.shape[2:]) != size:
            f_t = F.adaptive_avg_pool2d(f_t, size)
        term = (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
        total = term if total is None else total + term
    return total


def hint_loss(student_regressed: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets (Romero et al., ICLR 2015): mean squared error between the regressed student hint and the teacher's."""
    if student_regressed.shape != teacher_feature.shape:
        raise ValueError(
            f"hint shapes differ: student {tuple(student_regressed.shape)}, teacher {tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(_full_precision(student_regressed), _full_precision(teacher_feature))


# -- CRD (Tian et al., ICLR 2020) ------------------------------------------------------------------------

#: RepDistiller's epsilon in the NCE ratios.
CRD_EPS = 1e-7


def crd_nce_loss(scores: Tensor, num_data: int, eps: float = CRD_EPS) -> Tensor:
    """CRD's NCE objective for one view, averaged over the batch (RepDistiller's ``ContrastLoss``).

    ``scores`` is ``(N, 1 + K)``: column 0 the positive's normalised score ``P_pos``, then K negatives'.
    With the noise probability ``Pn = 1 / num_data``::

        -[log(P_pos / (P_pos + K Pn + eps)) + sum_k log(K Pn / (P_neg_k + K Pn + eps))]
    """
    scores = _full_precision(scores)
    k = scores.shape[1] - 1
    noise = k / float(num_data)
    positive = scores[:, 0]
    negatives = scores[:, 1:]
    log_positive = torch.log(positive / (positive + noise + eps))
    log_negatives = torch.log(noise / (negatives + noise + eps))
    return -(log_positive.sum() + log_negatives.sum()) / scores.shape[0]
