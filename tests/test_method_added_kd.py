"""Hinton's term on top of any method (loss.add_kd_*), and loss=kd's two weightings (alpha or ce/kd weights)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from method_helpers import loss_node, method_from_yaml

from conftest import TINY, Workspace
from kd_hydra.errors import ConfigError
from kd_hydra.methods import MethodBatch, validate_method_config
from kd_hydra.methods.dist import DIST
from kd_hydra.methods.dkd import DKD
from kd_hydra.methods.kd import KD


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_hinton(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """``T^2 * mean_n sum_c p_t (log p_t - log p_s)`` at temperature T, float64."""
    log_p_s, log_p_t = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
    return float(temperature**2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean())


def np_ce(s: np.ndarray, y: np.ndarray) -> float:
    return float(-np_log_softmax(s)[np.arange(len(y)), y].mean())


def np_standardize(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


@pytest.fixture
def batch() -> MethodBatch:
    generator = torch.Generator().manual_seed(3)
    student = (torch.randn(12, 7, generator=generator, dtype=torch.float64) * 3).requires_grad_(True)
    teacher = torch.randn(12, 7, generator=generator, dtype=torch.float64) * 2
    targets = torch.randint(0, 7, (12,), generator=generator)
    return MethodBatch(student, targets, torch.arange(12), teacher)


@pytest.mark.parametrize("cls", [DKD, DIST])
@pytest.mark.parametrize("weight,temperature", [(1.0, 4.0), (0.5, 2.0)])
def test_added_term_is_weighted_hinton_on_top_of_the_method(batch, cls, weight, temperature):
    plain = method_from_yaml(cls)(batch)
    method = method_from_yaml(cls, add_kd_weight=weight, add_kd_temperature=temperature)
    out = method(batch)
    assert tuple(out.parts) == (*cls.parts, "kd") == method.parts
    s, t = batch.student_logits.detach().numpy(), batch.teacher_logits.numpy()
    assert out.parts["kd"].item() == pytest.approx(np_hinton(s, t, temperature), rel=1e-10)
    assert out.total.item() == pytest.approx(plain.total.item() + weight * out.parts["kd"].item(), rel=1e-12)
    assert f"add_kd_weight={weight}" in repr(method)


def test_weight_zero_leaves_the_method_untouched(batch):
    plain, zero = method_from_yaml(DKD), method_from_yaml(DKD, add_kd_weight=0.0, add_kd_temperature=9.0)
    assert zero.parts == DKD.parts
    out, expected = zero(batch), plain(batch)
    assert torch.equal(out.total, expected.total) and list(out.parts) == list(expected.parts)


@pytest.mark.parametrize(
    "method,overrides,key",
    [
        ("kd", {"add_kd_weight": 1.0}, "loss.add_kd_weight"),
        ("dkd", {"add_kd_weight": -1.0}, "loss.add_kd_weight"),
        ("dkd", {"add_kd_weight": float("nan")}, "loss.add_kd_weight"),
        ("dkd", {"add_kd_weight": 1.0, "add_kd_temperature": 0.0}, "loss.add_kd_temperature"),
        ("dist", {"add_kd_weight": "x"}, "loss.add_kd_weight"),
    ],
)
def test_added_term_values_are_checked(method, overrides, key):
    with pytest.raises(ConfigError) as error:
        validate_method_config(loss_node(method, **overrides))
    assert error.value.key == key


def test_a_feature_method_with_the_added_term_logs_its_kd_column(workspace: Workspace):
    run_dir, _ = workspace.single("at_kd", *TINY, "loss=at", "loss.add_kd_weight=0.5", "loss.add_kd_temperature=2")
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        parts = float(row["train_ce"]) + 1000.0 * float(row["train_at"]) + 0.5 * float(row["train_kd"])
        assert float(row["train_kd"]) > 0 and float(row["train_loss"]) == pytest.approx(parts, rel=1e-5)


# -- loss=kd: alpha, or ce_weight/kd_weight -----------------------------------------------------------------


def test_sun_et_al_recipe_is_exact(batch):
    """Standardized logits, CE 0.1, KD 9, base temperature 2 (Sun et al., CVPR 2024): CE on the raw logits."""
    method = method_from_yaml(KD, alpha=None, ce_weight=0.1, kd_weight=9.0, temperature=2.0, standardize=True)
    out = method(batch)
    s, t, y = batch.student_logits.detach().numpy(), batch.teacher_logits.numpy(), batch.targets.numpy()
    kd = np_hinton(np_standardize(s), np_standardize(t), 2.0)
    assert out.parts["kd"].item() == pytest.approx(kd, rel=1e-9)
    assert out.parts["ce"].item() == pytest.approx(np_ce(s, y), rel=1e-12)
    assert out.total.item() == pytest.approx(0.1 * np_ce(s, y) + 9.0 * kd, rel=1e-9)


def test_alpha_is_the_weights_one_minus_alpha_and_alpha(batch):
    by_alpha = method_from_yaml(KD, alpha=0.3)(batch).total
    by_weights = method_from_yaml(KD, alpha=None, ce_weight=0.7, kd_weight=0.3)(batch).total
    assert torch.equal(by_alpha, by_weights)


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"ce_weight": 0.1, "kd_weight": 9.0}, "loss.alpha"),  # alpha 0.9 from the YAML as well
        ({"alpha": 0.5, "kd_weight": 9.0}, "loss.alpha"),
        ({"alpha": None, "ce_weight": 0.1}, "loss.kd_weight"),
        ({"alpha": None, "kd_weight": 9.0}, "loss.ce_weight"),
        ({"alpha": None}, "loss.ce_weight"),
        ({"alpha": None, "ce_weight": -0.1, "kd_weight": 9.0}, "loss.ce_weight"),
        ({"alpha": 1.5}, "loss.alpha"),
    ],
)
def test_kd_takes_alpha_or_the_weights_not_both(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate_method_config(loss_node(KD, **overrides))
    assert error.value.key == key
    assert "\n" not in str(error.value)
