"""SP, CC, RKD, PKT, VID, NST and KDSVD losses against independent float64 numpy formulas, gradcheck, and
torchdistill's implementations where it has the method (SP, CC's paper kernel, RKD, PKT, VID)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_hydra.losses import (
    align_singular_vectors,
    correlation_congruence_gaussian_loss,
    correlation_congruence_loss,
    kdsvd_loss,
    leading_right_singular_vectors,
    match_spatial,
    nst_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
    vid_loss,
)


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# -- independent references (float64 numpy, from the papers' equations and the reference codes' constants) -----


def np_sp(fs: np.ndarray, ft: np.ndarray, order: int = 2) -> float:
    """``order``: the norm that scales each Gram row (2 in the paper and the reference codes)."""
    n = fs.shape[0]
    a, b = fs.reshape(n, -1), ft.reshape(n, -1)

    def rows(g):
        return g / np.maximum(np.linalg.norm(g, ord=order, axis=1, keepdims=True), 1e-12)

    gs, gt = rows(a @ a.T), rows(b @ b.T)
    return float(((gt - gs) ** 2).sum() / n**2)


def np_cc_repdistiller(es: np.ndarray, et: np.ndarray) -> float:
    delta = np.abs(es - et)
    return float(np.mean([delta[i] @ delta[i + 1] for i in range(len(delta) - 1)]))


def np_cc_gaussian(es: np.ndarray, et: np.ndarray, gamma: float, max_p: int) -> float:
    def correlation(e):
        dots = e @ e.T
        return math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * dots**p for p in range(max_p + 1))

    return float(np.sqrt(((correlation(es) - correlation(et)) ** 2).sum()) / len(es) ** 2)


def np_huber(x: np.ndarray) -> float:
    return float(np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5).mean())


def np_rkd(es: np.ndarray, et: np.ndarray, w_d: float, w_a: float) -> float:
    def distances(e):
        n = len(e)
        d = np.array([[math.sqrt(max(e[i] @ e[i] + e[j] @ e[j] - 2 * e[i] @ e[j], 1e-12)) for j in range(n)]
                      for i in range(n)])  # fmt: skip
        np.fill_diagonal(d, 0.0)
        return d / d[d > 0].mean()

    def angles(e):
        n = len(e)
        return np.array([unit_rows(e[j] - e[i]) @ unit_rows(e[k] - e[i])
                         for i in range(n) for j in range(n) for k in range(n)])  # fmt: skip

    return w_d * np_huber(distances(es) - distances(et)) + w_a * np_huber(angles(es) - angles(et))


def np_pkt(es: np.ndarray, et: np.ndarray, eps: float = 1e-7) -> float:
    def probabilities(e):
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        similarity = (e @ e.T + 1) / 2
        return similarity / similarity.sum(axis=1, keepdims=True)

    p, q = probabilities(es), probabilities(et)
    return float((q * np.log((q + eps) / (p + eps))).mean())


def np_vid(mean: np.ndarray, target: np.ndarray, log_scale: np.ndarray, eps: float) -> float:
    variance = (np.log1p(np.exp(log_scale)) + eps).reshape(1, -1, 1, 1)
    return float((0.5 * ((mean - target) ** 2 / variance + np.log(variance))).mean())


def np_nst(fs: np.ndarray, ft: np.ndarray) -> float:
    def selectivity(f):
        return unit_rows(f.reshape(f.shape[0], f.shape[1], -1))

    def kernel(a, b):
        return np.mean([(a[n, i] @ b[n, j]) ** 2 for n in range(a.shape[0])
                        for i in range(a.shape[1]) for j in range(b.shape[1])])  # fmt: skip

    s, t = selectivity(fs), selectivity(ft)
    return float(kernel(t, t) + kernel(s, s) - 2 * kernel(s, t))


def np_right_singular(f: np.ndarray, n: int, signs_like: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First n right singular vectors (columns, unit norm) and normalised singular values of (HW, C) per sample.

    A singular vector's sign is arbitrary; ``signs_like`` (same shape) picks the sign of another implementation.
    """
    x = f.reshape(f.shape[0], f.shape[1], -1).transpose(0, 2, 1)
    _, s, vh = np.linalg.svd(x, full_matrices=False)
    v = vh.transpose(0, 2, 1)[:, :, :n]
    if signs_like is not None:
        v = v * np.sign((v * signs_like).sum(axis=1, keepdims=True))
    return v, unit_rows(s[:, :n])


def np_kdsvd(g_s: list[np.ndarray], g_t: list[np.ndarray], k: int, teacher_signs: list[np.ndarray]) -> float:
    total, previous = 0.0, None
    for f_s, f_t, signs in zip(g_s, g_t, teacher_signs):
        v_t, s_t = np_right_singular(f_t, k, signs)
        v_s, _ = np_right_singular(f_s, k + 3)
        aligned = np.zeros_like(v_t)
        for n in range(v_t.shape[0]):
            for j in range(k):  # the student vector most parallel to teacher vector j, with the cosine's sign
                cosines = v_s[n].T @ v_t[n][:, j]
                best = int(np.argmax(np.abs(cosines)))
                aligned[n][:, j] = np.sign(cosines[best]) * v_s[n][:, best]
        v_t, v_s = v_t * s_t[:, None, :], aligned * s_t[:, None, :]
        if previous is not None:
            before_s, before_t = previous
            rbf_s = np.exp(-((v_s[:, :, None, :] - before_s[:, None, :, :]) ** 2) / 8)
            rbf_t = np.exp(-((v_t[:, :, None, :] - before_t[:, None, :, :]) ** 2) / 8)
            total += ((rbf_s - rbf_t) ** 2).sum() / f_s.shape[0]
        previous = (v_s, v_t)
    return float(total)


# -- pinned formulas -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sp_matches_formula_for_different_shapes(seed):
    fs, ft = randn(6, 4, 5, 5, seed=seed), randn(6, 8, 3, 3, seed=seed + 10, scale=2.0)
    assert similarity_preserving_loss(fs, ft).item() == pytest.approx(np_sp(fs.numpy(), ft.numpy()), rel=1e-10)
    assert similarity_preserving_loss(fs, 3.0 * fs).item() == pytest.approx(0.0, abs=1e-12)  # scale-invariant


@pytest.mark.parametrize("seed", [0, 1])
def test_cc_matches_both_formulas(seed):
    es, et = randn(7, 5, seed=seed), randn(7, 5, seed=seed + 3)
    assert correlation_congruence_loss(es, et).item() == pytest.approx(np_cc_repdistiller(es.numpy(), et.numpy()))
    for gamma, max_p in [(0.4, 2), (0.1, 4)]:
        expected = np_cc_gaussian(es.numpy(), et.numpy(), gamma, max_p)
        assert correlation_congruence_gaussian_loss(es, et, gamma, max_p).item() == pytest.approx(expected, rel=1e-10)


def test_cc_gaussian_kernel_approaches_the_rbf_of_unit_embeddings():
    """The Taylor series is the paper's approximation of exp(-gamma ||x - y||^2) for L2-normalised rows."""
    from kd_hydra.losses import gaussian_correlation_matrix

    e = F.normalize(randn(5, 6), dim=1)
    exact = torch.exp(-0.4 * torch.cdist(e, e).pow(2))
    torch.testing.assert_close(gaussian_correlation_matrix(e, 0.4, 20), exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("w_d,w_a", [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)])
def test_rkd_matches_formula(w_d, w_a):
    es, et = randn(5, 6, seed=4, scale=3.0), randn(5, 9, seed=5)
    expected = np_rkd(es.numpy(), et.numpy(), w_d, w_a)
    assert rkd_loss(es, et, w_d, w_a).item() == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_rkd_is_invariant_to_scale_and_translation_of_either_side():
    es, et = randn(6, 4, seed=1), randn(6, 4, seed=2)
    base = rkd_loss(es, et, 25.0, 50.0).item()
    assert rkd_loss(4.0 * es + 1.5, 0.5 * et - 2.0, 25.0, 50.0).item() == pytest.approx(base, rel=1e-9)
    assert rkd_loss(es, es * 2.0, 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_pkt_matches_formula(seed):
    es, et = randn(8, 6, seed=seed), randn(8, 10, seed=seed + 1)
    assert pkt_loss(es, et).item() == pytest.approx(np_pkt(es.numpy(), et.numpy()), rel=1e-10)
    assert pkt_loss(es, es).item() == pytest.approx(0.0, abs=1e-12)


def test_vid_matches_formula_and_its_variance_starts_at_init_pred_var():
    from kd_hydra.methods.vid import initial_log_scale

    mean, target, log_scale = randn(3, 4, 5, 5, seed=1), randn(3, 4, 5, 5, seed=2), randn(4, seed=3)
    assert vid_loss(mean, target, log_scale, 1e-5).item() == pytest.approx(
        np_vid(mean.numpy(), target.numpy(), log_scale.numpy(), 1e-5), rel=1e-10
    )
    start = initial_log_scale(5.0, 1e-5)
    assert math.log1p(math.exp(start)) + 1e-5 == pytest.approx(5.0, rel=1e-12)


def test_nst_matches_formula_and_pools_the_larger_map():
    fs, ft = randn(2, 3, 4, 4, seed=6), randn(2, 5, 4, 4, seed=7)
    assert nst_loss(fs, ft).item() == pytest.approx(np_nst(fs.numpy(), ft.numpy()), rel=1e-10)
    large = randn(2, 5, 8, 8, seed=8)
    pooled = large.numpy().reshape(2, 5, 4, 2, 4, 2).mean(axis=(3, 5))
    assert nst_loss(fs, large).item() == pytest.approx(np_nst(fs.numpy(), pooled), rel=1e-10)
    assert nst_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-12)
    a, b = match_spatial(large, fs)
    assert a.shape[2:] == b.shape[2:] == (4, 4)


def test_kdsvd_matches_formula():
    g_s = [randn(3, 4, 5, 5, seed=s) for s in (1, 2, 3)]
    g_t = [randn(3, 4, 4, 4, seed=s) for s in (4, 5, 6)]
    teacher_signs = [leading_right_singular_vectors(f, 2)[0].numpy() for f in g_t]
    expected = np_kdsvd([f.numpy() for f in g_s], [f.numpy() for f in g_t], 2, teacher_signs)
    assert kdsvd_loss(g_s, g_t, 2).item() == pytest.approx(expected, rel=1e-9)


def test_kdsvd_singular_vectors_reconstruct_and_align():
    f = randn(2, 4, 3, 3, seed=9)
    vectors, values = leading_right_singular_vectors(f, 4)
    x = f.reshape(2, 4, 9).transpose(1, 2)
    singular = torch.linalg.svdvals(x)
    torch.testing.assert_close(values, F.normalize(singular, dim=1))
    torch.testing.assert_close(vectors.transpose(1, 2) @ vectors, torch.eye(4, dtype=f.dtype).expand(2, 4, 4))
    torch.testing.assert_close((x @ vectors).norm(dim=1), singular)  # x v_j = sigma_j u_j
    flipped = -vectors[:, :, [1, 0, 3, 2]]
    torch.testing.assert_close(align_singular_vectors(flipped, vectors[:, :, :2]), vectors[:, :, :2])


def test_gradcheck_every_new_loss():
    def check(fn, *inputs):
        assert torch.autograd.gradcheck(fn, tuple(x.clone().requires_grad_(True) for x in inputs))

    check(lambda s: similarity_preserving_loss(s, randn(4, 2, 3, 3, seed=1)), randn(4, 3, 2, 2))
    check(lambda s: correlation_congruence_loss(s, randn(5, 3, seed=1)), randn(5, 3))
    check(lambda s: correlation_congruence_gaussian_loss(s, randn(5, 3, seed=1), 0.4, 2), randn(5, 3))
    check(lambda s: rkd_loss(s, randn(4, 3, seed=1), 25.0, 50.0), randn(4, 3, scale=2.0))
    check(lambda s: pkt_loss(s, randn(5, 4, seed=1)), randn(5, 4))
    check(lambda m, v: vid_loss(m, randn(2, 3, 2, 2, seed=1), v, 1e-5), randn(2, 3, 2, 2), randn(3))
    check(lambda s: nst_loss(s, randn(2, 3, 2, 2, seed=1)), randn(2, 2, 4, 4))
    teacher = [randn(2, 3, 3, 3, seed=s) for s in (1, 2)]
    check(lambda a, b: kdsvd_loss([a, b], teacher, 1), randn(2, 3, 4, 4, seed=3), randn(2, 3, 3, 3, seed=4))


def test_low_precision_features_are_computed_in_float32():
    fs, ft = randn(4, 3, 2, 2).to(torch.bfloat16), randn(4, 3, 2, 2, seed=1).to(torch.bfloat16)
    flat_s, flat_t = fs.reshape(4, -1), ft.reshape(4, -1)
    assert similarity_preserving_loss(fs, ft).dtype == torch.float32
    assert nst_loss(fs, ft).dtype == torch.float32
    assert rkd_loss(flat_s, flat_t, 1.0, 1.0).dtype == torch.float32
    assert pkt_loss(flat_s, flat_t).dtype == torch.float32
    assert correlation_congruence_loss(flat_s, flat_t).dtype == torch.float32


# -- torchdistill's implementations (a test-only dependency) -------------------------------------------------------

from torchdistill.losses import mid_level  # noqa: E402  (the dev extra installs it)


def io(**outputs):
    return {path: {"output": value, "input": value} for path, value in outputs.items()}


def test_sp_differs_from_torchdistill_only_by_its_l1_row_norm():
    """torchdistill's SPKDLoss calls ``normalize(G, 1)``: p=1, an L1 row norm; the paper, RepDistiller and
    mdistiller use the L2 norm (as kd-hydra does). Same formula otherwise."""
    fs, ft = randn(6, 4, 3, 3), randn(6, 8, 2, 2, seed=1)
    theirs = mid_level.SPKDLoss("s", "t", reduction="batchmean")(io(s=fs), io(t=ft)).item()
    assert theirs == pytest.approx(np_sp(fs.numpy(), ft.numpy(), order=1), rel=1e-10)
    assert similarity_preserving_loss(fs, ft).item() == pytest.approx(np_sp(fs.numpy(), ft.numpy()), rel=1e-10)


def test_cc_gaussian_equals_torchdistill():
    es, et = randn(7, 5), randn(7, 5, seed=1)
    theirs = mid_level.CCKDLoss("s", "t", {"type": "gaussian", "gamma": 0.4, "max_p": 2}, "batchmean")(
        io(s=es), io(t=et)
    )
    torch.testing.assert_close(correlation_congruence_gaussian_loss(es, et, 0.4, 2), theirs, rtol=1e-12, atol=0)


def test_rkd_equals_torchdistill():
    es, et = randn(6, 4, 1, 1, scale=2.0), randn(6, 7, 1, 1, seed=1)
    theirs = mid_level.RKDLoss("s", "t", dist_factor=25.0, angle_factor=50.0, reduction="mean")(io(s=es), io(t=et))
    torch.testing.assert_close(rkd_loss(es.flatten(1), et.flatten(1), 25.0, 50.0), theirs, rtol=1e-10, atol=1e-14)


def test_pkt_equals_torchdistill():
    es, et = randn(8, 6), randn(8, 10, seed=1)
    theirs = mid_level.PKTLoss("s", "input", "t", "input")(io(s=es.clone()), io(t=et.clone()))
    torch.testing.assert_close(pkt_loss(es, et), theirs, rtol=1e-12, atol=0)


def test_vid_equals_torchdistill():
    mean, target, log_scale = randn(3, 4, 2, 2), randn(3, 4, 2, 2, seed=1), randn(4, seed=2)
    variance = (torch.log(1.0 + torch.exp(log_scale)) + 1e-5).reshape(1, -1, 1, 1)
    pairs = {"p": {"student": {"path": "s", "io": "output"}, "teacher": {"path": "t", "io": "output"}, "weight": 1}}
    theirs = mid_level.VIDLoss(pairs)(io(s=(mean, variance)), io(t=target))
    torch.testing.assert_close(vid_loss(mean, target, log_scale, 1e-5), theirs, rtol=1e-12, atol=0)
