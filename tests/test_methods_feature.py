"""AB, FT, FSP, OFD, ReviewKD: loss functions against independent float64 numpy formulas (and gradcheck),
the methods' parts, trainable parts, point checks, YAML defaults and one-line value checks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kd_hydra.errors import ConfigError
from kd_hydra.losses import (
    activation_boundary_loss,
    batch_correlation_loss,
    class_correlation_loss,
    factor_transfer_loss,
    fsp_loss,
    fsp_matrix,
    hierarchical_context_loss,
    mlkd_loss,
    ofd_loss,
    ofd_margin,
    ofd_partial_l2,
)
from kd_hydra.methods import MethodBatch, builtin_methods, validate_method_config
from kd_hydra.methods.ab import AB
from kd_hydra.methods.fsp import FSP
from kd_hydra.methods.ft import FT
from kd_hydra.methods.mlkd import MLKD
from kd_hydra.methods.ofd import OFD, preact_batchnorm
from kd_hydra.methods.reviewkd import ReviewKD
from kd_hydra.models.features import probe_feature_shapes
from tests.feature_nets import IMAGE_SHAPE, TinyResNet
from tests.method_helpers import loss_node, method_from_yaml

REPO = Path(__file__).resolve().parents[1]
METHODS = {"ab": AB, "ft": FT, "fsp": FSP, "ofd": OFD, "reviewkd": ReviewKD, "mlkd": MLKD}


def rand(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def np_pool(f, size):
    n, c, h, w = f.shape
    return f.reshape(n, c, size[0], h // size[0], size[1], w // size[1]).mean(axis=(3, 5))


def np_pool_smaller(a, b):
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return np_pool(a, size), np_pool(b, size)


# -- independent float64 formulas ------------------------------------------------------------------------


def reference_ab(student, teacher, margin):
    """Heo et al. eq. (5), RepDistiller's weights 2^(i-n+1) and scale 3 / 1000 / N."""
    total, n = 0.0, len(student)
    for i, (s, t) in enumerate(zip(student, teacher)):
        value = np.where((s > -margin) & (t <= 0), (s + margin) ** 2, 0.0)
        value = value + np.where((s <= margin) & (t > 0), (s - margin) ** 2, 0.0)
        total += 2.0 ** (i - n + 1) * value.sum() / s.shape[0] / 1000 * 3
    return total


def reference_ft(s, t, p1, p2):
    s, t = np_pool_smaller(s, t)
    maps = []
    for f in (s, t):
        a = (f**p1).mean(axis=1).reshape(len(f), -1)
        maps.append(a / np.linalg.norm(a, axis=1, keepdims=True))
    return (np.abs(maps[0] - maps[1]) ** p2).mean()


def reference_fsp(student, teacher):
    total = 0.0
    for i in range(len(student) - 1):
        grams = []
        for maps in (student, teacher):
            bottom, top = np_pool_smaller(maps[i], maps[i + 1])
            n, c_b, h, w = bottom.shape
            g = np.zeros((n, top.shape[1], c_b))
            for j in range(top.shape[1]):
                for k in range(c_b):
                    g[:, j, k] = (top[:, j] * bottom[:, k]).sum(axis=(1, 2)) / (h * w)
            grams.append(g)
        total += ((grams[0] - grams[1]) ** 2).mean()
    return total


def reference_margin(gamma, beta):
    """E[x | x < 0] for x ~ N(beta, gamma^2), per channel (truncated normal mean), -3|gamma| when P(x<0) <= 1e-3."""
    out = []
    for g, b in zip(gamma, beta):
        s = abs(g)
        cdf = 0.5 * (1 + math.erf((-b / s) / math.sqrt(2)))
        if cdf > 0.001:
            out.append(b - s * math.exp(-((b / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf)
        else:
            out.append(-3 * s)
    return np.array(out)


def reference_partial_l2(s, t, m):
    """mdistiller's three cases: below-margin teacher, negative teacher above the margin, positive teacher."""
    m = m.reshape(1, -1, 1, 1)
    loss = np.where((s > m) & (t <= m), (s - m) ** 2, 0.0)
    loss += np.where((s > t) & (t > m) & (t <= 0), (s - t) ** 2, 0.0)
    loss += np.where(t > 0, (s - t) ** 2, 0.0)
    return loss.mean(axis=0).sum()


def reference_hcl(student, teacher):
    total = 0.0
    for s, t in zip(student, teacher):
        h = s.shape[2]
        loss, weight, weights = ((s - t) ** 2).mean(), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            weight /= 2
            loss += weight * ((np_pool(s, (level, level)) - np_pool(t, (level, level))) ** 2).mean()
            weights += weight
        total += loss / weights
    return total


# -- the pure functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_activation_boundary_loss_matches_the_formula(margin):
    student = [rand(3, 4, 8, 8, seed=1), rand(3, 6, 4, 4, seed=2), rand(3, 8, 2, 2, seed=3)]
    teacher = [rand(3, 4, 8, 8, seed=4), rand(3, 6, 4, 4, seed=5), rand(3, 8, 2, 2, seed=6)]
    got = activation_boundary_loss(student, teacher, margin).item()
    expected = reference_ab([f.numpy() for f in student], [f.numpy() for f in teacher], margin)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("p1,p2", [(2.0, 1.0), (2.0, 2.0), (1.0, 1.0)])
def test_factor_transfer_loss_matches_the_formula(p1, p2):
    s, t = rand(3, 5, 8, 8, seed=1).abs(), rand(3, 7, 4, 4, seed=2).abs()  # student pooled to the teacher's 4x4
    expected = reference_ft(s.numpy(), t.numpy(), p1, p2)
    assert factor_transfer_loss(s, t, p1, p2).item() == pytest.approx(expected, rel=1e-12)
    assert factor_transfer_loss(t, s, p1, p2).item() == pytest.approx(reference_ft(t.numpy(), s.numpy(), p1, p2))


def test_fsp_loss_matches_the_formula_and_needs_equal_channels():
    student = [rand(2, 3, 8, 8, seed=1), rand(2, 4, 8, 8, seed=2), rand(2, 5, 4, 4, seed=3)]
    teacher = [rand(2, 3, 8, 8, seed=4), rand(2, 4, 8, 8, seed=5), rand(2, 5, 4, 4, seed=6)]
    expected = reference_fsp([f.numpy() for f in student], [f.numpy() for f in teacher])
    assert fsp_loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)
    assert fsp_matrix(student[0], student[1]).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="fsp matrices differ"):
        fsp_loss(student, [teacher[0], rand(2, 6, 8, 8), teacher[2]])


def test_ofd_margin_is_the_negative_half_mean_of_the_batchnorm_gaussian():
    gamma = torch.tensor([1.0, -0.5, 2.0, 0.3, 1e-3], dtype=torch.float64)
    beta = torch.tensor([0.0, 0.2, -1.0, 2.0, 0.5], dtype=torch.float64)  # 4th: P(x < 0) ~ 1e-11 -> -3 |gamma|
    np.testing.assert_allclose(ofd_margin(gamma, beta).numpy(), reference_margin(gamma.numpy(), beta.numpy()))
    assert ofd_margin(gamma, beta)[3].item() == pytest.approx(-0.9)
    # Monte Carlo check of the closed form on one channel
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.7 + 0.3
    sampled = x[x < 0].mean().item()
    assert ofd_margin(torch.tensor([0.7]), torch.tensor([0.3])).item() == pytest.approx(sampled, abs=2e-3)
    zero = ofd_margin(torch.tensor([0.0, 0.0]), torch.tensor([-0.5, 0.5]))
    assert zero.tolist() == [-0.5, 0.0] and (ofd_margin(gamma, beta) <= 0).all()


def test_ofd_loss_matches_the_formula():
    margins = [-rand(4, seed=7).abs(), -rand(6, seed=8).abs()]
    student = [rand(3, 4, 8, 8, seed=1), rand(3, 6, 4, 4, seed=2)]
    teacher = [rand(3, 4, 16, 16, seed=3), rand(3, 6, 4, 4, seed=4)]  # first teacher map pooled to 8x8
    s, t, m = student[1].numpy(), teacher[1].numpy(), margins[1].numpy()
    assert ofd_partial_l2(student[1], teacher[1], margins[1]).item() == pytest.approx(reference_partial_l2(s, t, m))
    expected = reference_partial_l2(student[0].numpy(), np_pool(teacher[0].numpy(), (8, 8)), margins[0].numpy()) / 2
    expected += reference_partial_l2(s, t, m)
    assert ofd_loss(student, teacher, margins).item() == pytest.approx(expected, rel=1e-12)


def test_hierarchical_context_loss_matches_the_formula():
    student = [rand(2, 3, 8, 8, seed=1), rand(2, 4, 4, 4, seed=2), rand(2, 5, 1, 1, seed=3)]
    teacher = [rand(2, 3, 8, 8, seed=4), rand(2, 4, 4, 4, seed=5), rand(2, 5, 1, 1, seed=6)]
    expected = reference_hcl([f.numpy() for f in student], [f.numpy() for f in teacher])
    assert hierarchical_context_loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def test_gradients_match_finite_differences():
    s3 = [rand(2, 2, 4, 4, seed=1).requires_grad_(), rand(2, 3, 2, 2, seed=2).requires_grad_()]
    t3 = [rand(2, 2, 4, 4, seed=3), rand(2, 3, 2, 2, seed=4)]
    margins = [-rand(2, seed=5).abs(), -rand(3, seed=6).abs()]
    checks = [
        (lambda a, b: activation_boundary_loss([a, b], t3, 1.0), s3),
        (lambda a: factor_transfer_loss(a, t3[0], 2.0, 2.0), s3[:1]),
        (lambda a: factor_transfer_loss(a, t3[0].abs(), 2.0, 1.0), s3[:1]),
        (lambda a, b: fsp_loss([a, b], [t3[0], rand(2, 3, 4, 4, seed=7)]), [s3[0], rand(2, 3, 4, 4).requires_grad_()]),
        (lambda a, b: ofd_loss([a, b], t3, margins), s3),
        (lambda a, b: hierarchical_context_loss([a, b], t3), s3),
    ]
    for function, inputs in checks:
        assert torch.autograd.gradcheck(function, tuple(inputs))


def test_losses_upcast_half_precision_inputs():
    s, t = rand(2, 4, 4, 4, seed=1), rand(2, 4, 4, 4, seed=2)
    for function in (
        lambda a, b: activation_boundary_loss([a], [b]),
        lambda a, b: factor_transfer_loss(a, b),
        lambda a, b: hierarchical_context_loss([a], [b]),
        lambda a, b: ofd_loss([a], [b], [torch.full((4,), -0.5)]),
    ):
        assert function(s.bfloat16(), t.bfloat16()).dtype == torch.float32


# -- the methods -----------------------------------------------------------------------------------------

STUDENT = TinyResNet((4, 8, 8, 16), seed=1)
TEACHER = TinyResNet((8, 16, 16, 32), seed=2)
POINTS = tuple(STUDENT.feature_points())


def setup_method(method, student=STUDENT, teacher=TEACHER):
    request = method.feature_request(tuple(student.feature_points()), tuple(teacher.feature_points()))
    method.setup(
        probe_feature_shapes(student, request.student, IMAGE_SHAPE),
        probe_feature_shapes(teacher, request.teacher, IMAGE_SHAPE),
        torch.zeros(10, dtype=torch.long),
        5,
    )
    method.setup_teacher(teacher)
    return request


def batch_of(student, teacher):
    images = torch.randn(4, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    s_logits, s_features = student.reference_features(images)
    with torch.no_grad():
        t_logits, t_features = teacher.reference_features(images)
    return MethodBatch(s_logits, torch.tensor([0, 1, 2, 3]), torch.arange(4), t_logits, s_features, t_features)


AUTHORS = {  # the YAML values, from the sources their comments name
    "ab": {"ce_weight": 1.0, "ab_weight": 0.0, "margin": 1.0, "init_epochs": 30, "init_lr": None},
    "ft": {"ce_weight": 1.0, "ft_weight": 200.0, "p1": 2.0, "p2": 1.0, "rate": 0.5, "init_epochs": 30, "init_lr": 0.01},
    "fsp": {"ce_weight": 1.0, "fsp_weight": 0.0, "init_epochs": 30, "init_lr": None},
    "ofd": {"ce_weight": 1.0, "feat_weight": 0.001, "kernel_size": 1},
    "mlkd": {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0, "standardize": False},
    "reviewkd": {
        "ce_weight": 1.0,
        "reviewkd_weight": 5.0,
        "warmup": 20,
        "student_preact": False,
        "max_mid_channels": 512,
    },
}


def test_found_without_a_list_and_yaml_holds_the_authors_values():
    for name, cls in METHODS.items():
        assert builtin_methods()[name] is cls
        yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "loss" / f"{name}.yaml"))
        assert yaml.pop("_target_") == f"kd_hydra.methods.{name}.{cls.__name__}" and yaml.pop("name") == name
        assert yaml == AUTHORS[name]
        assert validate_method_config(loss_node(name)) is cls


def test_feature_requests_and_trainable_parts():
    ab, ofd, fsp, ft = (method_from_yaml(n) for n in ("ab", "ofd", "fsp", "ft"))
    preacts = ("stage1_preact", "stage2_preact", "stage3_preact")
    assert setup_method(ab).teacher == preacts and setup_method(ofd).student == preacts
    assert setup_method(ft).student == ("stage3",)
    twin = TinyResNet((4, 8, 8, 16), seed=3)
    assert setup_method(fsp, STUDENT, twin).student == ("stem", "stage1", "stage2", "stage3")
    assert [type(c).__name__ for c in ab.connectors] == ["Sequential"] * 3  # channels differ: conv + BN
    assert all(isinstance(c[0], torch.nn.Conv2d) and c[0].kernel_size == (1, 1) for c in ofd.connectors)
    assert [m.shape for m in ofd.margins()] == [(16,), (16,), (32,)]
    trainable = {n.split(".")[0] for n, p in ft.named_parameters() if p.requires_grad}
    assert trainable == {"translator"}  # the paraphraser trains only in the initialization stage
    assert "margin_stage3_preact" in ofd.state_dict()
    assert not list(fsp.parameters())


WEIGHT_KEYS = {"ab": "ab_weight", "ft": "ft_weight", "fsp": "fsp_weight", "ofd": "feat_weight"}


@pytest.mark.parametrize("name", ["ab", "ft", "fsp", "ofd", "reviewkd"])
def test_parts_and_weighted_total(name):
    cls = METHODS[name]
    overrides = {"reviewkd_weight": 3.0, "warmup": 0} if name == "reviewkd" else {WEIGHT_KEYS[name]: 3.0}
    method = method_from_yaml(name, ce_weight=0.5, **overrides)
    teacher = TinyResNet((4, 8, 8, 16), seed=3) if name == "fsp" else TEACHER
    setup_method(method, STUDENT, teacher)
    batch = batch_of(STUDENT, teacher)
    out = method(batch)
    assert tuple(out.parts) == cls.parts
    ce = torch.nn.functional.cross_entropy(batch.student_logits, batch.targets)
    term = out.parts[cls.parts[1]]
    torch.testing.assert_close(out.total, 0.5 * ce + 3.0 * term)
    assert term.item() > 0
    out.total.backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)


@pytest.mark.parametrize("cls,weight_key", [(AB, "ab_weight"), (FSP, "fsp_weight")])
def test_zero_weight_reports_the_term_but_trains_on_ce_only(cls, weight_key):
    method = method_from_yaml(cls.name, **{weight_key: 0.0})
    teacher = TinyResNet((4, 8, 8, 16), seed=3) if cls is FSP else TEACHER
    setup_method(method, STUDENT, teacher)
    out = method(batch_of(STUDENT, teacher))
    assert out.parts[cls.parts[1]].item() > 0 and not out.parts[cls.parts[1]].requires_grad
    torch.testing.assert_close(out.total, out.parts["ce"])


def test_pairs_that_cannot_work_are_one_line_errors():
    plain = ("stem", "stage1", "stage2", "stage3", "pre_logit")
    for cls in (AB, OFD):
        with pytest.raises(ConfigError, match="stageN_preact") as error:
            method_from_yaml(cls.name).feature_request(plain, POINTS)
        assert error.value.key == "loss.name"
    with pytest.raises(ConfigError, match="same channel counts"):
        setup_method(method_from_yaml("fsp"))  # student 4/4/8/8/16 vs teacher 8/8/16/16/32
    with pytest.raises(ConfigError, match="stageN"):
        method_from_yaml("ft").feature_request(("stem", "pre_logit"), POINTS)

    class NoBatchNorms(TinyResNet):
        preact_batchnorms = None

        def feature_points(self):
            return {**super().feature_points(), **{f"stage{i}_preact": "pool" for i in (1, 2, 3)}}

    with pytest.raises(ConfigError, match="preact_batchnorms"):
        setup_method(method_from_yaml("ofd"), STUDENT, NoBatchNorms((8, 16, 16, 32), seed=2))


def test_ofd_finds_the_batchnorm_before_each_relu_as_mdistiller_names_it():
    """mdistiller's get_bn_before_relu: ResNets' last block bn2 (bn3 for bottlenecks), WRN's next bn1 / final bn."""
    from kd_hydra.models.registry import build_zoo_model

    def model(name):
        return build_zoo_model(name, num_classes=10, in_channels=3, image_size=32)

    resnet, bottleneck, wrn, mobile = (model(n) for n in ("resnet8x4", "resnet50_cifar", "wrn_16_2", "mobilenetv2"))
    expected = {
        resnet: [resnet.stages[i][-1].bn2 for i in range(3)],
        bottleneck: [bottleneck.stages[i][-1].bn3 for i in range(4)],
        wrn: [wrn.stages[1][0].bn1, wrn.stages[2][0].bn1, wrn.final_activation[0]],
        mobile: [
            [m for m in mobile.get_submodule(path).modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
            for name, path in mobile.feature_points().items()
            if name.endswith("_preact")
        ],
    }
    for net, batchnorms in expected.items():
        points = [p for p in net.feature_points() if p.endswith("_preact")]
        assert [preact_batchnorm(net, p) for p in points] == batchnorms, type(net).__name__
    tiny = TinyResNet((4, 8, 8, 16), seed=0)
    assert [preact_batchnorm(tiny, f"stage{i}_preact") for i in (1, 2, 3)] == [b.bn2 for b in tiny.stages]


BAD = [
    ("ab", "ab_weight", -1.0),
    ("ab", "margin", float("nan")),
    ("ab", "init_epochs", -1),
    ("ab", "init_epochs", 1.5),
    ("ab", "init_lr", 0.0),
    ("ft", "ft_weight", float("inf")),
    ("ft", "p1", 0.0),
    ("ft", "p2", -1.0),
    ("ft", "rate", 1.5),
    ("ft", "init_lr", float("nan")),
    ("fsp", "fsp_weight", -0.5),
    ("fsp", "init_epochs", "x"),
    ("ofd", "feat_weight", float("nan")),
    ("ofd", "kernel_size", 2),
    ("ofd", "kernel_size", 0),
    ("reviewkd", "reviewkd_weight", float("nan")),
    ("reviewkd", "warmup", -1),
    ("reviewkd", "max_mid_channels", 0),
    ("reviewkd", "student_preact", "yes"),
    ("mlkd", "temperature", 0.0),
    ("mlkd", "kd_weight", -1.0),
    ("mlkd", "standardize", 1),
]


@pytest.mark.parametrize("name,key,value", BAD)
def test_validate_config_rejects_bad_values_naming_the_key(name, key, value):
    with pytest.raises(ConfigError) as error:
        validate_method_config(loss_node(name, **{key: value}))
    assert error.value.key == f"loss.{key}"


def test_reviewkd_fuses_deepest_first_to_the_teacher_shapes_and_warms_up():
    method = method_from_yaml("reviewkd", ce_weight=1.0, reviewkd_weight=2.0, warmup=4)
    request = setup_method(method)
    assert request.student == ("stage1", "stage2", "stage3", "pre_logit")
    assert request.teacher == ("stage1_preact", "stage2_preact", "stage3_preact", "pre_logit")
    assert [abf.att_conv is None for abf in method.abfs] == [True, False, False, False]  # pooled level: no fusion
    assert {abf.conv1[0].out_channels for abf in method.abfs} == {16}  # min(512, student's pooled channels)
    batch = batch_of(STUDENT, TEACHER)
    shapes = [tuple(r.shape) for r in method.review(batch.student_features)]
    assert shapes == [(4, 16, 16, 16), (4, 16, 8, 8), (4, 32, 4, 4), (4, 32, 1, 1)]
    for epoch, factor in [(1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)]:
        method.begin_epoch(epoch, 10)
        out = method(batch)
        torch.testing.assert_close(out.total, out.parts["ce"] + factor * 2.0 * out.parts["reviewkd"])
    preact = method_from_yaml("reviewkd", student_preact=True)
    assert setup_method(preact).student == ("stage1_preact", "stage2_preact", "stage3_preact", "pre_logit")
    with pytest.raises(ConfigError, match="stageN_preact"):
        method_from_yaml("reviewkd").feature_request(POINTS, ("stem", "stage1", "stage2", "pre_logit"))


# -- MLKD --------------------------------------------------------------------------------------------------


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_standardize(z):
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


def np_kl(s, t, temperature, standardize):
    if standardize:
        s, t = np_standardize(s), np_standardize(t)
    p_s, p_t = np_softmax(s / temperature), np_softmax(t / temperature)
    return (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean() * temperature**2


def reference_mlkd(sw, tw, ss, ts, temperature, standardize):
    """Jin et al.'s code (logit-standardization repository MLKD.forward_train), term by term, unweighted."""
    temps = [temperature, 3.0, 5.0, 2.0, 6.0]
    p = np_softmax(tw)
    confidence = p.max(axis=1)
    mask = confidence <= np.percentile(confidence, 50)
    class_mask = p.sum(axis=0) <= np.percentile(p.sum(axis=0), 50)

    def cc(s, t, temp):
        a, b = np_softmax(s / temp), np_softmax(t / temp)
        return ((b.T @ b - a.T @ a) ** 2).sum() / s.shape[1]

    def bc(s, t, temp):
        a, b = np_softmax(s / temp), np_softmax(t / temp)
        return ((b @ b.T - a @ a.T) ** 2).sum() / s.shape[0]

    kd_weak = sum((np_kl(sw, tw, T, standardize) * mask).mean() for T in temps)
    kd_strong = sum(np_kl(ss, ts, T, standardize) for T in temps[:3]) + sum(
        np_kl(sw, tw, T, standardize) for T in temps[3:]
    )
    cc_weak = sum((cc(sw, tw, T) * class_mask).mean() for T in temps)
    bc_weak = sum((bc(sw, tw, T) * mask).mean() for T in temps)
    return kd_weak + kd_strong, cc_weak, bc_weak


@pytest.mark.parametrize("temperature,standardize", [(4.0, False), (2.0, True)])
def test_mlkd_loss_matches_the_reference_formulas(temperature, standardize):
    sw, tw, ss, ts = (rand(9, 7, seed=i, scale=3.0) for i in range(4))
    got = mlkd_loss(sw, tw, ss, ts, temperature, standardize)
    expected = reference_mlkd(sw.numpy(), tw.numpy(), ss.numpy(), ts.numpy(), temperature, standardize)
    for value, reference in zip(got, expected):
        assert value.item() == pytest.approx(reference, rel=1e-10)
    a, b = np_softmax(sw.numpy() / 3), np_softmax(tw.numpy() / 3)
    assert class_correlation_loss(sw, tw, 3.0).item() == pytest.approx(((b.T @ b - a.T @ a) ** 2).sum() / 7)
    assert batch_correlation_loss(sw, tw, 3.0).item() == pytest.approx(((b @ b.T - a @ a.T) ** 2).sum() / 9)


def test_mlkd_loss_gradients_match_finite_differences():
    tw, ts = rand(6, 5, seed=1, scale=2.0), rand(6, 5, seed=2, scale=2.0)

    def total(sw, ss):
        return sum(mlkd_loss(sw, tw, ss, ts, 4.0, True))

    inputs = (rand(6, 5, seed=3).requires_grad_(), rand(6, 5, seed=4).requires_grad_())
    assert torch.autograd.gradcheck(total, inputs)


def test_mlkd_method_weights_both_views_and_needs_the_strong_one():
    method = method_from_yaml("mlkd", ce_weight=0.5, kd_weight=2.0)
    assert method.needs_strong_view and not method.uses_features
    sw, tw, ss, ts = (rand(8, 5, seed=i, scale=2.0) for i in range(4))
    targets = torch.arange(8) % 5
    batch = MethodBatch(sw, targets, torch.arange(8), tw, strong_student_logits=ss, strong_teacher_logits=ts)
    out = method(batch)
    assert tuple(out.parts) == ("ce", "kd", "cc", "bc")
    ce = torch.nn.functional.cross_entropy(sw, targets) + torch.nn.functional.cross_entropy(ss, targets)
    torch.testing.assert_close(out.parts["ce"], ce)
    terms = mlkd_loss(sw, tw, ss, ts, 4.0, False)
    torch.testing.assert_close(out.total, 0.5 * ce + 2.0 * (terms.kd + terms.cc + terms.bc))
    with pytest.raises(RuntimeError, match="strong"):
        method(MethodBatch(sw, targets, torch.arange(8), tw))


@pytest.mark.parametrize("name", ["ab", "ft", "ofd", "reviewkd"])
def test_state_dict_round_trips_so_a_resumed_run_continues_exactly(name):
    torch.manual_seed(0)
    trained = method_from_yaml(name, **({"ab_weight": 1.0} if name == "ab" else {}))
    setup_method(trained)
    with torch.no_grad():
        for p in trained.parameters():  # as if trained: every part differs from a fresh setup
            p.add_(0.1 * torch.randn_like(p))
    state = trained.state_dict()
    torch.manual_seed(1)
    resumed = method_from_yaml(name, **({"ab_weight": 1.0} if name == "ab" else {}))
    setup_method(resumed)
    resumed.load_state_dict(state)
    batch = batch_of(STUDENT, TEACHER)
    trained.eval(), resumed.eval()
    assert resumed(batch).total.item() == trained(batch).total.item()
    if name == "ft":
        assert any(k.startswith("paraphraser.") for k in state)  # the initialization stage's result is kept


# -- torchdistill's implementations (a test-only dependency) -------------------------------------------------------

from torchdistill.losses import mid_level  # noqa: E402  (the dev extra installs it)


def _io(maps):
    return {f"m{i}": {"output": f} for i, f in enumerate(maps)}


def test_ab_equals_torchdistill_with_repdistillers_pair_weights():
    """torchdistill's AltActTransferLoss has the same per-pair term and /N; RepDistiller (and kd-hydra) weight pair i
    of n by 2^(i-n+1) * 3/1000, which torchdistill takes as its per-pair weights."""
    student = [rand(3, 4, 8, 8, seed=1), rand(3, 6, 4, 4, seed=2), rand(3, 8, 2, 2, seed=3)]
    teacher = [rand(3, 4, 8, 8, seed=4), rand(3, 6, 4, 4, seed=5), rand(3, 8, 2, 2, seed=6)]
    pairs = {
        f"pair{i}": {"student": {"io": "output", "path": f"m{i}"}, "teacher": {"io": "output", "path": f"m{i}"},
                     "weight": 2.0 ** (i - 2) * 3 / 1000}
        for i in range(3)
    }  # fmt: skip
    theirs = mid_level.AltActTransferLoss(pairs, margin=1.0, reduction="mean")(_io(student), _io(teacher))
    assert activation_boundary_loss(student, teacher, 1.0).item() == pytest.approx(theirs.item(), rel=1e-12)


def test_fsp_matrices_equal_torchdistills_which_reduces_by_unsquared_norms():
    """Same matrices (transposed; equal sizes, so no pooling: torchdistill max-pools, RepDistiller averages);
    torchdistill's loss sums the L2 norms of the matrix columns / N; RepDistiller's is the mean square."""
    maps_s = [rand(2, 3, 4, 4, seed=1), rand(2, 5, 4, 4, seed=2)]
    maps_t = [rand(2, 3, 4, 4, seed=3), rand(2, 5, 4, 4, seed=4)]
    ours_s, ours_t = fsp_matrix(*maps_s), fsp_matrix(*maps_t)
    torch.testing.assert_close(ours_s, mid_level.FSPLoss.compute_fsp_matrix(*maps_s).transpose(1, 2))
    pairs = {
        "pair": {"student_first": {"io": "output", "path": "m0"}, "student_second": {"io": "output", "path": "m1"},
                 "teacher_first": {"io": "output", "path": "m0"}, "teacher_second": {"io": "output", "path": "m1"}}
    }  # fmt: skip
    theirs = mid_level.FSPLoss(pairs)(_io(maps_s), _io(maps_t))
    difference = (ours_s - ours_t).transpose(1, 2)
    assert theirs.item() == pytest.approx(difference.norm(dim=1).sum().item() / 2, rel=1e-12)
    assert fsp_loss(maps_s, maps_t).item() == pytest.approx(difference.pow(2).mean().item(), rel=1e-12)


def test_ft_differs_from_torchdistill_by_repdistillers_channel_mean():
    """torchdistill's FTLoss normalises the flattened factors (the paper's F / ||F||_2); RepDistiller (and kd-hydra,
    whose CIFAR numbers come from it) normalises ``mean_c factor^2`` instead. Both take the L1 distance's mean."""
    factor_s, factor_t = rand(3, 4, 4, 4, seed=1), rand(3, 4, 4, 4, seed=2)
    student_io, teacher_io = {"translator": {"output": factor_s}}, {"paraphraser": {"output": factor_t}}
    theirs = mid_level.FTLoss(p=1)(student_io, teacher_io)
    paper = (
        (
            torch.nn.functional.normalize(factor_s.flatten(1), dim=1)
            - torch.nn.functional.normalize(factor_t.flatten(1), dim=1)
        )
        .abs()
        .mean()
    )
    assert theirs.item() == pytest.approx(paper.item(), rel=1e-12)
    assert factor_transfer_loss(factor_s, factor_t).item() != pytest.approx(theirs.item(), rel=1e-3)


def test_hcl_equals_torchdistill_summed_over_levels():
    student = [rand(2, 3, 8, 8, seed=1), rand(2, 4, 4, 4, seed=2), rand(2, 5, 1, 1, seed=3)]
    teacher = [rand(2, 3, 8, 8, seed=4), rand(2, 4, 4, 4, seed=5), rand(2, 5, 1, 1, seed=6)]
    hcl = mid_level.HierarchicalContextLoss("s", "output", "t", "output")
    theirs = sum(hcl({"s": {"output": (s, None)}}, {"t": {"output": t}}) for s, t in zip(student, teacher))
    assert hierarchical_context_loss(student, teacher).item() == pytest.approx(theirs.item(), rel=1e-12)
