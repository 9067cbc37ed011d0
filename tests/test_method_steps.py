"""Step tests: a few SGD steps of kd-hydra's training (``train_epoch`` of the training stage, the live teacher,
the batch assembler's feature hooks, the method's own parts in the optimizer) equal a short reference loop written
here from the papers' equations, for SP, CC, RKD, PKT, VID, KDSVD and NST on fixed weights and batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_helpers import loss_node, method_from_yaml
from torch import Tensor, nn

from kd_hydra.models import build_model
from kd_hydra.models.features import feature_points, probe_feature_shapes
from kd_hydra.stores.teacher_outputs import LiveTeacher
from kd_hydra.train.batches import BatchAssembler
from kd_hydra.train.runtime import resolve_runtime
from kd_hydra.train.schedules import constant_schedule
from kd_hydra.train.stages import training_stage
from kd_hydra.train.trainer import StepForward, train_epoch

RUNTIME = resolve_runtime("cpu", "fp32", False, False)
SIZE, CLASSES, BATCH, STEPS, LR = 16, 10, 8, 3, 0.05


# -- the equations, written independently of kd_hydra.losses ----------------------------------------------------


def huber(x: Tensor) -> Tensor:
    return torch.where(x.abs() < 1, 0.5 * x**2, x.abs() - 0.5).mean()


def ref_sp(fs, ft):
    n = fs.shape[0]
    gs, gt = fs.flatten(1) @ fs.flatten(1).T, ft.flatten(1) @ ft.flatten(1).T
    gs, gt = gs / gs.norm(dim=1, keepdim=True), gt / gt.norm(dim=1, keepdim=True)
    return ((gt - gs) ** 2).sum() / n**2


def ref_cc(es, et):
    d = (es - et).abs()
    return sum((d[i] * d[i + 1]).sum() for i in range(len(d) - 1)) / (len(d) - 1)


def ref_rkd(es, et, w_d=25.0, w_a=50.0):
    def distances(e):
        d = torch.cdist(e, e)
        off = ~torch.eye(len(e), dtype=torch.bool)
        return torch.where(off, d, torch.zeros_like(d)) / d[off].mean()

    def angles(e):
        v = e[None, :, :] - e[:, None, :]
        v = v / v.norm(dim=2, keepdim=True).clamp(min=1e-12)
        return torch.einsum("ijd,ikd->ijk", v, v)

    return w_d * huber(distances(es) - distances(et)) + w_a * huber(angles(es) - angles(et))


def ref_pkt(es, et, eps=1e-7):
    def probabilities(e):
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        s = (e @ e.T + 1) / 2
        return s / s.sum(1, keepdim=True)

    p, q = probabilities(es), probabilities(et)
    return (q * torch.log((q + eps) / (p + eps))).mean()


def ref_vid(mean, target, log_scale, eps=1e-5):
    var = (torch.log(1 + torch.exp(log_scale)) + eps)[None, :, None, None]
    return (0.5 * ((mean - target) ** 2 / var + torch.log(var))).mean()


def ref_nst(fs, ft):
    s = F.normalize(fs.flatten(2), dim=2)
    t = F.normalize(ft.flatten(2), dim=2)

    def k(a, b):
        return torch.einsum("nip,njp->nij", a, b).pow(2).mean()

    return k(t, t) + k(s, s) - 2 * k(s, t)


def ref_kdsvd(g_s, g_t, k=1):
    def svd(f, n):
        _, s, vh = torch.linalg.svd(f.flatten(2).transpose(1, 2), full_matrices=False)
        return F.normalize(vh.transpose(1, 2)[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1)

    total, previous = 0.0, None
    for f_s, f_t in zip(g_s, g_t):
        v_t, s_t = svd(f_t, k)
        v_s, _ = svd(f_s, k + 3)
        cos = v_s.transpose(1, 2) @ v_t  # (N, k + 3, k)
        best = cos.abs().argmax(1, keepdim=True)  # the student vector most parallel to each teacher vector
        sign = torch.sign(cos.gather(1, best))
        v_s = torch.gather(v_s, 2, best.expand(-1, v_s.shape[1], -1)) * sign
        v_t, v_s = v_t * s_t[:, None, :], v_s * s_t[:, None, :]
        if previous is not None:
            b_s, b_t = previous
            rbf_s = torch.exp(-((v_s[:, :, None] - b_s[:, None]) ** 2) / 8)
            rbf_t = torch.exp(-((v_t[:, :, None] - b_t[:, None]) ** 2) / 8)
            total = total + ((rbf_s - rbf_t) ** 2).sum() / f_s.shape[0]
        previous = (v_s, v_t)
    return total


STAGES = ("stage1", "stage2")
#: method -> (student points, teacher points, reference term from (student feats, teacher feats, reference parts))
REFERENCE = {
    "sp": (("stage2",), ("stage2",), lambda s, t, parts: ref_sp(s["stage2"], t["stage2"])),
    "cc": (
        ("pre_logit",),
        ("pre_logit",),
        lambda s, t, parts: ref_cc(parts["embed_student"](s["pre_logit"]), parts["embed_teacher"](t["pre_logit"])),
    ),
    "rkd": (("pre_logit",), ("pre_logit",), lambda s, t, parts: ref_rkd(s["pre_logit"], t["pre_logit"])),
    "pkt": (("pre_logit",), ("pre_logit",), lambda s, t, parts: ref_pkt(s["pre_logit"], t["pre_logit"])),
    "vid": (
        STAGES,
        STAGES,
        lambda s, t, parts: sum(
            ref_vid(parts[f"regressor{i}"](s[name]), t[name], parts[f"log_scale{i}"]) for i, name in enumerate(STAGES)
        ),
    ),
    "kdsvd": (STAGES, STAGES, lambda s, t, parts: ref_kdsvd([s[n] for n in STAGES], [t[n] for n in STAGES])),
    "nst": (STAGES, STAGES, lambda s, t, parts: sum(ref_nst(s[n], t[n]) for n in STAGES)),
}


def reference_parts(name: str, initial: dict[str, Tensor]) -> dict[str, nn.Module | nn.Parameter]:
    """The method's trainable parts rebuilt by hand, starting from the same initial values."""
    if name == "cc":
        parts = {}
        for side in ("student", "teacher"):
            weight = initial[f"embed_{side}.weight"]
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            linear.load_state_dict({"weight": weight, "bias": initial[f"embed_{side}.bias"]})
            parts[f"embed_{side}"] = linear
        return parts
    if name == "vid":
        parts = {}
        for i in range(len(STAGES)):
            convs = [initial[f"regressors.{i}.{j}.weight"] for j in (0, 2, 4)]
            layers = []
            for j, weight in enumerate(convs):
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False)
                conv.weight.data.copy_(weight)
                layers += [conv, nn.ReLU()] if j < 2 else [conv]
            parts[f"regressor{i}"] = nn.Sequential(*layers)
            parts[f"log_scale{i}"] = nn.Parameter(initial[f"log_scales.{i}"].clone())
        return parts
    return {}


def parameters_of(parts) -> list[nn.Parameter]:
    found = []
    for part in parts.values():
        found += [part] if isinstance(part, nn.Parameter) else list(part.parameters())
    return found


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    student, teacher = build_model("light_cnn", CLASSES, 3, SIZE), build_model("light_cnn", CLASSES, 3, SIZE)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
            torch.randint(0, CLASSES, (BATCH,), generator=generator),
            torch.arange(i * BATCH, (i + 1) * BATCH),
        )
        for i in range(STEPS)
    ]
    return student, teacher, batches


@pytest.mark.parametrize("name", list(REFERENCE))
def test_training_steps_equal_the_reference_loop(setting, name):
    student0, teacher, batches = setting
    student_points, teacher_points, term = REFERENCE[name]
    node = loss_node(name)
    ce_weight, weight = node["ce_weight"], node[f"{name}_weight"]

    # kd-hydra: the method from its YAML, its parts sized from probed shapes, the real epoch loop
    method = method_from_yaml(name)
    student = copy.deepcopy(student0)
    request = method.feature_request(list(feature_points(student)), list(feature_points(teacher)))
    assert (request.student, request.teacher) == (student_points, teacher_points)
    image = (3, SIZE, SIZE)
    torch.manual_seed(0)
    method.setup(
        probe_feature_shapes(student, list(request.student), image),
        probe_feature_shapes(teacher, list(request.teacher), image),
        torch.zeros(BATCH * STEPS, dtype=torch.long),
        CLASSES,
    )
    initial = copy.deepcopy(method.state_dict())
    source = LiveTeacher(copy.deepcopy(teacher), RUNTIME, list(request.teacher))
    assemble = BatchAssembler(student, RUNTIME, source, request.student)
    stage = training_stage(
        "student", 1, student, method, lambda g: torch.optim.SGD(g, lr=LR, momentum=0.9), constant_schedule, "lr"
    )
    optimizer, _ = stage.build_optimizer()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(7)  # the student's dropout draws the same masks in both loops
    stats = train_epoch(stage, iter(batches), StepForward(stage, assemble), optimizer, scaler, RUNTIME)

    # the reference: hooks written here, the equations above, one optimizer over student and parts
    reference = copy.deepcopy(student0).train()
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
    parts = reference_parts(name, initial)
    seen: dict[str, dict[str, Tensor]] = {"s": {}, "t": {}}
    for model, side, names in ((reference, "s", student_points), (frozen, "t", teacher_points)):
        for point in names:
            module = model.get_submodule(feature_points(model)[point])
            module.register_forward_hook(lambda m, i, out, side=side, point=point: seen[side].update({point: out}))
    ref_groups = [{"params": list(reference.parameters())}]
    if parameters_of(parts):
        ref_groups.append({"params": parameters_of(parts)})
    ref_optimizer = torch.optim.SGD(ref_groups, lr=LR, momentum=0.9)
    losses = []
    torch.manual_seed(7)
    for images, targets, _ in batches:
        with torch.no_grad():
            frozen(images)
        logits = reference(images)
        s = {k: v.flatten(1) if k == "pre_logit" else v for k, v in seen["s"].items()}
        t = {k: v.flatten(1) if k == "pre_logit" else v for k, v in seen["t"].items()}
        loss = ce_weight * F.cross_entropy(logits, targets) + weight * term(s, t, parts)
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()
        losses.append(loss.item())

    assert stats["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    for (key, ours), theirs in zip(student.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=f"{name}: student {key}")
    trained = method.state_dict()
    if name == "cc":
        for side in ("student", "teacher"):
            torch.testing.assert_close(trained[f"embed_{side}.weight"], parts[f"embed_{side}"].weight.detach())
    if name == "vid":
        for i in range(len(STAGES)):
            torch.testing.assert_close(trained[f"log_scales.{i}"], parts[f"log_scale{i}"].detach())
            torch.testing.assert_close(trained[f"regressors.{i}.4.weight"], parts[f"regressor{i}"][4].weight.detach())
    if parameters_of(parts):
        assert any(not torch.equal(trained[k], initial[k]) for k in initial), "the method's parts were trained"
