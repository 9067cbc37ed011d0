"""The distillation methods on fake batches: parts, weighted totals, trainable parts, state, validation."""

import math

import pytest
import torch
from method_helpers import LOSS_DIR, loss_node, method_from_yaml

from kd_hydra.errors import ConfigError, DataError
from kd_hydra.losses import attention_transfer_loss, crd_nce_loss, dist_loss, dkd_loss, hint_loss
from kd_hydra.methods import DistillMethod, MethodBatch, builtin_methods, method_class, validate_method_config
from kd_hydra.methods.at import AT
from kd_hydra.methods.crd import CRD
from kd_hydra.methods.dist import DIST
from kd_hydra.methods.dkd import DKD
from kd_hydra.methods.fitnet import FitNet

N, CLASSES, NUM_DATA = 6, 5, 30
STUDENT_SHAPES = {
    "stem": (4, 16, 16),
    "stage1": (4, 16, 16),
    "stage2": (8, 8, 8),
    "stage3": (16, 4, 4),
    "pre_logit": (16,),
}
TEACHER_SHAPES = {
    "stem": (8, 16, 16),
    "stage1": (8, 16, 16),
    "stage2": (16, 4, 4),
    "stage3": (32, 2, 2),
    "pre_logit": (32,),
}
POINTS = tuple(STUDENT_SHAPES)


def fake_batch(seed: int = 0) -> MethodBatch:
    generator = torch.Generator().manual_seed(seed)

    def features(shapes, grad):
        return {k: torch.randn(N, *s, generator=generator).abs().requires_grad_(grad) for k, s in shapes.items()}

    return MethodBatch(
        student_logits=torch.randn(N, CLASSES, generator=generator).requires_grad_(True),
        targets=torch.arange(N) % CLASSES,
        sample_indices=torch.randperm(NUM_DATA, generator=generator)[:N],
        teacher_logits=torch.randn(N, CLASSES, generator=generator),
        student_features=features(STUDENT_SHAPES, True),
        teacher_features=features(TEACHER_SHAPES, False),
    )


def build(cls, **kwargs):
    method = method_from_yaml(cls, **kwargs)
    method.feature_request(POINTS, POINTS)
    method.setup(STUDENT_SHAPES, TEACHER_SHAPES, torch.arange(NUM_DATA) % CLASSES, CLASSES)
    method.train()
    return method


def ce(batch):
    return torch.nn.functional.cross_entropy(batch.student_logits, batch.targets)


def test_every_method_module_has_its_yaml_naming_its_class_and_keys():
    found = builtin_methods()
    assert {"ce", "kd", "dkd", "dist", "fitnet", "at", "crd"} <= set(found)
    assert sorted(found) == sorted(path.stem for path in LOSS_DIR.glob("*.yaml"))
    for name, cls in found.items():
        node = loss_node(name)
        assert method_class(node) is cls and node["name"] == name == cls.name
        assert set(node) - {"_target_", "name", "add_kd_weight", "add_kd_temperature"} == set(cls.config_keys())
        validate_method_config(node)


EXPECTED = {
    DKD: lambda m, b: (dkd_loss(b.student_logits, b.teacher_logits, b.targets, 1.0, 8.0, 4.0), m.dkd_weight),
    DIST: lambda m, b: (dist_loss(b.student_logits, b.teacher_logits, 2.0, 2.0, 4.0), m.dist_weight),
    FitNet: lambda m, b: (
        hint_loss(m.regressor(b.student_features["stage2"]), b.teacher_features["stage2"]),
        m.hint_weight,
    ),
    AT: lambda m, b: (
        attention_transfer_loss(
            [b.student_features[f"stage{i}"] for i in (1, 2, 3)],
            [b.teacher_features[f"stage{i}"] for i in (1, 2, 3)],
            2.0,
        ),
        m.at_weight,
    ),
}


@pytest.mark.parametrize("cls", [DKD, DIST, FitNet, AT])
def test_parts_and_weighted_total(cls):
    method = build(cls, ce_weight=0.7)
    if cls is DKD:
        method.begin_epoch(100, 100)
    batch = fake_batch()
    out = method(batch)
    assert tuple(out.parts) == cls.parts
    term, weight = EXPECTED[cls](method, batch)
    torch.testing.assert_close(out.parts["ce"], ce(batch))
    torch.testing.assert_close(out.parts[cls.parts[1]], term)
    torch.testing.assert_close(out.total, 0.7 * ce(batch) + weight * term)


def test_logit_methods_read_teacher_logits_and_feature_methods_features():
    assert method_from_yaml(DKD).uses_features is False and method_from_yaml(DIST).uses_features is False
    for cls in (FitNet, AT, CRD):
        assert method_from_yaml(cls).uses_features


@pytest.mark.parametrize("cls", [DKD, DIST])
def test_standardize_z_scores_the_logits_first(cls):
    batch = fake_batch()
    plain, standardized = build(cls), build(cls, standardize=True)
    scaled = MethodBatch(
        student_logits=batch.student_logits * 3 + 1,
        targets=batch.targets,
        sample_indices=batch.sample_indices,
        teacher_logits=batch.teacher_logits * 0.5 - 2,
    )
    name = cls.parts[1]
    assert standardized(scaled).parts[name].item() == pytest.approx(standardized(batch).parts[name].item(), rel=1e-5)
    assert plain(scaled).parts[name].item() != pytest.approx(plain(batch).parts[name].item(), rel=1e-3)


@pytest.mark.parametrize("epoch,factor", [(1, 0.05), (10, 0.5), (20, 1.0), (35, 1.0)])
def test_dkd_warmup_factor(epoch, factor):
    method = build(DKD, ce_weight=1.0, dkd_weight=2.0, warmup=20)
    method.begin_epoch(epoch, 40)
    batch = fake_batch()
    out = method(batch)
    torch.testing.assert_close(out.total, out.parts["ce"] + factor * 2.0 * out.parts["dkd"])
    no_warmup = build(DKD, warmup=0)
    no_warmup.begin_epoch(1, 40)
    assert no_warmup.warmup_factor == 1.0


def test_fitnet_regressor_maps_student_hint_to_teacher_shape_and_learns():
    for point, kind in [
        ("stage2", torch.nn.Conv2d),
        ("stage3", torch.nn.Conv2d),
        ("stage1", torch.nn.Conv2d),
        ("pre_logit", torch.nn.Linear),
    ]:
        method = build(FitNet, hint_point=point)
        batch = fake_batch()
        regressed = method.regressor(batch.student_features[point])
        assert regressed.shape[1:] == TEACHER_SHAPES[point]
        assert any(isinstance(m, kind) for m in method.regressor.modules())
        method(batch).total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.regressor.parameters())
        assert batch.student_features[point].grad is not None
    # student half the teacher's size: transposed conv; other smaller sizes: upsample + conv
    up = method_from_yaml(FitNet, hint_point="stage2")
    up.setup({"stage2": (4, 4, 4)}, {"stage2": (8, 8, 8)}, torch.zeros(1), 2)
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in up.regressor.modules())
    odd = method_from_yaml(FitNet, hint_point="stage2")
    odd.setup({"stage2": (4, 3, 3)}, {"stage2": (8, 8, 8)}, torch.zeros(1), 2)
    assert odd.regressor(torch.randn(2, 4, 3, 3)).shape == (2, 8, 8, 8)


def test_fitnet_and_at_check_the_feature_points():
    with pytest.raises(ConfigError, match="loss.hint_point"):
        method_from_yaml(FitNet, hint_point="stage9").feature_request(POINTS, POINTS)
    with pytest.raises(ConfigError, match="loss.name"):
        method_from_yaml(AT).feature_request(POINTS, ("stem", "stage1", "stage2", "stage3", "stage4", "pre_logit"))
    assert method_from_yaml(AT).feature_request(POINTS, POINTS).student == ("stage1", "stage2", "stage3")
    with_preact = (*POINTS, "stage1_preact", "stage2_preact", "stage3_preact")
    assert method_from_yaml(AT).feature_request(with_preact, with_preact).student == ("stage1", "stage2", "stage3")
    with pytest.raises(ConfigError, match="loss.name"):
        method_from_yaml(CRD).feature_request(("stage1",), POINTS)


def test_crd_parts_trainable_heads_and_memory_update():
    torch.manual_seed(0)
    method = build(CRD, ce_weight=0.5, crd_weight=0.8, feat_dim=8, nce_k=100)
    assert method.memory.nce_k == NUM_DATA - NUM_DATA // CLASSES  # clamped to the other-class samples
    assert method.embed_student.linear.weight.shape == (8, 16)
    assert method.embed_teacher.linear.weight.shape == (8, 32)
    assert method.memory.memory_student.shape == (NUM_DATA, 8)
    batch = fake_batch()
    before = method.memory.memory_teacher.clone()
    torch.manual_seed(1)
    out = method(batch)
    assert tuple(out.parts) == ("ce", "crd")
    torch.testing.assert_close(out.total, 0.5 * ce(batch) + 0.8 * out.parts["crd"])
    assert out.parts["crd"].item() > 0 and math.isfinite(out.parts["crd"].item())
    out.total.backward()
    for head in (method.embed_student, method.embed_teacher):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    changed = (method.memory.memory_teacher != before).any(1)
    assert torch.equal(changed.nonzero().flatten().sort().values, batch.sample_indices.sort().values)
    torch.testing.assert_close(method.memory.memory_teacher[batch.sample_indices].norm(dim=1), torch.ones(N))
    assert method.memory.z_student.item() > 0 and method.memory.z_teacher.item() > 0


def test_crd_matches_the_pure_functions_for_the_same_negatives():
    torch.manual_seed(0)
    method = build(CRD, feat_dim=8, nce_k=7)
    batch = fake_batch()
    state = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(5)
    out = method(batch)
    method.load_state_dict(state)
    torch.manual_seed(5)
    contrast = method.memory.draw_contrast_indices(batch.sample_indices)
    s = method.embed_student(batch.student_features["pre_logit"])
    t = method.embed_teacher(batch.teacher_features["pre_logit"])
    out_s, out_t = method.memory(s, t, batch.sample_indices, contrast)
    torch.testing.assert_close(out.parts["crd"], crd_nce_loss(out_s, NUM_DATA) + crd_nce_loss(out_t, NUM_DATA))


def test_crd_state_round_trips_so_a_resumed_run_is_exact():
    torch.manual_seed(0)
    method = build(CRD, feat_dim=8, nce_k=10)
    torch.manual_seed(1)
    method(fake_batch(0))
    state = method.state_dict()
    for key in (
        "memory.memory_student",
        "memory.memory_teacher",
        "memory.z_student",
        "memory.z_teacher",
        "embed_student.linear.weight",
        "embed_teacher.linear.bias",
    ):
        assert key in state
    assert "memory.train_targets" not in state  # rebuilt from the data by setup
    torch.manual_seed(99)
    resumed = build(CRD, feat_dim=8, nce_k=10)
    resumed.load_state_dict(state)
    torch.manual_seed(2)
    expected = method(fake_batch(1)).total
    torch.manual_seed(2)
    assert resumed(fake_batch(1)).total.item() == expected.item()
    torch.testing.assert_close(resumed.memory.memory_student, method.memory.memory_student)


def test_crd_needs_two_classes():
    method = method_from_yaml(CRD, feat_dim=4, nce_k=5)
    with pytest.raises(DataError, match="crd"):
        method.setup(STUDENT_SHAPES, TEACHER_SHAPES, torch.zeros(10, dtype=torch.long), 1)


def _loss(cls, **overrides):
    return loss_node(cls, **overrides)


BAD = [
    (DKD, "temperature", 0.0),
    (DKD, "temperature", float("nan")),
    (DKD, "alpha", -1.0),
    (DKD, "beta", float("inf")),
    (DKD, "warmup", -1),
    (DKD, "warmup", 2.5),
    (DKD, "ce_weight", -0.1),
    (DKD, "dkd_weight", float("nan")),
    (DIST, "temperature", -1.0),
    (DIST, "beta", float("nan")),
    (DIST, "gamma", -2.0),
    (DIST, "dist_weight", -1.0),
    (FitNet, "hint_weight", float("inf")),
    (FitNet, "ce_weight", "x"),
    (FitNet, "hint_point", ""),
    (AT, "p", 0.0),
    (AT, "p", float("nan")),
    (AT, "at_weight", -5.0),
    (CRD, "nce_t", 0.0),
    (CRD, "momentum", 1.0),
    (CRD, "momentum", -0.1),
    (CRD, "nce_k", 0),
    (CRD, "feat_dim", 0),
    (CRD, "crd_weight", float("nan")),
]


@pytest.mark.parametrize("cls,key,value", BAD)
def test_validate_config_rejects_bad_values_naming_the_key(cls, key, value):
    validate_method_config(_loss(cls))  # defaults are valid
    with pytest.raises(ConfigError) as error:
        validate_method_config(_loss(cls, **{key: value}))
    assert error.value.key == f"loss.{key}"


def test_base_method_has_no_features():
    assert not DistillMethod().uses_features
