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

import math
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


# -- relational and feature-statistics methods (RepDistiller / mdistiller semantics) ---------------------


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two ``(N, C, H, W)`` maps to the smaller one's ``H x W`` (by height)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, tuple(f_t.shape[2:]))
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, tuple(f_s.shape[2:]))
    return f_s, f_t


def similarity_preserving_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """SP (Tung & Mori, ICCV 2019): ``||rownorm(F_t F_t^T) - rownorm(F_s F_s^T)||_F^2 / N^2`` on flattened features.

    ``rownorm`` L2-normalises each row of the ``N x N`` Gram matrix; channels and sizes may differ.
    """
    batch = f_s.shape[0]
    f_s = _full_precision(f_s).reshape(batch, -1)
    f_t = _full_precision(f_t).reshape(batch, -1)
    gram_s = F.normalize(f_s @ f_s.t(), dim=1)
    gram_t = F.normalize(f_t @ f_t.t(), dim=1)
    return (gram_t - gram_s).pow(2).sum() / (batch * batch)


def correlation_congruence_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """CC as RepDistiller's ``Correlation`` computes it (its CIFAR-100 table): with ``delta = |e_s - e_t|``,
    ``mean_i sum_d delta[i, d] * delta[i + 1, d]`` over consecutive samples of the batch (``(N, D)`` embeddings).
    """
    delta = (_full_precision(e_s) - _full_precision(e_t)).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def gaussian_correlation_matrix(e: Tensor, gamma: float, max_p: int) -> Tensor:
    """Peng et al.'s Gaussian-RBF correlation of the rows of ``e``, Taylor-expanded to order ``max_p``:
    ``exp(-2 gamma) * sum_{p=0..max_p} (2 gamma)^p / p! * (e e^T)^p`` (elementwise powers)."""
    dots = e @ e.t()
    matrix = torch.ones_like(dots)
    for p in range(1, max_p + 1):
        matrix = matrix + (2.0 * gamma) ** p / math.factorial(p) * dots.pow(p)
    return matrix * math.exp(-2.0 * gamma)


def correlation_congruence_gaussian_loss(e_s: Tensor, e_t: Tensor, gamma: float, max_p: int) -> Tensor:
    """CC as in the paper (Peng et al., ICCV 2019) and torchdistill: ``||C_s - C_t||_F / N^2`` (RBF C)."""
    e_s, e_t = _full_precision(e_s), _full_precision(e_t)
    difference = gaussian_correlation_matrix(e_s, gamma, max_p) - gaussian_correlation_matrix(e_t, gamma, max_p)
    return difference.pow(2).sum().sqrt() / (e_s.shape[0] ** 2)


#: RKD's floor on squared distances before the square root (RepDistiller/mdistiller).
RKD_EPS = 1e-12


def _pairwise_distances(e: Tensor, eps: float = RKD_EPS) -> Tensor:
    """Euclidean distances between the rows of ``e`` (squared distances floored at ``eps``), 0 on the diagonal."""
    squared = e.pow(2).sum(1)
    distances = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2.0 * e @ e.t()).clamp(min=eps).sqrt()
    return distances * (1.0 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device))


def _mean_normalised_distances(e: Tensor) -> Tensor:
    distances = _pairwise_distances(e)
    positive = distances > 0
    return distances / ((distances * positive).sum() / positive.sum())


def _triplet_angles(e: Tensor) -> Tensor:
    """``cos`` of the angle at j between i and k for every triplet (i, j, k), flattened (N^3 values)."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).reshape(-1)


def rkd_loss(e_s: Tensor, e_t: Tensor, distance_weight: float, angle_weight: float) -> Tensor:
    """RKD (Park et al., CVPR 2019): ``w_d * huber(psi_D) + w_a * huber(psi_A)`` on flattened ``(N, ...)`` embeddings.

    ``psi_D``: pairwise distances divided by their mean over the non-zero ones; ``psi_A``: cosines of the
    angles of every triplet; huber is the smooth L1 loss (beta 1), averaged. The teacher's side carries no gradient.
    """
    e_s = _full_precision(e_s).reshape(e_s.shape[0], -1)
    e_t = _full_precision(e_t).reshape(e_t.shape[0], -1).detach()
    distance = F.smooth_l1_loss(_mean_normalised_distances(e_s), _mean_normalised_distances(e_t))
    angle = F.smooth_l1_loss(_triplet_angles(e_s), _triplet_angles(e_t))
    return distance_weight * distance + angle_weight * angle


#: PKT's epsilon in the norms and the KL (the authors' code).
PKT_EPS = 1e-7


def _cosine_probabilities(e: Tensor, eps: float) -> Tensor:
    e = e / (e.pow(2).sum(1, keepdim=True).sqrt() + eps)
    e = torch.where(torch.isnan(e), torch.zeros_like(e), e)
    similarity = (e @ e.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = PKT_EPS) -> Tensor:
    """PKT (Passalis & Tefas, ECCV 2018): ``mean_ij q_ij log((q_ij + eps) / (p_ij + eps))``.

    ``p``/``q``: the student's/teacher's cosine similarities of ``(N, D)`` embeddings, mapped to [0, 1] by
    ``(cos + 1) / 2`` and normalised per row into conditional probabilities.
    """
    p = _cosine_probabilities(_full_precision(e_s), eps)
    q = _cosine_probabilities(_full_precision(e_t), eps)
    return (q * torch.log((q + eps) / (p + eps))).mean()


def vid_loss(predicted_mean: Tensor, f_t: Tensor, log_scale: Tensor, eps: float) -> Tensor:
    """VID (Ahn et al., CVPR 2019): mean Gaussian negative log-likelihood ``0.5 ((mu - t)^2 / var + log var)``.

    ``var = log(1 + exp(log_scale)) + eps`` per teacher channel; ``predicted_mean`` is the student regressor's output,
    the same shape as ``f_t`` ``(N, C, H, W)``. The constant ``0.5 log 2 pi`` is left out, as in the reference.
    """
    variance = (torch.log(1.0 + torch.exp(_full_precision(log_scale))) + eps).reshape(1, -1, 1, 1)
    mean, target = _full_precision(predicted_mean), _full_precision(f_t)
    return (0.5 * ((mean - target).pow(2) / variance + torch.log(variance))).mean()


def _polynomial_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{n, i, j} (<a[n, i], b[n, j]>)^2`` over the rows (channels) of ``(N, C, HW)`` maps."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """NST (Huang & Wang, 2017): squared MMD with the kernel ``k(x, y) = (x^T y)^2`` between channel activations.

    Each channel's ``H x W`` map is one sample, L2-normalised; the larger map is pooled to the smaller size first.
    ``MMD^2 = mean k(t, t') + mean k(s, s') - 2 mean k(s, t)``; the teacher-only term carries no gradient.
    """
    f_s, f_t = match_spatial(_full_precision(f_s), _full_precision(f_t))
    s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
    t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
    return _polynomial_kernel_mean(t, t).detach() + _polynomial_kernel_mean(s, s) - 2.0 * _polynomial_kernel_mean(s, t)


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def leading_right_singular_vectors(feature: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """KDSVD's SVD of a ``(N, C, H, W)`` map seen as ``(N, HW, C)``: the first ``n`` right singular vectors
    ``(N, C, n)`` and singular values ``(N, n)``, each L2-normalised (vectors over C, values over the n)."""
    x = feature.float() if feature.dtype in (torch.float16, torch.bfloat16) else feature
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)
    _, values, vectors_h = torch.linalg.svd(x, full_matrices=False)
    vectors = _finite_or_zero(vectors_h.transpose(1, 2))[:, :, :n]
    values = _finite_or_zero(values)[:, :n]
    return F.normalize(vectors, dim=1), F.normalize(values, dim=1)


def align_singular_vectors(student: Tensor, teacher: Tensor) -> Tensor:
    """For each teacher vector, the student vector of largest ``|cos|``, signed to agree: ``(N, C, k)``."""
    cosine = student.transpose(1, 2) @ teacher
    best = cosine.abs().max(dim=1, keepdim=True).values
    selection = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return student @ selection


#: KDSVD's RBF bandwidth term: ``exp(-(a - b)^2 / 8)`` (the authors' code).
KDSVD_RBF_DIVISOR = 8.0


def kdsvd_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], k: int) -> Tensor:
    """KDSVD (Lee et al., ECCV 2018), as in RepDistiller: RBF relations between consecutive stages' singular vectors.

    Per stage: the teacher's first ``k`` right singular vectors, the student's first ``k + 3`` aligned to them,
    both scaled by the teacher's normalised singular values. For stages ``i > 0``:
    ``sum (exp(-(v_s^i - v_s^{i-1})^2 / 8) - exp(-(v_t^i - v_t^{i-1})^2 / 8))^2 / N`` over channel pairs (c, c')
    and the k vectors (non-finite terms count 0); summed over stages. Stage channel counts must match.
    """
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise ValueError("kdsvd needs matching lists of at least two stage maps")
    total = None
    previous: tuple[Tensor, Tensor] | None = None
    for f_s, f_t in zip(student_features, teacher_features):
        v_t, s_t = leading_right_singular_vectors(f_t, k)
        v_s, _ = leading_right_singular_vectors(f_s, k + 3)
        v_s = align_singular_vectors(v_s, v_t)
        v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
        if previous is not None:
            before_s, before_t = previous
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - before_s.unsqueeze(1)).pow(2) / KDSVD_RBF_DIVISOR)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - before_t.unsqueeze(1)).pow(2) / KDSVD_RBF_DIVISOR)
            term = _finite_or_zero((rbf_s - rbf_t.detach()).pow(2)).sum() / f_s.shape[0]
            total = term if total is None else total + term
        previous = (v_s, v_t)
    return total


# -- AB, FT, FSP, OFD, ReviewKD (feature methods of RepDistiller and mdistiller) ------------------------

#: RepDistiller's scale of each activation-boundary term (after dividing by the batch size).
AB_SCALE = 3.0 / 1000.0

#: OFD's margin rule: channels whose pre-activation is negative with probability <= this get ``-3 * std``.
OFD_MIN_NEGATIVE_PROBABILITY = 0.001

#: Pooled sizes of ReviewKD's hierarchical context loss (levels at least the map's size are skipped).
HCL_LEVELS = (4, 2, 1)


def _require_pairs(kind: str, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> None:
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{kind} needs matching, non-empty lists (got {len(student)} student, {len(teacher)} teacher)")


def activation_boundary_loss(
    student_preacts: Sequence[Tensor], teacher_preacts: Sequence[Tensor], margin: float = 1.0
) -> Tensor:
    """Activation boundaries (Heo et al., AAAI 2019) as in RepDistiller: ``sum_i 2^(i-n+1) * 3/1000 * L_i / N``.

    ``L_i`` sums ``(s + m)^2`` where ``s > -m`` and ``t <= 0`` and ``(s - m)^2`` where ``s <= m`` and ``t > 0``
    over the (connected) student pre-activation ``s`` and the teacher's ``t`` of pair i (same shapes).
    """
    _require_pairs("activation boundary loss", student_preacts, teacher_preacts)
    count = len(student_preacts)
    total = None
    for index, (s, t) in enumerate(zip(student_preacts, teacher_preacts)):
        s, t = _full_precision(s), _full_precision(t)
        off = ((s > -margin) & (t <= 0)).to(s.dtype)
        on = ((s <= margin) & (t > 0)).to(s.dtype)
        term = ((s + margin).pow(2) * off + (s - margin).pow(2) * on).sum() / s.shape[0]
        term = 2.0 ** (index - count + 1) * AB_SCALE * term
        total = term if total is None else total + term
    return total


def factor_map(factor: Tensor, p: float = 2.0) -> Tensor:
    """RepDistiller's factor descriptor: ``normalize(mean_c f^p)`` flattened per sample (unit L2 norm)."""
    return F.normalize(factor.pow(p).mean(1).reshape(factor.shape[0], -1), dim=1)


def factor_transfer_loss(student_factor: Tensor, teacher_factor: Tensor, p1: float = 2.0, p2: float = 1.0) -> Tensor:
    """Factor transfer (Kim et al., NeurIPS 2018) as in RepDistiller: ``mean |F(s) - F(t)|^p2``, F = :func:`factor_map`.

    The spatially larger factor is average-pooled to the other's size first; ``p2 == 1`` is the L1 distance.
    """
    s, t = match_spatial(_full_precision(student_factor), _full_precision(teacher_factor))
    difference = factor_map(s, p1) - factor_map(t, p1)
    return difference.abs().mean() if p2 == 1 else difference.pow(p2).mean()


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """Yim et al.'s flow matrix ``G[n, j, i] = mean_hw top[n, j] * bottom[n, i]``, shape ``(N, C_top, C_bottom)``.

    The spatially larger map is average-pooled to the other's size first.
    """
    bottom, top = match_spatial(_full_precision(bottom), _full_precision(top))
    bottom, top = bottom.flatten(2), top.flatten(2)
    return torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2]


def fsp_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor]) -> Tensor:
    """FSP (CVPR 2017) as in RepDistiller: ``sum_i mean((G_s,i - G_t,i)^2)`` over consecutive map pairs (i, i+1)."""
    _require_pairs("fsp loss", student_maps, teacher_maps)
    if len(student_maps) < 2:
        raise ValueError("fsp loss needs at least two feature maps per network")
    total = None
    for i in range(len(student_maps) - 1):
        s = fsp_matrix(student_maps[i], student_maps[i + 1])
        t = fsp_matrix(teacher_maps[i], teacher_maps[i + 1])
        if s.shape != t.shape:
            raise ValueError(f"fsp matrices differ in shape: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        term = (s - t).pow(2).mean()
        total = term if total is None else total + term
    return total


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin ``E[x | x < 0]`` for ``x ~ N(beta, gamma^2)`` (Heo et al., ICCV 2019), float64.

    Channels whose ``P(x < 0) <= 0.001`` get ``-3 |gamma|``; a zero ``gamma`` gives ``min(beta, 0)``.
    """
    std = bn_weight.detach().double().abs()
    mean = bn_bias.detach().double()
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    z = mean / safe_std
    negative = torch.special.ndtr(-z)
    density = torch.exp(-(z**2) / 2) / (2 * torch.pi) ** 0.5
    truncated = -std * density / negative.clamp_min(torch.finfo(torch.float64).tiny) + mean
    margin = torch.where(negative > OFD_MIN_NEGATIVE_PROBABILITY, truncated, -3 * std)
    return torch.where(std > 0, margin, mean.clamp_max(0.0))


def ofd_partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 summed over ``(C, H, W)`` and averaged over the batch; ``margin`` is per channel ``(C,)``.

    The teacher's response is ``max(t, margin)``; the squared difference counts where ``s > max(t, margin)``
    or ``t > 0`` (no penalty where both are below the teacher's negative response).
    """
    student, teacher = _full_precision(student), _full_precision(teacher)
    margin = margin.to(student).reshape(1, -1, 1, 1)
    target = torch.maximum(teacher, margin)
    mask = ((student > target) | (teacher > 0)).to(student.dtype)
    return ((student - target).pow(2) * mask).sum() / student.shape[0]


def ofd_loss(student_preacts: Sequence[Tensor], teacher_preacts: Sequence[Tensor], margins: Sequence[Tensor]) -> Tensor:
    """OFD over n pairs: ``sum_i partial_l2(s_i, pool(t_i), m_i) / 2^(n-1-i)``, t_i pooled to s_i's size."""
    _require_pairs("ofd loss", student_preacts, teacher_preacts)
    count = len(student_preacts)
    total = None
    for index, (s, t, m) in enumerate(zip(student_preacts, teacher_preacts, margins)):
        t = _full_precision(t)
        if tuple(t.shape[2:]) != tuple(s.shape[2:]):
            t = F.adaptive_avg_pool2d(t, tuple(s.shape[2:]))
        term = ofd_partial_l2(s, t, m) / 2.0 ** (count - 1 - index)
        total = term if total is None else total + term
    return total


def hierarchical_context_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor]) -> Tensor:
    """ReviewKD's HCL (Chen et al., CVPR 2021): per pair, MSE at full size and at 4x4, 2x2, 1x1 average pools.

    Levels not smaller than the map's height are skipped; the k-th level used weighs ``2^-k`` and each pair's
    sum is divided by the sum of its weights. Pairs are summed.
    """
    _require_pairs("hierarchical context loss", student_maps, teacher_maps)
    total = None
    for s, t in zip(student_maps, teacher_maps):
        s, t = _full_precision(s), _full_precision(t)
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= s.shape[2]:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(s, (level, level)), F.adaptive_avg_pool2d(t, (level, level)))
            loss = loss + weight * pooled
            weights += weight
        term = loss / weights
        total = term if total is None else total + term
    return total


# -- MLKD (Jin et al., CVPR 2023, as in the logit-standardization repository) ------------------------------

#: MLKD's temperatures besides the base one, in the reference code's order.
MLKD_EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def class_correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's class-level term: ``sum((P_t^T P_t - P_s^T P_s)^2) / C``, ``P = softmax(z / T)`` of shape (N, C)."""
    p_s = F.softmax(_full_precision(student_logits) / temperature, dim=1)
    p_t = F.softmax(_full_precision(teacher_logits) / temperature, dim=1)
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / p_s.shape[1]


def batch_correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """MLKD's instance-level term: ``sum((P_t P_t^T - P_s P_s^T)^2) / N``, ``P = softmax(z / T)`` of shape (N, C)."""
    p_s = F.softmax(_full_precision(student_logits) / temperature, dim=1)
    p_t = F.softmax(_full_precision(teacher_logits) / temperature, dim=1)
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / p_s.shape[0]


def below_median_fraction(values: Tensor) -> Tensor:
    """The fraction of ``values`` at or below their median (linear interpolation, as ``numpy.percentile(v, 50)``)."""
    values = values.detach().reshape(-1)
    return (values <= torch.quantile(values, 0.5)).to(values.dtype).mean()


class MLKDTerms(NamedTuple):
    """MLKD's three unweighted terms (each summed over the five temperatures)."""

    kd: Tensor
    cc: Tensor
    bc: Tensor


def mlkd_loss(
    student_weak: Tensor,
    teacher_weak: Tensor,
    student_strong: Tensor,
    teacher_strong: Tensor,
    temperature: float,
    standardize: bool = False,
) -> MLKDTerms:
    """MLKD's distillation terms on a weak and a strong view, as the logit-standardization repository computes them.

    Temperatures ``(T, 3, 5, 2, 6)``. ``kd = f * sum_T KL_T(weak) + KL_T, KL_3, KL_5 (strong) + KL_2, KL_6 (weak)``,
    ``cc = g * sum_T class_correlation_T(weak)``, ``bc = f * sum_T batch_correlation_T(weak)``, where ``KL_T`` is
    :func:`soft_target_kl` (on z-scored logits with ``standardize``), ``f`` the fraction of samples whose teacher
    confidence (max softmax of the weak view at T = 1) is at or below the median and ``g`` the fraction of classes
    whose summed teacher probability is: the reference multiplies batch-mean terms by these masks before averaging,
    so they act as these scalars. The strong view's last two KL terms read the weak view, as in the reference.
    """
    temperatures = (temperature, *MLKD_EXTRA_TEMPERATURES)
    teacher_probs = F.softmax(_full_precision(teacher_weak).detach(), dim=1)
    sample_fraction = below_median_fraction(teacher_probs.max(dim=1).values)
    class_fraction = below_median_fraction(teacher_probs.sum(dim=0))

    def kl(student: Tensor, teacher: Tensor, t: float) -> Tensor:
        if standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        return soft_target_kl(student, teacher, t)

    weak = [kl(student_weak, teacher_weak, t) for t in temperatures]
    strong = [kl(student_strong, teacher_strong, t) for t in temperatures[:3]]
    strong += [kl(student_weak, teacher_weak, t) for t in temperatures[3:]]
    kd = sample_fraction * torch.stack(weak).sum() + torch.stack(strong).sum()
    cc = (
        class_fraction
        * torch.stack([class_correlation_loss(student_weak, teacher_weak, t) for t in temperatures]).sum()
    )
    bc = (
        sample_fraction
        * torch.stack([batch_correlation_loss(student_weak, teacher_weak, t) for t in temperatures]).sum()
    )
    return MLKDTerms(kd=kd, cc=cc, bc=bc)
