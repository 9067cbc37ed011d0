"""The KD loss against independent formulas (numpy, float64), and the properties the math promises."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_hydra.losses import CELoss, KDLoss, ce_loss, kd_loss, soft_target_kl


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
    parts = kd_loss(s, t, y, temperature, alpha)
    assert parts.total.item() == pytest.approx(expected_total, rel=1e-5)
    assert parts.ce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert parts.kd.item() == pytest.approx(expected_kd, rel=1e-5)


def test_alpha_zero_is_cross_entropy(batch):
    s, t, y = batch
    assert kd_loss(s, t, y, 4.0, 0.0).total.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_alpha_one_is_t_squared_kl(batch):
    s, t, y = batch
    temperature = 3.0
    kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
    assert kd_loss(s, t, y, temperature, 1.0).total.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)


def test_kd_term_is_zero_for_identical_logits_and_positive_otherwise(batch):
    s, t, _ = batch
    assert soft_target_kl(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_kl(s, t, 4.0).item() > 0


def test_invariant_to_per_sample_logit_shifts(batch):
    s, t, y = batch
    shift_s, shift_t = torch.randn(16, 1, dtype=s.dtype) * 5, torch.randn(16, 1, dtype=s.dtype) * 5
    base = kd_loss(s, t, y, 2.0, 0.5).total
    shifted = kd_loss(s + shift_s, t + shift_t, y, 2.0, 0.5).total
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
        kd_loss(student, t, y, 2.0, alpha).total.backward()
        grads[alpha] = student.grad
    torch.testing.assert_close(grads[0.3], 0.7 * grads[0.0] + 0.3 * grads[1.0])


def test_modules_wrap_the_functions(batch):
    s, t, y = batch
    module = KDLoss(temperature=2.0, alpha=0.25)
    assert module.uses_teacher and not CELoss.uses_teacher
    assert module(s, y, t).total.item() == pytest.approx(kd_loss(s, t, y, 2.0, 0.25).total.item())
    assert CELoss()(s, y).total.item() == pytest.approx(ce_loss(s, y).total.item())
    assert CELoss()(s, y).kd is None
    with pytest.raises(ValueError):
        module(s, y, None)


def test_low_precision_logits_are_computed_in_float32(batch):
    s, t, y = batch
    low = kd_loss(s.to(torch.bfloat16), t.to(torch.bfloat16), y, 4.0, 0.5).total
    assert low.dtype == torch.float32
