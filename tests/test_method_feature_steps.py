"""Step tests for AB, FT, FSP, OFD (and their initialization stage): a few SGD steps of kd-hydra's training
(``kd_hydra.train.trainer.train_epoch`` of the training stage with the batch assembler's hooks, the live teacher, the
method's parts in the optimizer; the initialization stage through ``Trainer.fit``) equal a short reference loop
written here from the papers' equations and RepDistiller's ``helper/pretrain.py``, on the same weights and float64
batches."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kd_hydra.models import build_model
from kd_hydra.records.files import HistoryLog
from kd_hydra.stores.teacher_outputs import LiveTeacher
from kd_hydra.train.batches import BatchAssembler
from kd_hydra.train.runtime import Runtime
from kd_hydra.train.schedules import constant_schedule
from kd_hydra.train.stages import initialization_stage, training_stage
from kd_hydra.train.trainer import StepForward, Trainer, train_epoch
from tests.feature_nets import CLASSES, IMAGE_SHAPE, TinyResNet, batches
from tests.method_helpers import set_up_like_the_trainer

RUNTIME = Runtime(torch.device("cpu"), None, False, False)
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
PREACTS = ["stage1_preact", "stage2_preact", "stage3_preact"]


def sgd_groups(groups, lr=LR):
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def sgd(*groups, lr=LR):
    return sgd_groups([{"params": list(g)} for g in groups], lr=lr)


def networks(same_widths=False):
    student = TinyResNet((4, 8, 8, 16), seed=1).double()
    teacher = TinyResNet((4, 8, 8, 16) if same_widths else (8, 16, 16, 32), seed=2).double().eval()
    return student, teacher


def prepared(name, student, teacher, **overrides):
    """The method as ``loss=<name>`` builds it, set up on the two networks as the trainer does."""
    method, request = set_up_like_the_trainer(
        name, student, teacher, IMAGE_SHAPE, torch.zeros(24, dtype=torch.long), CLASSES, **overrides
    )
    return method.double(), request


def kd_hydra_training(method, request, student, teacher, data, epochs=1):
    """kd-hydra's loop: the training stage as the app builds it (student + method parts in one SGD), the live
    teacher, the batch assembler's hooks on the student."""
    source = LiveTeacher(teacher, RUNTIME, request.teacher, batch_statistics=method.teacher_batch_statistics)
    assemble = BatchAssembler(student, RUNTIME, source, request.student)
    stage = training_stage("student", epochs, student, method, sgd_groups, constant_schedule, "optimizer.lr")
    optimizer, _ = stage.build_optimizer()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for epoch in range(1, epochs + 1):
        method.begin_epoch(epoch, epochs)
        train_epoch(stage, iter(data), StepForward(stage, assemble), optimizer, scaler, RUNTIME)
    assemble.close()
    source.recorder.remove()


def reference_training(student, teacher, parts, data, distill_term, ce_weight=1.0, epochs=1, teacher_train=False):
    """The reference loop: explicit forwards, ``ce_weight * CE + distill_term(...)``, SGD on student + parts."""
    optimizer = sgd(student.parameters(), [p for p in parts.parameters() if p.requires_grad])
    student.train(), parts.train(), teacher.train(teacher_train)
    for epoch in range(1, epochs + 1):
        for images, targets, _ in data:
            logits, s_features = student.reference_features(images)
            with torch.no_grad():
                _, t_features = teacher.reference_features(images)
            loss = ce_weight * F.cross_entropy(logits, targets) + distill_term(s_features, t_features, epoch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def assert_same_weights(a, b, rtol=1e-9, atol=1e-11):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=name)


def pool_to(f, size):
    return f if tuple(f.shape[2:]) == tuple(size) else F.adaptive_avg_pool2d(f, size)


# -- the papers' equations ---------------------------------------------------------------------------------


def ab_term(connected, teacher, margin):
    """Heo et al. eq. (5): alternative L2 around the margin, RepDistiller's 2^(i-n+1) * 3/1000 / N."""
    n, total = len(connected), 0.0
    for i, (s, t) in enumerate(zip(connected, teacher)):
        off = (s + margin) ** 2 * ((s > -margin) & (t <= 0))
        on = (s - margin) ** 2 * ((s <= margin) & (t > 0))
        total = total + 2.0 ** (i - n + 1) * (off + on).sum() / s.shape[0] * 3 / 1000
    return total


def factor(f):
    a = f.pow(2).mean(1).flatten(1)
    return a / a.norm(dim=1, keepdim=True)


def fsp_term(student_maps, teacher_maps):
    """Yim et al. eq. (1)-(2) (mean over matrix entries and batch, as RepDistiller)."""
    total = 0.0
    for i in range(len(student_maps) - 1):
        grams = []
        for maps in (student_maps, teacher_maps):
            bottom, top = maps[i], maps[i + 1]
            size = (min(bottom.shape[2], top.shape[2]), min(bottom.shape[3], top.shape[3]))
            bottom, top = pool_to(bottom, size), pool_to(top, size)
            grams.append(torch.einsum("nihw,njhw->nji", bottom, top) / (size[0] * size[1]))
        total = total + (grams[0] - grams[1]).pow(2).mean()
    return total


def margin_of(bn):
    """E[x | x < 0] for x ~ N(beta, gamma^2) from the truncated normal, -3|gamma| when P(x < 0) <= 0.001."""
    values = []
    for g, b in zip(bn.weight.tolist(), bn.bias.tolist()):
        s = abs(g)
        cdf = 0.5 * math.erfc(b / s / math.sqrt(2))
        values.append(b - s * math.exp(-((b / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf if cdf > 1e-3 else -3 * s)
    return torch.tensor(values, dtype=torch.float32).double().reshape(1, -1, 1, 1)  # a FloatTensor, as the reference


def ofd_term(connected, teacher, margins):
    """Heo et al. (ICCV 2019) eq. (3)-(4): partial L2 against max(t, m), per-sample sum, 1/2^(n-1-i)."""
    n, total = len(connected), 0.0
    for i, (s, t, m) in enumerate(zip(connected, teacher, margins)):
        t = pool_to(t, s.shape[2:])
        target = torch.where(t > m, t, m.expand_as(t))
        mask = (s > target) | (t > 0)
        total = total + ((s - target) ** 2 * mask).sum() / s.shape[0] / 2 ** (n - 1 - i)
    return total


# -- distillation steps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ab_weight", [0.0, 2.0])
def test_ab_steps_equal_the_reference(ab_weight):
    student, teacher = networks()
    method, request = prepared("ab", student, teacher, ab_weight=ab_weight)
    reference_student, connectors = copy.deepcopy(student), copy.deepcopy(method.connectors)
    data = batches(3)
    kd_hydra_training(method, request, student, teacher, data)

    def term(s, t, epoch):
        if not ab_weight:  # RepDistiller's distillation stage: CE only, the connector not trained
            return 0.0
        return ab_weight * ab_term([c(s[p]) for c, p in zip(connectors, PREACTS)], [t[p] for p in PREACTS], 1.0)

    reference_training(reference_student, teacher, connectors if ab_weight else torch.nn.Module(), data, term)
    assert_same_weights(student, reference_student)
    assert_same_weights(method.connectors, connectors)


def test_ft_steps_equal_the_reference():
    student, teacher = networks()
    method, request = prepared("ft", student, teacher)
    reference_student = copy.deepcopy(student)
    translator, paraphraser = copy.deepcopy(method.translator), copy.deepcopy(method.paraphraser)
    data = batches(3)
    kd_hydra_training(method, request, student, teacher, data)

    def term(s, t, epoch):
        with torch.no_grad():
            teacher_factor = paraphraser.encoder(t["stage3"])
        return 200.0 * (factor(translator(s["stage3"])) - factor(teacher_factor)).abs().mean()

    reference_training(reference_student, teacher, translator, data, term)
    assert_same_weights(student, reference_student)
    assert_same_weights(method.translator, translator)
    assert_same_weights(method.paraphraser, paraphraser)  # frozen outside the initialization stage


@pytest.mark.parametrize("fsp_weight", [0.0, 5.0])
def test_fsp_steps_equal_the_reference(fsp_weight):
    student, teacher = networks(same_widths=True)
    method, request = prepared("fsp", student, teacher, fsp_weight=fsp_weight)
    reference_student = copy.deepcopy(student)
    data = batches(3)
    kd_hydra_training(method, request, student, teacher, data)
    points = ["stem", "stage1", "stage2", "stage3"]

    def term(s, t, epoch):
        return fsp_weight * fsp_term([s[p] for p in points], [t[p] for p in points])

    reference_training(reference_student, teacher, torch.nn.Module(), data, term)
    assert_same_weights(student, reference_student)


def test_ofd_steps_equal_the_reference():
    student, teacher = networks()
    method, request = prepared("ofd", student, teacher, feat_weight=0.01)
    reference_student, connectors = copy.deepcopy(student), copy.deepcopy(method.connectors)
    margins = [margin_of(teacher.stages[i].bn2) for i in range(3)]
    data = batches(3)
    kd_hydra_training(method, request, student, teacher, data)

    def term(s, t, epoch):
        connected = [c(s[p]) for c, p in zip(connectors, PREACTS)]
        return 0.01 * ofd_term(connected, [t[p] for p in PREACTS], margins)

    # the reference runs its teacher in train mode (batch statistics), on a copy: its running statistics move
    reference_teacher = copy.deepcopy(teacher)
    reference_training(reference_student, reference_teacher, connectors, data, term, teacher_train=True)
    assert_same_weights(student, reference_student)
    assert_same_weights(method.connectors, connectors)
    assert_same_weights(teacher, networks()[1])  # kd-hydra's teacher is left as it was


# -- the initialization stage ------------------------------------------------------------------------------


class ListPipeline:
    """The same fixed batches every epoch, as a batch source of the loop."""

    supports_logit_cache = False
    has_val = False

    def __init__(self, data):
        self.data = data
        self.num_train = sum(len(b[0]) for b in data)
        self.num_train_batches = len(data)

    def train_batches(self, epoch):
        return iter(self.data)

    def test_batches(self):
        return ((images, targets) for images, targets, _ in self.data)

    def val_batches(self):
        raise AssertionError("no validation split")


def kd_hydra_init_stage(method, request, student, teacher, data):
    """The method's initialization stage as the app builds it, run by ``Trainer.fit``; None when there is none."""
    stage = initialization_stage(method, student, sgd_groups)
    if stage is not None:
        source = LiveTeacher(teacher, RUNTIME, request.teacher)
        assemble = BatchAssembler(student, RUNTIME, source, request.student)
        Trainer(RUNTIME, seed=0, progress=False).fit(method, ListPipeline(data), assemble, [stage], HistoryLog(None))
        assemble.close()
        source.recorder.remove()
    return stage


def reference_init(parameters, data, loss_of, lr, epochs):
    """RepDistiller's helper/pretrain.py: SGD (momentum 0.9, wd 5e-4) at a constant lr on the init loss alone
    (the caller sets the modes: student in eval, the init modules in train); returns each epoch's mean loss."""
    optimizer = sgd(parameters, lr=lr)
    means = []
    for _ in range(epochs):
        losses = []
        for images, _, _ in data:
            loss = loss_of(images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        means.append(sum(losses) / len(losses))
    return means


def test_ab_initialization_stage_trains_feature_modules_and_connectors_on_ab_alone():
    student, teacher = networks()
    method, request = prepared("ab", student, teacher, init_epochs=2, init_lr=0.02)
    reference_student, connectors = copy.deepcopy(student), copy.deepcopy(method.connectors)
    data = batches(2)
    kd_hydra_init_stage(method, request, student, teacher, data)

    def loss_of(images):
        _, s = reference_student.reference_features(images)
        with torch.no_grad():
            _, t = teacher.reference_features(images)
        return ab_term([c(s[p]) for c, p in zip(connectors, PREACTS)], [t[p] for p in PREACTS], 1.0)

    feature_modules = torch.nn.ModuleList([reference_student.stem, reference_student.stages])
    reference_student.eval(), feature_modules.train(), connectors.train()
    losses = reference_init([*connectors.parameters(), *feature_modules.parameters()], data, loss_of, 0.02, 2)
    assert losses[1] < losses[0]
    assert_same_weights(student, reference_student)
    assert_same_weights(method.connectors, connectors)


class BatchNormOutputs:
    """Forward hooks recording the outputs of the BatchNorms RepDistiller's WRN returns as ``preact_feats``
    (``block2.layer[0].bn1``, ``block3.layer[0].bn1``, ``bn1``; kd-hydra's WRN names them as below)."""

    PATHS = ("stages.1.0.bn1", "stages.2.0.bn1", "final_activation.0")

    def __init__(self, model):
        self.outputs = {}
        for path in self.PATHS:
            model.get_submodule(path).register_forward_hook(
                lambda m, i, out, path=path: self.outputs.update({path: out})
            )

    def __call__(self):
        return [self.outputs[path] for path in self.PATHS]


def test_ab_initialization_stage_on_a_wide_resnet_trains_what_repdistiller_trains():
    """RepDistiller's ``init``: ``model_s.eval()``, then ``init_modules.train()`` (the connectors and
    ``get_feat_modules()``: conv1, block1..3), an SGD over their parameters. So the final BatchNorm (the
    ``stage3_preact`` point) normalises with its running statistics and is not trained."""
    torch.manual_seed(0)
    student = build_model("wrn_16_1", CLASSES, 3, IMAGE_SHAPE[1]).double()
    teacher = build_model("wrn_16_2", CLASSES, 3, IMAGE_SHAPE[1]).double().eval()
    method, request = prepared("ab", student, teacher, init_epochs=2, init_lr=0.02)
    assert request.student == tuple(PREACTS)
    reference_student, connectors = copy.deepcopy(student), copy.deepcopy(method.connectors)
    untouched = copy.deepcopy(student)
    data = batches(2)
    kd_hydra_init_stage(method, request, student, teacher, data)

    student_preacts, teacher_preacts = BatchNormOutputs(reference_student), BatchNormOutputs(teacher)

    def loss_of(images):
        reference_student(images)
        with torch.no_grad():
            teacher(images)
        return ab_term([c(s) for c, s in zip(connectors, student_preacts())], teacher_preacts(), 1.0)

    feature_modules = torch.nn.ModuleList([reference_student.stem, reference_student.stages])
    reference_student.eval(), feature_modules.train(), connectors.train()
    reference_init([*connectors.parameters(), *feature_modules.parameters()], data, loss_of, 0.02, 2)
    assert_same_weights(student, reference_student)
    assert_same_weights(method.connectors, connectors)
    assert_same_weights(student.final_activation, untouched.final_activation)  # not trained, statistics kept
    assert not torch.equal(student.stem.weight, untouched.stem.weight)
    assert all(p.requires_grad for p in student.parameters()), "the stage gives back the parameters as it found them"


def test_ft_initialization_stage_trains_only_the_paraphraser_then_freezes_it():
    student, teacher = networks()
    method, request = prepared("ft", student, teacher, init_epochs=2)
    untouched, paraphraser = copy.deepcopy(student), copy.deepcopy(method.paraphraser)
    data = batches(2)
    kd_hydra_init_stage(method, request, student, teacher, data)

    def loss_of(images):
        with torch.no_grad():
            _, t = teacher.reference_features(images)
        return F.mse_loss(paraphraser.decoder(paraphraser.encoder(t["stage3"])), t["stage3"])

    for p in paraphraser.parameters():
        p.requires_grad_(True)
    reference_init(list(paraphraser.parameters()), data, loss_of, 0.01, 2)  # ft.yaml: init_lr 0.01
    assert_same_weights(method.paraphraser, paraphraser)
    assert_same_weights(student, untouched)  # in eval mode: weights and BatchNorm statistics unchanged
    assert not any(p.requires_grad for p in method.paraphraser.parameters())


def test_fsp_initialization_stage_uses_the_main_lr_by_default():
    student, teacher = networks(same_widths=True)
    method, request = prepared("fsp", student, teacher, init_epochs=1)
    reference_student = copy.deepcopy(student)
    data = batches(2)
    kd_hydra_init_stage(method, request, student, teacher, data)
    points = ["stem", "stage1", "stage2", "stage3"]

    def loss_of(images):
        _, s = reference_student.reference_features(images)
        with torch.no_grad():
            _, t = teacher.reference_features(images)
        return fsp_term([s[p] for p in points], [t[p] for p in points])

    feature_modules = torch.nn.ModuleList([reference_student.stem, reference_student.stages])
    reference_student.eval(), feature_modules.train()
    reference_init(list(feature_modules.parameters()), data, loss_of, LR, 1)
    assert_same_weights(student, reference_student)


def test_zero_init_epochs_is_no_stage():
    student, teacher = networks()
    method, request = prepared("ab", student, teacher, init_epochs=0)
    assert kd_hydra_init_stage(method, request, student, teacher, batches(1)) is None


def hcl_term(student_maps, teacher_maps):
    """Chen et al. (CVPR 2021) eq. (6): per level, MSE at full size plus 4x4, 2x2, 1x1 pools weighted 1/2, 1/4, ..."""
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        terms = [F.mse_loss(s, t)] + [
            F.mse_loss(F.adaptive_avg_pool2d(s, k), F.adaptive_avg_pool2d(t, k)) for k in (4, 2, 1) if k < s.shape[2]
        ]
        weights = [0.5**i for i in range(len(terms))]
        total = total + sum(w * x for w, x in zip(weights, terms)) / sum(weights)
    return total


def review(abfs, student_maps, teacher_sizes):
    """Eq. (3)-(5): from the deepest level up, fuse each map with the deeper result by two attention maps."""
    results, deeper = [], None
    for abf, x, size in zip(abfs, student_maps[::-1], teacher_sizes[::-1]):
        x = abf.conv1(x)
        if deeper is not None:
            deeper = F.interpolate(deeper, x.shape[2:], mode="nearest")
            weights = torch.sigmoid(abf.att_conv[0](torch.cat([x, deeper], 1)))
            x = x * weights[:, 0:1] + deeper * weights[:, 1:2]
        x = F.interpolate(x, size, mode="nearest") if tuple(x.shape[2:]) != size else x
        results.insert(0, abf.conv2(x))
        deeper = x
    return results


def test_reviewkd_steps_with_warm_up_equal_the_reference():
    student, teacher = networks()
    method, request = prepared("reviewkd", student, teacher, warmup=2)
    reference_student, abfs = copy.deepcopy(student), copy.deepcopy(method.abfs)
    data = batches(2)
    kd_hydra_training(method, request, student, teacher, data, epochs=2)
    sizes = [(16, 16), (8, 8), (4, 4), (1, 1)]

    def term(s, t, epoch):
        maps = [s["stage1"], s["stage2"], s["stage3"], s["pre_logit"][:, :, None, None]]
        targets = [t["stage1_preact"], t["stage2_preact"], t["stage3_preact"], t["pre_logit"][:, :, None, None]]
        return min(epoch / 2, 1.0) * 5.0 * hcl_term(review(abfs, maps, sizes), targets)

    reference_training(reference_student, teacher, abfs, data, term, epochs=2)
    assert_same_weights(student, reference_student)
    assert_same_weights(method.abfs, abfs)


def mlkd_term(sw, tw, ss, ts, temperature=4.0, kd_weight=0.9):
    """Jin et al.'s forward_train, written out: masked weak terms, strong terms, class and batch correlations."""
    temps = [temperature, 3.0, 5.0, 2.0, 6.0]
    p = torch.softmax(tw, 1)
    confidence = p.max(1).values
    mask = (confidence <= torch.quantile(confidence, 0.5)).double()
    class_mask = (p.sum(0) <= torch.quantile(p.sum(0), 0.5)).double()

    def kl(s, t, T):
        return (
            (torch.softmax(t / T, 1) * (torch.log_softmax(t / T, 1) - torch.log_softmax(s / T, 1))).sum(1).mean()
            * T
            * T
        )

    def gram(s, t, T, classes):
        a, b = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
        if classes:
            return ((b.t() @ b - a.t() @ a) ** 2).sum() / s.shape[1]
        return ((b @ b.t() - a @ a.t()) ** 2).sum() / s.shape[0]

    kd = sum((kl(sw, tw, T) * mask).mean() for T in temps)
    kd = kd + sum(kl(ss, ts, T) for T in temps[:3]) + sum(kl(sw, tw, T) for T in temps[3:])
    cc = sum((gram(sw, tw, T, True) * class_mask).mean() for T in temps)
    bc = sum((gram(sw, tw, T, False) * mask).mean() for T in temps)
    return kd_weight * (kd + cc + bc)


def test_mlkd_steps_with_the_strong_view_equal_the_reference():
    from kd_hydra.data.strong_augment import strong_view

    student, teacher = networks()
    method, request = prepared("mlkd", student, teacher)
    reference_student = copy.deepcopy(student)
    data = batches(3)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    generator = torch.Generator().manual_seed(7)
    stage = training_stage("student", 1, student, method, sgd_groups, constant_schedule, "optimizer.lr")
    optimizer, _ = stage.build_optimizer()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    method.begin_epoch(1, 1)

    def strong(images):
        return strong_view(images, mean, std, generator)

    assemble = BatchAssembler(student, RUNTIME, LiveTeacher(teacher, RUNTIME), strong_view=strong)
    train_epoch(stage, iter(data), StepForward(stage, assemble), optimizer, scaler, RUNTIME)

    generator = torch.Generator().manual_seed(7)
    optimizer = sgd(reference_student.parameters())
    reference_student.train()
    for images, targets, _ in data:
        strong_images = strong_view(images, mean, std, generator)
        weak_logits = reference_student(images)
        strong_logits = reference_student(strong_images)
        with torch.no_grad():  # the live teacher hands over float32 logits
            teacher_weak, teacher_strong = (teacher(x).float().double() for x in (images, strong_images))
        ce = F.cross_entropy(weak_logits, targets) + F.cross_entropy(strong_logits, targets)
        loss = 0.1 * ce + mlkd_term(weak_logits, teacher_weak, strong_logits, teacher_strong)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # float32 teacher logits (the live teacher's) make the two sides differ by float32 rounding in the teacher terms
    assert_same_weights(student, reference_student, rtol=1e-6, atol=1e-8)
