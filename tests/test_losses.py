"""The KD loss against independent formulas (numpy, float64), and the properties the math promises."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_helpers import method_from_yaml

from kd_hydra.losses import cross_entropy, kd_loss, soft_target_kl
from kd_hydra.methods import MethodBatch
from kd_hydra.methods.ce import CrossEntropy
from kd_hydra.methods.kd import KD


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reference_kd(s, t, y, temperature, alpha):
    """alpha * T^2 * mean_n KL(p_t || p_s) + (1 - alpha) * mean_n -log softmax(s)[y], in float64 numpy."""
    s, t = s.astype(np.float64), t.astype(np.float64)
    p_t, p_s = np_softmax(t / temperature), np_softmax(s / temperature)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean()
    ce = -np.log(np_softmax(s)[np.arange(len(y)), y]).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce, ce, temperature**2 * kl


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, generator=generator) * 3
    teacher = torch.randn(16, 10, generator=generator) * 3
    targets = torch.randint(0, 10, (16,), generator=generator)
    return student.double(), teacher.double(), targets


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_kd_loss_matches_independent_formula(batch, temperature, alpha):
    s, t, y = batch
    expected_total, expected_ce, expected_kd = reference_kd(s.numpy(), t.numpy(), y.numpy(), temperature, alpha)
    parts = kd_loss(s, t, y, temperature, 1 - alpha, alpha)
    assert parts.total.item() == pytest.approx(expected_total, rel=1e-5)
    assert parts.ce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert parts.kd.item() == pytest.approx(expected_kd, rel=1e-5)


def test_alpha_zero_is_cross_entropy(batch):
    s, t, y = batch
    assert kd_loss(s, t, y, 4.0, 1.0, 0.0).total.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_alpha_one_is_t_squared_kl(batch):
    s, t, y = batch
    temperature = 3.0
    kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
    assert kd_loss(s, t, y, temperature, 0.0, 1.0).total.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)


def test_kd_term_is_zero_for_identical_logits_and_positive_otherwise(batch):
    s, t, _ = batch
    assert soft_target_kl(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_kl(s, t, 4.0).item() > 0


def test_invariant_to_per_sample_logit_shifts(batch):
    s, t, y = batch
    shift_s, shift_t = torch.randn(16, 1, dtype=s.dtype) * 5, torch.randn(16, 1, dtype=s.dtype) * 5
    base = kd_loss(s, t, y, 2.0, 0.5, 0.5).total
    shifted = kd_loss(s + shift_s, t + shift_t, y, 2.0, 0.5, 0.5).total
    assert shifted.item() == pytest.approx(base.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_gradient_is_t_times_probability_gap(batch, temperature):
    """d(T^2 KL)/ds = T * (softmax(s/T) - softmax(t/T)) / N: the T^2 factor keeps it O(1) in T."""
    s, t, _ = batch
    s = s.clone().requires_grad_(True)
    soft_target_kl(s, t, temperature).backward()
    expected = temperature * (F.softmax(s.detach() / temperature, 1) - F.softmax(t / temperature, 1)) / s.shape[0]
    torch.testing.assert_close(s.grad, expected.to(s.grad.dtype), rtol=1e-4, atol=1e-7)


def test_high_temperature_gradient_approaches_logit_matching(batch):
    """Hinton et al. sec. 2.1: for T >> |logits| and zero-mean logits, the gradient is (s - t) / (N C)."""
    s, t, _ = batch
    s = (s - s.mean(1, keepdim=True)).clone().requires_grad_(True)
    t = t - t.mean(1, keepdim=True)
    soft_target_kl(s, t, 1000.0).backward()
    expected = (s.detach() - t) / (s.shape[0] * s.shape[1])
    torch.testing.assert_close(s.grad, expected, rtol=1e-2, atol=1e-3 * expected.abs().max().item())


def test_gradient_weights_follow_alpha(batch):
    s, t, y = batch
    grads = {}
    for alpha in (0.0, 0.3, 1.0):
        student = s.clone().requires_grad_(True)
        kd_loss(student, t, y, 2.0, 1 - alpha, alpha).total.backward()
        grads[alpha] = student.grad
    torch.testing.assert_close(grads[0.3], 0.7 * grads[0.0] + 0.3 * grads[1.0])


def test_kd_and_ce_methods_wrap_the_functions(batch):
    s, t, y = batch
    method = method_from_yaml(KD, temperature=2.0, alpha=0.25)
    assert method.uses_teacher and not CrossEntropy.uses_teacher
    output = method(MethodBatch(s, y, torch.arange(len(y)), t))
    expected_total, expected_ce, expected_kd = reference_kd(s.numpy(), t.numpy(), y.numpy(), 2.0, 0.25)
    assert output.total.item() == pytest.approx(expected_total, rel=1e-9)
    assert output.parts["kd"].item() == pytest.approx(expected_kd, rel=1e-9)
    assert output.parts["ce"].item() == pytest.approx(expected_ce, rel=1e-9)
    ce = CrossEntropy()(MethodBatch(s, y, torch.arange(len(y))))
    assert ce.total.item() == pytest.approx(expected_ce, rel=1e-9) and list(ce.parts) == ["ce"]
    assert cross_entropy(s, y).item() == pytest.approx(expected_ce, rel=1e-9)


def test_low_precision_logits_are_computed_in_float32(batch):
    s, t, y = batch
    low = kd_loss(s.to(torch.bfloat16), t.to(torch.bfloat16), y, 4.0, 0.5, 0.5).total
    assert low.dtype == torch.float32


# -- DKD, DIST, attention transfer, FitNets hints, CRD: independent float64 numpy implementations ------------

from kd_hydra.losses import (  # noqa: E402
    attention_transfer_loss,
    crd_nce_loss,
    dist_loss,
    dkd_loss,
    hint_loss,
    standardize_logits,
)
from kd_hydra.methods.crd import ContrastMemory  # noqa: E402

TEMPERATURES = [0.5, 1.0, 2.0, 4.0, 8.0]


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """sum over everything of p * (log p - log q), with 0 log 0 = 0."""
    safe = p > 0
    return float((p[safe] * (np.log(p[safe]) - np.log(q[safe]))).sum())


def reference_dkd(s, t, y, alpha, beta, temperature):
    """Zhao et al. eq. (1)-(4): TCKD on [p_t, 1 - p_t], NCKD on the softmax over the non-target classes."""
    n, c = s.shape
    p_s, p_t = np_softmax(s / temperature), np_softmax(t / temperature)
    rows = np.arange(n)
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], 1)
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], 1)
    tckd = np_kl(b_t, b_s)
    nckd = 0.0
    for i in range(n):
        keep = np.arange(c) != y[i]
        q_s = np_softmax((s[i, keep] / temperature)[None])[0]
        q_t = np_softmax((t[i, keep] / temperature)[None])[0]
        nckd += np_kl(q_t, q_s)
    return temperature**2 * (alpha * tckd + beta * nckd) / n


def np_pearson(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + 1e-8)


def reference_dist(s, t, beta, gamma, temperature):
    """Huang et al. eq. (5)-(8): 1 - mean Pearson over samples (rows) and over classes (columns)."""
    y_s, y_t = np_softmax(s / temperature), np_softmax(t / temperature)
    inter = 1 - np.mean([np_pearson(y_s[i], y_t[i]) for i in range(len(y_s))])
    intra = 1 - np.mean([np_pearson(y_s[:, j], y_t[:, j]) for j in range(y_s.shape[1])])
    return temperature**2 * (beta * inter + gamma * intra)


def np_avg_pool(f, size):
    """Adaptive average pooling for sizes that divide evenly (what the tests use)."""
    n, c, h, w = f.shape
    oh, ow = size
    return f.reshape(n, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))


def reference_at(student, teacher, p):
    """Zagoruyko & Komodakis eq. (2) as in the reference code: mean squared gap of unit-norm attention maps."""
    total = 0.0
    for f_s, f_t in zip(student, teacher):
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        f_s, f_t = np_avg_pool(f_s, size), np_avg_pool(f_t, size)
        maps = []
        for f in (f_s, f_t):
            a = (np.abs(f) ** p).mean(axis=1).reshape(len(f), -1)
            maps.append(a / np.linalg.norm(a, axis=1, keepdims=True))
        total += ((maps[0] - maps[1]) ** 2).mean()
    return total


def reference_nce(scores, num_data, eps=1e-7):
    """Tian et al. eq. (18) with RepDistiller's eps: positive vs K noise samples at Pn = 1 / num_data."""
    k = scores.shape[1] - 1
    m_pn = k / num_data
    loss = 0.0
    for row in scores:
        loss -= np.log(row[0] / (row[0] + m_pn + eps))
        loss -= np.log(m_pn / (row[1:] + m_pn + eps)).sum()
    return loss / len(scores)


@pytest.fixture
def logits100():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(12, 7, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(12, 7, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, 7, (12,), generator=generator)
    return student, teacher, targets


def test_standardize_logits_is_the_unbiased_z_score(logits100):
    s, _, _ = logits100
    z = s.numpy()
    expected = (z - z.mean(1, keepdims=True)) / (1e-7 + z.std(1, ddof=1, keepdims=True))
    np.testing.assert_allclose(standardize_logits(s).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 8.0), (1.0, 0.0), (0.0, 1.0), (0.5, 2.0)])
def test_dkd_matches_independent_formula(logits100, temperature, alpha, beta):
    s, t, y = logits100
    expected = reference_dkd(s.numpy(), t.numpy(), y.numpy(), alpha, beta, temperature)
    assert dkd_loss(s, t, y, alpha, beta, temperature).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_dkd_with_unit_weights_exceeds_kd(logits100):
    """Zhao et al. eq. (4): KD = TCKD + (1 - p_t) NCKD, so TCKD + NCKD exceeds KD unless p_t = 0."""
    s, t, y = logits100
    kd = soft_target_kl(s, t, 2.0).item()
    assert dkd_loss(s, t, y, 1.0, 1.0, 2.0).item() > kd


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta,gamma", [(1.0, 1.0), (2.0, 2.0), (1.0, 0.0), (0.0, 3.0)])
def test_dist_matches_independent_formula(logits100, temperature, beta, gamma):
    s, t, _ = logits100
    expected = reference_dist(s.numpy(), t.numpy(), beta, gamma, temperature)
    assert dist_loss(s, t, beta, gamma, temperature).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_dist_is_near_zero_for_identical_logits_and_positive_otherwise(logits100):
    s, t, _ = logits100
    assert dist_loss(s, s, 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # only the 1e-8 eps
    assert dist_loss(s, t, 1.0, 1.0, 1.0).item() > 0.1


@pytest.fixture
def feature_pairs():
    generator = torch.Generator().manual_seed(2)
    student = [
        torch.randn(3, 4, 8, 8, generator=generator, dtype=torch.float64),
        torch.randn(3, 5, 4, 4, generator=generator, dtype=torch.float64),
    ]
    teacher = [
        torch.randn(3, 6, 4, 4, generator=generator, dtype=torch.float64),  # smaller: student pooled
        torch.randn(3, 2, 8, 8, generator=generator, dtype=torch.float64),
    ]  # larger: teacher pooled
    return student, teacher


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_attention_transfer_matches_independent_formula(feature_pairs, p):
    student, teacher = feature_pairs
    expected = reference_at([f.numpy() for f in student], [f.numpy() for f in teacher], p)
    assert attention_transfer_loss(student, teacher, p).item() == pytest.approx(expected, rel=1e-9)


def test_attention_transfer_rejects_unpaired_stages(feature_pairs):
    student, teacher = feature_pairs
    with pytest.raises(ValueError):
        attention_transfer_loss(student, teacher[:1])


def test_hint_loss_is_mean_squared_error(feature_pairs):
    student, teacher = feature_pairs
    s, t = student[1], teacher[0][:, :5]
    expected = ((s.numpy() - t.numpy()) ** 2).mean()
    assert hint_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        hint_loss(student[0], teacher[0])


@pytest.mark.parametrize("num_data", [50, 1000, 50000])
def test_crd_nce_matches_independent_formula(num_data):
    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(5, 9, generator=generator, dtype=torch.float64) * 2e-3
    expected = reference_nce(scores.numpy(), num_data)
    assert crd_nce_loss(scores, num_data).item() == pytest.approx(expected, rel=1e-10)


def test_gradcheck_every_public_function(logits100, feature_pairs):
    s, t, y = logits100
    s = s[:5].clone().requires_grad_(True)
    t, y = t[:5], y[:5]
    assert torch.autograd.gradcheck(lambda z: standardize_logits(z), (s,))
    assert torch.autograd.gradcheck(lambda z: dkd_loss(z, t, y, 1.0, 8.0, 4.0), (s,))
    assert torch.autograd.gradcheck(lambda z: dkd_loss(z, t, y, 0.5, 2.0, 1.0), (s,))
    assert torch.autograd.gradcheck(lambda z: dist_loss(z, t, 2.0, 2.0, 4.0), (s,))
    student, teacher = feature_pairs
    f_s = [f[:2].clone().requires_grad_(True) for f in student]
    f_t = [f[:2] for f in teacher]
    assert torch.autograd.gradcheck(lambda a, b: attention_transfer_loss([a, b], f_t, 2.0), tuple(f_s), fast_mode=True)
    h = student[1][:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: hint_loss(z, teacher[0][:2, :5]), (h,))
    scores = (torch.rand(4, 6, dtype=torch.float64) * 1e-2 + 1e-3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: crd_nce_loss(z, 100), (scores,))


def _bank(num_data=40, num_classes=4, feat_dim=8, nce_k=10, seed=0):
    torch.manual_seed(seed)
    targets = torch.arange(num_data) % num_classes
    return ContrastMemory(feat_dim, targets, nce_k, temperature=0.07, momentum=0.5), targets


def test_contrast_memory_negatives_are_distinct_other_class_samples():
    bank, targets = _bank()
    indices = torch.tensor([0, 5, 13, 39])
    drawn = bank.draw_contrast_indices(indices)
    assert drawn.shape == (4, 11)
    assert torch.equal(drawn[:, 0], indices)
    for row, index in zip(drawn, indices):
        negatives = row[1:]
        assert len(set(negatives.tolist())) == 10
        assert (targets[negatives] != targets[index]).all()
    torch.manual_seed(7)
    first = bank.draw_contrast_indices(indices)
    torch.manual_seed(7)
    assert torch.equal(first, bank.draw_contrast_indices(indices))


def test_contrast_memory_clamps_k_to_the_available_negatives():
    bank, _ = _bank(num_data=12, num_classes=3, nce_k=100)
    assert bank.nce_k == 8  # 12 samples, 4 per class: 8 of other classes
    with pytest.raises(ValueError):
        ContrastMemory(4, torch.zeros(10, dtype=torch.long), 5)


@pytest.mark.parametrize("feat_dim", [8, 2])  # 8: one N x num_data product; 2: per-row gather (40 > 11 * 2)
def test_contrast_memory_scores_z_and_momentum_update_match_independent_computation(feat_dim):
    bank, _ = _bank(feat_dim=feat_dim)
    memory_s, memory_t = bank.memory_student.double().numpy().copy(), bank.memory_teacher.double().numpy().copy()
    generator = torch.Generator().manual_seed(4)
    v_s = F.normalize(torch.randn(3, feat_dim, generator=generator), dim=1)
    v_t = F.normalize(torch.randn(3, feat_dim, generator=generator), dim=1)
    indices = torch.tensor([2, 7, 21])
    contrast = bank.draw_contrast_indices(indices)
    out_s, out_t = bank(v_s, v_t, indices, contrast)
    c = contrast.numpy()
    raw_s = np.exp(np.einsum("nkd,nd->nk", memory_t[c], v_s.double().numpy()) / 0.07)
    raw_t = np.exp(np.einsum("nkd,nd->nk", memory_s[c], v_t.double().numpy()) / 0.07)
    z_s, z_t = raw_s.mean() * 40, raw_t.mean() * 40
    np.testing.assert_allclose(out_s.detach().numpy(), raw_s / z_s, rtol=1e-4)
    np.testing.assert_allclose(out_t.detach().numpy(), raw_t / z_t, rtol=1e-4)
    assert bank.z_student.item() == pytest.approx(z_s, rel=1e-4)
    expected_rows = 0.5 * memory_s[indices.numpy()] + 0.5 * v_s.double().numpy()
    expected_rows /= np.linalg.norm(expected_rows, axis=1, keepdims=True)
    np.testing.assert_allclose(bank.memory_student[indices].numpy(), expected_rows, rtol=1e-5)
    untouched = np.setdiff1d(np.arange(40), indices.numpy())
    np.testing.assert_array_equal(bank.memory_teacher[untouched].numpy(), memory_t[untouched].astype(np.float32))
    # Z is estimated once: a second batch keeps it.
    bank(v_t, v_s, indices, contrast)
    assert bank.z_student.item() == pytest.approx(z_s, rel=1e-4)
