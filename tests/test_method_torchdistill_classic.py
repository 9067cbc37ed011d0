"""kd, dist, fitnet, at and crd against torchdistill's implementations (a test-only dependency), on the same
inputs; each difference is documented and tested.

- KD: torchdistill's ``alpha`` weighs the cross-entropy (kd-hydra's ``alpha`` the KL); without targets it
  returns the KL without ``T^2``. Logit standardization equals its ``LogitStdKDLoss``.
- DKD: torchdistill (1.1.x) has no DKD loss (kd-hydra's is pinned to mdistiller's formula in test_losses.py).
- DIST: kd-hydra adds eps to the product of the norms (the official DIST code); torchdistill clamps each norm
  (``F.cosine_similarity``). Equal unless a centred probability vector is nearly constant.
- FitNets: torchdistill's ``ConvReg`` + ``MSELoss`` wrapper equals kd-hydra's regressor + hint loss.
- AT: kd-hydra is torchdistill's 'code' mode (mean of squared differences of the ``mean_c f^2`` maps); the
  'paper' mode (eq. 2: L2 norm of the difference, mean over the batch) differs. torchdistill does not pool
  maps of different sizes (kd-hydra pools the larger one) and fixes p = 2.
- CRD: torchdistill's ``CRDLoss`` with the same memory, embeddings and contrast indices gives the same loss,
  normalisation constants and memory updates, step after step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchdistill.losses import mid_level
from torchdistill.losses.registry import MIDDLE_LEVEL_LOSS_DICT
from torchdistill.models.adaptation import ConvReg

from kd_hydra.losses import attention_transfer_loss, dist_loss, hint_loss, kd_loss
from kd_hydra.methods.base import MethodBatch
from tests.method_helpers import method_from_yaml


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def io(**outputs):
    return {path: {"output": value, "input": value} for path, value in outputs.items()}


def logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, t = randn(16, 10, seed=seed, scale=2.0), randn(16, 10, seed=seed + 1, scale=3.0)
    return s, t, torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(seed))


# -- KD ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kd_alpha", [0.9, 0.5, 0.1])
def test_kd_equals_torchdistill_with_its_alpha_on_the_cross_entropy(kd_alpha):
    s, t, y = logits()
    ours = kd_loss(s, t, y, 4.0, ce_weight=1 - kd_alpha, kd_weight=kd_alpha).total
    theirs = mid_level.KDLoss("s", "output", "t", "output", temperature=4.0, alpha=1 - kd_alpha)(io(s=s), io(t=t), y)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    # the same number under the same name means the other split: torchdistill's alpha is the CE weight
    swapped = mid_level.KDLoss("s", "output", "t", "output", temperature=4.0, alpha=kd_alpha)(io(s=s), io(t=t), y)
    assert kd_alpha == 0.5 or abs(swapped.item() - ours.item()) > 1e-3


def test_kd_without_targets_torchdistill_returns_the_kl_without_t_squared():
    s, t, y = logits(3)
    kl = mid_level.KDLoss("s", "output", "t", "output", temperature=4.0, alpha=0.5)(io(s=s), io(t=t))
    torch.testing.assert_close(kd_loss(s, t, y, 4.0, 0.0, 1.0).kd, 16.0 * kl, rtol=1e-12, atol=0)


def test_kd_standardized_equals_torchdistill_logit_std_kd():
    s, t, y = logits(5)
    ours = kd_loss(s, t, y, 2.0, ce_weight=0.1, kd_weight=9.0, standardize=True).total  # Sun et al.'s CE 0.1, KD 9
    theirs = mid_level.LogitStdKDLoss("s", "output", "t", "output", temperature=2.0, alpha=0.1, beta=9.0)(
        io(s=s), io(t=t), y
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_kd_method_from_its_yaml_equals_torchdistill():
    s, t, y = logits(7)
    method = method_from_yaml("kd")  # alpha 0.9, T 4
    ours = method(MethodBatch(student_logits=s, targets=y, sample_indices=torch.arange(16), teacher_logits=t)).total
    theirs = mid_level.KDLoss("s", "output", "t", "output", temperature=4.0, alpha=0.1, beta=0.9)(io(s=s), io(t=t), y)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_torchdistill_has_no_dkd_loss():
    """Nothing to compare with: if a torchdistill release adds DKD, this fails and a comparison belongs here."""
    names = [name.lower() for name in MIDDLE_LEVEL_LOSS_DICT]
    assert "logitstdkdloss" in names  # the registry is read (LogitStdKDLoss is KD with standardization, not DKD)
    assert not [name for name in names if name.startswith("dkd") or "decoupled" in name]


# -- DIST ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,gamma,tau", [(2.0, 2.0, 4.0), (1.0, 1.0, 1.0), (1.0, 0.0, 2.0)])
def test_dist_equals_torchdistill(beta, gamma, tau):
    s, t, _ = logits(2)
    theirs = mid_level.DISTLoss("s", "output", "t", "output", beta=beta, gamma=gamma, tau=tau)(io(s=s), io(t=t))
    torch.testing.assert_close(dist_loss(s, t, beta, gamma, tau), theirs, rtol=1e-6, atol=0)


def np_dist(s: np.ndarray, t: np.ndarray, tau: float, eps: float, clamp_each: bool) -> float:
    """DIST with beta = gamma = 1; ``clamp_each``: ``max(|a|, eps) max(|b|, eps)`` (torch), else ``|a||b| + eps``."""

    def softmax(z):
        e = np.exp(z / tau - (z / tau).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def pearson(a, b):
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        return (a * b).sum(1) / (np.maximum(na, eps) * np.maximum(nb, eps) if clamp_each else na * nb + eps)

    y_s, y_t = softmax(s), softmax(t)
    return tau**2 * ((1 - pearson(y_s, y_t).mean()) + (1 - pearson(y_s.T, y_t.T).mean()))


def test_dist_differs_from_torchdistill_only_in_where_eps_goes():
    s, t, _ = logits(4)
    s[:, :] = s[:1] + 1e-6 * s  # near-identical rows: each class's probability barely moves across the batch
    ours = dist_loss(s, t, 1.0, 1.0, 4.0).item()
    theirs = mid_level.DISTLoss("s", "output", "t", "output", tau=4.0)(io(s=s), io(t=t)).item()
    assert ours == pytest.approx(np_dist(s.numpy(), t.numpy(), 4.0, 1e-8, clamp_each=False), rel=1e-10)
    assert theirs == pytest.approx(np_dist(s.numpy(), t.numpy(), 4.0, 1e-8, clamp_each=True), rel=1e-10)
    assert abs(ours - theirs) > 1e-4


# -- FitNets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "student_shape,teacher_shape,conv",
    [((8, 8, 8), (16, 8, 8), (1, 1, 0)), ((8, 8, 8), (16, 4, 4), (3, 2, 1)), ((8, 6, 6), (16, 4, 4), (3, 1, 0))],
)
def test_fitnet_regressor_and_hint_equal_torchdistill_conv_reg_and_mse(student_shape, teacher_shape, conv):
    method = method_from_yaml("fitnet", hint_point="stage2")
    torch.manual_seed(0)
    method.feature_request(["stage2"], ["stage2"])
    method.setup({"stage2": student_shape}, {"stage2": teacher_shape}, torch.zeros(4, dtype=torch.long), 10)
    method = method.double()
    kernel, stride, padding = conv
    theirs_reg = ConvReg(student_shape[0], teacher_shape[0], kernel, stride, padding).double()
    theirs_reg.load_state_dict(dict(zip(theirs_reg.state_dict(), method.regressor.state_dict().values())))
    f_s, f_t = randn(6, *student_shape, seed=1), randn(6, *teacher_shape, seed=2)
    hint = mid_level.SimpleLossWrapper(
        nn.MSELoss(),
        input={"is_from_teacher": False, "module_path": "reg", "io": "output"},
        target={"is_from_teacher": True, "module_path": "t", "io": "output"},
    )
    theirs = hint(io(reg=theirs_reg(f_s)), io(t=f_t), None)
    ours = method(
        MethodBatch(
            student_logits=randn(6, 10, seed=3),
            targets=torch.zeros(6, dtype=torch.long),
            sample_indices=torch.arange(6),
            student_features={"stage2": f_s},
            teacher_features={"stage2": f_t},
        )
    ).parts["hint"]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    torch.testing.assert_close(hint_loss(theirs_reg(f_s), f_t), theirs, rtol=1e-12, atol=0)


# -- AT ------------------------------------------------------------------------------------------------------


def at_pairs(count: int) -> dict:
    return {
        f"pair{i}": {"student": {"path": f"s{i}", "io": "output"}, "teacher": {"path": f"t{i}", "io": "output"}}
        for i in range(count)
    }


def feature_maps(sizes, seed=0):
    student = [randn(5, 4, h, h, seed=seed + i) for i, h in enumerate(sizes)]
    teacher = [randn(5, 8, h, h, seed=seed + 10 + i, scale=2.0) for i, h in enumerate(sizes)]
    return student, teacher


def test_at_equals_torchdistill_code_mode():
    student, teacher = feature_maps((8, 4, 2))
    s_io, t_io = io(**{f"s{i}": f for i, f in enumerate(student)}), io(**{f"t{i}": f for i, f in enumerate(teacher)})
    theirs = mid_level.ATLoss(at_pairs(3), mode="code")(s_io, t_io)
    torch.testing.assert_close(attention_transfer_loss(student, teacher, 2.0), theirs, rtol=1e-12, atol=0)
    at = method_from_yaml("at")  # p = 2, the stages paired one to one
    stages = ["stage1", "stage2", "stage3"]
    at.feature_request(stages, stages)
    at.stages = tuple(stages)
    out = at(
        MethodBatch(
            student_logits=randn(5, 10),
            targets=torch.zeros(5, dtype=torch.long),
            sample_indices=torch.arange(5),
            student_features=dict(zip(at.stages, student)),
            teacher_features=dict(zip(at.stages, teacher)),
        )
    )
    torch.testing.assert_close(out.parts["at"], theirs, rtol=1e-12, atol=0)


def np_at_paper(student, teacher) -> float:
    """Zagoruyko & Komodakis eq. (2), p = 2: sum over pairs of mean_n || Q_s / |Q_s| - Q_t / |Q_t| ||_2."""
    total = 0.0
    for f_s, f_t in zip(student, teacher):
        q_s, q_t = [(f**2).sum(1).reshape(f.shape[0], -1) for f in (f_s.numpy(), f_t.numpy())]
        q_s, q_t = [q / np.linalg.norm(q, axis=1, keepdims=True) for q in (q_s, q_t)]
        total += np.linalg.norm(q_s - q_t, axis=1).mean()
    return float(total)


def test_at_differs_from_torchdistill_paper_mode_which_follows_eq_2():
    student, teacher = feature_maps((8, 4), seed=3)
    s_io, t_io = io(s0=student[0], s1=student[1]), io(t0=teacher[0], t1=teacher[1])
    paper = mid_level.ATLoss(at_pairs(2), mode="paper")(s_io, t_io).item()
    assert paper == pytest.approx(np_at_paper(student, teacher), rel=1e-10)
    assert abs(attention_transfer_loss(student, teacher, 2.0).item() - paper) > 0.1


def test_at_pools_maps_of_different_sizes_where_torchdistill_needs_equal_ones():
    student, teacher = [randn(5, 4, 8, 8)], [randn(5, 8, 4, 4, seed=1)]
    pooled = torch.nn.functional.adaptive_avg_pool2d(student[0], (4, 4))
    theirs = mid_level.ATLoss(at_pairs(1), mode="code")(io(s0=pooled), io(t0=teacher[0]))
    torch.testing.assert_close(attention_transfer_loss(student, teacher, 2.0), theirs, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError):
        mid_level.ATLoss(at_pairs(1), mode="code")(io(s0=student[0]), io(t0=teacher[0]))


# -- CRD -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feat_dim", [8, 2])  # 8: kd-hydra scores all samples at once; 2: per-row gather
def test_crd_loss_z_and_memory_updates_equal_torchdistill_step_after_step(feat_dim):
    num_data, nce_k, in_dim = 40, 12, 6
    labels = torch.arange(num_data) % 4
    method = method_from_yaml("crd", feat_dim=feat_dim, nce_k=nce_k)
    torch.manual_seed(0)
    method.feature_request(["pre_logit"], ["pre_logit"])
    method.setup({"pre_logit": (in_dim,)}, {"pre_logit": (in_dim,)}, labels, 4)
    theirs = mid_level.CRDLoss("s_norm", "s_empty", "t_norm", feat_dim, num_data, nce_k, num_data, 0.07, 0.5, 1e-7)
    memory = method.memory
    theirs.memory_v1.copy_(memory.memory_student)  # v1: the student's bank (scored by the teacher's anchor)
    theirs.memory_v2.copy_(memory.memory_teacher)
    generator = torch.Generator().manual_seed(1)
    draw = memory.draw_contrast_indices
    for step in range(3):
        indices = torch.randperm(num_data, generator=generator)[:8]
        f_s, f_t = torch.randn(8, in_dim, generator=generator), torch.randn(8, in_dim, generator=generator)
        contrast = draw(indices, generator)
        drawn = iter([contrast])
        memory.draw_contrast_indices = lambda i, g=None, drawn=drawn: next(drawn)
        out = method(
            MethodBatch(
                student_logits=torch.randn(8, 4, generator=generator),
                targets=labels[indices],
                sample_indices=indices,
                student_features={"pre_logit": f_s},
                teacher_features={"pre_logit": f_t},
            )
        )
        with torch.no_grad():
            v_s, v_t = method.embed_student(f_s), method.embed_teacher(f_t)
        extra = {"pos_idx": indices, "contrast_idx": contrast}
        loss = theirs({"s_norm": {"output": v_s}, "s_empty": {"input": extra}}, {"t_norm": {"output": v_t}})
        torch.testing.assert_close(out.parts["crd"].detach(), loss.reshape(()), rtol=1e-6, atol=0, msg=f"step {step}")
        assert (memory.z_student.item(), memory.z_teacher.item()) == pytest.approx(
            (theirs.params[2].item(), theirs.params[3].item()), rel=1e-6 if feat_dim == 2 else 4e-6
        )  # float32: exp(<v, m> / 0.07) turns a last-bit difference of the dot (mm vs bmm) into ~14 ulps
        torch.testing.assert_close(memory.memory_student, theirs.memory_v1, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(memory.memory_teacher, theirs.memory_v2, rtol=1e-6, atol=1e-7)
