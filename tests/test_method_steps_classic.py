"""Step tests for kd, dkd, dist, fitnet, at and crd: a few SGD steps of kd-hydra's training
(``kd_hydra.train.trainer.train_epoch`` of the training stage, the live teacher, the batch assembler's feature hooks,
the method's parts in the optimizer) equal a short reference loop written here from the papers' equations, on the
same fixed weights and batches.

The live teacher hands over float32 logits, so the references round the teacher's logits to float32 too.
CRD runs in float32 (its memory bank is float32); its reference replays the negatives kd-hydra drew.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_hydra.stores.teacher_outputs import LiveTeacher
from kd_hydra.train.batches import BatchAssembler
from kd_hydra.train.runtime import Runtime
from kd_hydra.train.schedules import constant_schedule
from kd_hydra.train.stages import training_stage
from kd_hydra.train.trainer import StepForward, train_epoch
from tests.feature_nets import CLASSES, IMAGE_SHAPE, TinyResNet, batches
from tests.method_helpers import set_up_like_the_trainer

RUNTIME = Runtime(torch.device("cpu"), None, False, False)
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
STAGES = ("stage1", "stage2", "stage3")


def sgd_groups(groups):
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def sgd(*groups):
    return sgd_groups([{"params": p} for p in (list(g) for g in groups) if p])


def networks(dtype=torch.float64):
    student = TinyResNet((4, 8, 8, 16), seed=1).to(dtype)
    teacher = TinyResNet((8, 16, 16, 32), seed=2).to(dtype).eval()
    return student, teacher


def all_targets(data) -> Tensor:
    """Labels by sample index (the batches hold indices 0..N-1 in order)."""
    return torch.cat([targets for _, targets, _ in data])


def prepared(name, student, teacher, data, **overrides):
    """The method as ``loss=<name>`` builds it, set up on the two networks as the trainer does."""
    method, request = set_up_like_the_trainer(
        name, student, teacher, IMAGE_SHAPE, all_targets(data), CLASSES, **overrides
    )
    return method.to(next(student.parameters()).dtype), request


class KdHydra:
    """kd-hydra's loop: the training stage as the app builds it (student + method parts in one SGD), the live
    teacher, the batch assembler's hooks on the student."""

    def __init__(self, method, request, student, teacher):
        self.method = method
        self.assemble = BatchAssembler(
            student, RUNTIME, LiveTeacher(teacher, RUNTIME, request.teacher), request.student
        )
        self.stage = training_stage("student", 1, student, method, sgd_groups, constant_schedule, "optimizer.lr")
        self.optimizer, _ = self.stage.build_optimizer()
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)

    def epoch(self, data, epoch=1, epochs=1) -> dict[str, float]:
        self.method.begin_epoch(epoch, epochs)
        step = StepForward(self.stage, self.assemble)
        return train_epoch(self.stage, iter(data), step, self.optimizer, self.scaler, RUNTIME)


def reference_training(student, teacher, parts, data, term, ce_weight, epochs=1) -> list[list[float]]:
    """Explicit forwards, ``ce_weight * CE + term(...)``, SGD on student + parts; each epoch's step losses."""
    optimizer = sgd(student.parameters(), [p for p in parts.parameters() if p.requires_grad])
    student.train(), parts.train(), teacher.eval()
    history = []
    for epoch in range(1, epochs + 1):
        losses = []
        for images, targets, _ in data:
            logits, s = student.reference_features(images)
            with torch.no_grad():
                teacher_logits, t = teacher.reference_features(images)
            teacher_logits = teacher_logits.float().to(logits.dtype)
            loss = ce_weight * F.cross_entropy(logits, targets) + term(logits, teacher_logits, s, t, targets, epoch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(losses)
    return history


def assert_same_weights(a: nn.Module, b: nn.Module, rtol=1e-9, atol=1e-11):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -- the papers' equations, written independently of kd_hydra.losses ----------------------------------------


def kl(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p || q)`` per row."""
    return (p * (p.log() - q.log())).sum(1)


def hinton_term(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """Hinton et al. (2015): ``T^2 KL(softmax(t/T) || softmax(s/T))``, mean over the batch."""
    return temperature**2 * kl(torch.softmax(t / temperature, 1), torch.softmax(s / temperature, 1)).mean()


def zscore(z: Tensor) -> Tensor:
    """Sun et al. (CVPR 2024) eq. (6): ``(z - mean) / std`` per sample (unbiased std, their 1e-7)."""
    return (z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, keepdim=True))


def dkd_term(s: Tensor, t: Tensor, targets: Tensor, alpha: float, beta: float, temperature: float) -> Tensor:
    """Zhao et al. (CVPR 2022) eq. (7): ``alpha TCKD + beta NCKD``, T^2-scaled, mean over the batch."""
    gold = F.one_hot(targets, s.shape[1]).bool()
    n, others = s.shape[0], s.shape[1] - 1

    def split(z):
        p = torch.softmax(z / temperature, 1)
        binary = torch.stack([p[gold], p[~gold].reshape(n, others).sum(1)], 1)  # [p_t, p_\t]
        non_target = torch.softmax(z[~gold].reshape(n, others) / temperature, 1)  # p-hat over the other classes
        return binary, non_target

    (b_s, hat_s), (b_t, hat_t) = split(s), split(t)
    return temperature**2 * (alpha * kl(b_t, b_s) + beta * kl(hat_t, hat_s)).mean()


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation (the official DIST code adds eps 1e-8 to the product of the norms)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / ((a**2).sum(1).sqrt() * (b**2).sum(1).sqrt() + eps)


def dist_term(s: Tensor, t: Tensor, beta: float, gamma: float, temperature: float) -> Tensor:
    """Huang et al. (NeurIPS 2022) eq. (5)-(8): ``T^2 (beta (1 - inter) + gamma (1 - intra))``."""
    y_s, y_t = torch.softmax(s / temperature, 1), torch.softmax(t / temperature, 1)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.T, y_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def attention(f: Tensor) -> Tensor:
    """Zagoruyko & Komodakis eq. (1)-(2) with p = 2: ``Q = mean_c f^2``, flattened, divided by its L2 norm."""
    q = (f**2).mean(1).flatten(1)
    return q / (q**2).sum(1, keepdim=True).sqrt()


def at_term(s: dict[str, Tensor], t: dict[str, Tensor]) -> Tensor:
    """Sum over the stage pairs of ``mean((Q_s - Q_t)^2)`` (the authors' code; torchdistill's 'code' mode)."""
    return sum(((attention(s[p]) - attention(t[p])) ** 2).mean() for p in STAGES)


# -- logit methods ------------------------------------------------------------------------------------------


LOGIT_CASES = {
    "kd": ({}, lambda s, t, y, epoch: 0.9 * hinton_term(s, t, 4.0), 0.1),
    "kd_sun_et_al": (
        {"alpha": None, "ce_weight": 0.1, "kd_weight": 9.0, "standardize": True, "temperature": 2.0},
        lambda s, t, y, epoch: 9.0 * hinton_term(zscore(s), zscore(t), 2.0),
        0.1,
    ),
    "dkd": ({}, lambda s, t, y, epoch: min(epoch / 20, 1.0) * dkd_term(s, t, y, 1.0, 8.0, 4.0), 1.0),
    "dkd_standardized": (
        {"standardize": True, "warmup": 2},
        lambda s, t, y, epoch: min(epoch / 2, 1.0) * dkd_term(zscore(s), zscore(t), y, 1.0, 8.0, 4.0),
        1.0,
    ),
    "dist": ({}, lambda s, t, y, epoch: dist_term(s, t, 2.0, 2.0, 4.0), 1.0),
}


@pytest.mark.parametrize("case", list(LOGIT_CASES))
def test_logit_method_steps_equal_the_reference(case):
    overrides, term, ce_weight = LOGIT_CASES[case]
    name = case.split("_")[0]
    student, teacher = networks()
    with torch.no_grad():  # a confident teacher (logits' std about 3, as a trained one's), not a near-uniform one
        teacher.fc.weight.mul_(50.0)
    data = batches(3)
    method, request = prepared(name, student, teacher, data, **overrides)
    assert not request  # logit methods record no features
    reference = copy.deepcopy(student)
    epochs = 2 if name == "dkd" else 1  # DKD's warm-up factor changes between the epochs
    trainer = KdHydra(method, request, student, teacher)
    stats = [trainer.epoch(data, epoch, epochs) for epoch in range(1, epochs + 1)]

    history = reference_training(
        reference, teacher, nn.Module(), data, lambda s, t, fs, ft, y, e: term(s, t, y, e), ce_weight, epochs
    )
    # kd-hydra computes the teacher's side from its float32 logits in float32: the references differ by float32
    # rounding (measured: loss 1e-7, weights 3e-7). DIST's Pearson terms on near-uniform student probabilities
    # magnify it in the weights (6.8e-5 after 3 steps); its loss still agrees to 6e-7.
    for epoch_stats, losses in zip(stats, history):
        assert epoch_stats["train_loss"] == pytest.approx(mean(losses), rel=1e-6)
    atol = 2e-4 if name == "dist" else 2e-6
    assert_same_weights(student, reference, rtol=1e-5, atol=atol)


# -- feature methods ----------------------------------------------------------------------------------------


def test_at_steps_equal_the_reference():
    student, teacher = networks()
    data = batches(3)
    method, request = prepared("at", student, teacher, data)
    assert request.student == request.teacher == STAGES
    reference = copy.deepcopy(student)
    stats = KdHydra(method, request, student, teacher).epoch(data)

    [losses] = reference_training(
        reference, teacher, nn.Module(), data, lambda s, t, fs, ft, y, e: 1000.0 * at_term(fs, ft), 1.0
    )
    assert stats["train_loss"] == pytest.approx(mean(losses), rel=1e-10)
    assert_same_weights(student, reference)


def test_fitnet_steps_train_the_regressor_as_the_reference():
    student, teacher = networks()
    data = batches(3)
    method, request = prepared("fitnet", student, teacher, data)
    assert request.student == request.teacher == ("stage2",)
    # Romero et al.'s regressor as mdistiller's ConvReg builds it for equal 8x8 maps: a 1x1 conv, BN, ReLU
    regressor = nn.Sequential(nn.Conv2d(8, 16, kernel_size=(1, 1)), nn.BatchNorm2d(16), nn.ReLU()).double()
    regressor.load_state_dict(method.regressor.state_dict())
    initial = copy.deepcopy(regressor.state_dict())
    reference = copy.deepcopy(student)
    stats = KdHydra(method, request, student, teacher).epoch(data)

    def term(s, t, fs, ft, y, epoch):
        return 100.0 * ((regressor(fs["stage2"]) - ft["stage2"]) ** 2).mean()

    [losses] = reference_training(reference, teacher, regressor, data, term, 1.0)
    assert stats["train_loss"] == pytest.approx(mean(losses), rel=1e-10)
    assert_same_weights(student, reference)
    assert_same_weights(method.regressor, regressor)
    assert not torch.equal(regressor[0].weight, initial["0.weight"])  # the regressor is in the optimizer


# -- CRD ----------------------------------------------------------------------------------------------------

NCE_K, NCE_T, MOMENTUM_CRD, CRD_WEIGHT = 10, 0.07, 0.5, 0.8


class ReferenceCRD(nn.Module):
    """Tian et al. (ICLR 2020) with RepDistiller's semantics: Linear + L2 embeddings, two memory banks, NCE.

    ``h(v, m) = exp(<v, m> / T) / Z`` with ``Z = mean(exp(...)) * n`` fixed on the first batch; the loss per
    view is ``-[log(h_0 / (h_0 + K/n + eps)) + sum_k log((K/n) / (h_k + K/n + eps))] / N``; after scoring,
    each batch row of a bank becomes ``normalise(m * old + (1 - m) * new)``.
    """

    def __init__(self, initial: dict[str, Tensor]):
        super().__init__()
        self.embed_s = nn.Linear(*initial["embed_student.linear.weight"].shape[::-1])
        self.embed_t = nn.Linear(*initial["embed_teacher.linear.weight"].shape[::-1])
        for side, linear in (("student", self.embed_s), ("teacher", self.embed_t)):
            linear.load_state_dict({k: initial[f"embed_{side}.linear.{k}"] for k in ("weight", "bias")})
        self.memory_s = initial["memory.memory_student"].clone()
        self.memory_t = initial["memory.memory_teacher"].clone()
        self.z_s = self.z_t = None

    @staticmethod
    def embed(linear: nn.Linear, x: Tensor) -> Tensor:
        v = linear(x)
        return v / (v**2).sum(1, keepdim=True).sqrt()

    def nce(self, h: Tensor) -> Tensor:
        noise = NCE_K / self.memory_s.shape[0]
        positive = torch.log(h[:, 0] / (h[:, 0] + noise + 1e-7))
        negatives = torch.log(noise / (h[:, 1:] + noise + 1e-7))
        return -(positive.sum() + negatives.sum()) / h.shape[0]

    def forward(self, f_s: Tensor, f_t: Tensor, indices: Tensor, contrast: Tensor) -> Tensor:
        v_s, v_t = self.embed(self.embed_s, f_s), self.embed(self.embed_t, f_t)
        n = self.memory_s.shape[0]
        h_s = torch.exp(torch.einsum("nkd,nd->nk", self.memory_t[contrast], v_s) / NCE_T)
        h_t = torch.exp(torch.einsum("nkd,nd->nk", self.memory_s[contrast], v_t) / NCE_T)
        if self.z_s is None:
            self.z_s, self.z_t = (h_s.mean() * n).item(), (h_t.mean() * n).item()
        loss = self.nce(h_s / self.z_s) + self.nce(h_t / self.z_t)
        with torch.no_grad():
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                rows = memory[indices] * MOMENTUM_CRD + v * (1 - MOMENTUM_CRD)
                memory[indices] = rows / (rows**2).sum(1, keepdim=True).sqrt()
        return loss


def test_crd_steps_loss_and_memory_updates_equal_the_reference():
    student, teacher = networks(torch.float32)
    data = [(images.float(), targets, indices) for images, targets, indices in batches(3)]
    method, request = prepared("crd", student, teacher, data, nce_k=NCE_K)
    assert request.student == request.teacher == ("pre_logit",) and method.memory.nce_k == NCE_K
    labels = all_targets(data)
    reference_student = copy.deepcopy(student)
    crd = ReferenceCRD(method.state_dict())
    trainer = KdHydra(method, request, student, teacher)
    drawn: list[Tensor] = []
    draw = method.memory.draw_contrast_indices

    def recording_draw(indices, generator=None):
        drawn.append(draw(indices, generator))
        return drawn[-1]

    method.memory.draw_contrast_indices = recording_draw

    optimizer = sgd(reference_student.parameters(), crd.parameters())
    reference_student.train()
    torch.manual_seed(3)
    for images, targets, indices in data:
        stats = trainer.epoch([(images, targets, indices)])
        contrast = drawn[-1]
        # RepDistiller's 'exact' sampling: the sample itself, then K distinct samples of other classes
        assert torch.equal(contrast[:, 0], indices)
        assert (labels[contrast[:, 1:]] != targets[:, None]).all()
        assert all(len(set(row.tolist())) == NCE_K for row in contrast[:, 1:])

        logits, s = reference_student.reference_features(images)
        with torch.no_grad():
            _, t = teacher.reference_features(images)
        ce = F.cross_entropy(logits, targets)
        contrastive = crd(s["pre_logit"], t["pre_logit"], indices, contrast)
        loss = ce + CRD_WEIGHT * contrastive
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        assert stats["train_crd"] == pytest.approx(contrastive.item(), rel=2e-5)
        assert stats["train_loss"] == pytest.approx(loss.item(), rel=2e-5)
        memory = method.memory
        torch.testing.assert_close(memory.memory_student, crd.memory_s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(memory.memory_teacher, crd.memory_t, rtol=1e-5, atol=1e-6)
        assert (memory.z_student.item(), memory.z_teacher.item()) == pytest.approx((crd.z_s, crd.z_t), rel=1e-5)
    assert len(drawn) == len(data)
    assert_same_weights(student, reference_student, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(method.embed_student.linear.weight, crd.embed_s.weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(method.embed_teacher.linear.weight, crd.embed_t.weight, rtol=1e-4, atol=1e-6)
