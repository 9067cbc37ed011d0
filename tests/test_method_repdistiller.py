"""SP, CC, RKD, PKT, VID, KDSVD and NST as methods: feature points, parts, weighted totals, trainable parts,
value checks, and one sweep of all seven through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from method_helpers import loss_node, method_from_yaml

from conftest import TINY, Workspace
from kd_hydra.errors import ConfigError
from kd_hydra.losses import (
    correlation_congruence_gaussian_loss,
    correlation_congruence_loss,
    kdsvd_loss,
    match_spatial,
    nst_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
    vid_loss,
)
from kd_hydra.methods import MethodBatch, validate_method_config
from kd_hydra.methods.cc import CC
from kd_hydra.methods.kdsvd import KDSVD
from kd_hydra.methods.nst import NST
from kd_hydra.methods.pkt import PKT
from kd_hydra.methods.rkd import RKD
from kd_hydra.methods.sp import SP
from kd_hydra.methods.vid import VID

N, CLASSES = 6, 5
STUDENT = {"stem": (4, 8, 8), "stage1": (4, 8, 8), "stage2": (8, 4, 4), "stage3": (16, 2, 2), "pre_logit": (16,)}
TEACHER = {"stem": (8, 8, 8), "stage1": (8, 8, 8), "stage2": (16, 2, 2), "stage3": (32, 2, 2), "pre_logit": (32,)}
#: Equal widths, as KDSVD needs.
SAME_WIDTH = {"stem": (4, 8, 8), "stage1": (4, 4, 4), "stage2": (8, 2, 2), "stage3": (16, 2, 2), "pre_logit": (16,)}
POINTS = tuple(STUDENT)
METHODS = ("sp", "cc", "rkd", "pkt", "vid", "kdsvd", "nst")


def fake_batch(teacher_shapes=TEACHER, seed: int = 0) -> MethodBatch:
    generator = torch.Generator().manual_seed(seed)

    def features(shapes, grad):
        return {k: torch.randn(N, *s, generator=generator).requires_grad_(grad) for k, s in shapes.items()}

    return MethodBatch(
        student_logits=torch.randn(N, CLASSES, generator=generator).requires_grad_(True),
        targets=torch.arange(N) % CLASSES,
        sample_indices=torch.arange(N),
        teacher_logits=torch.randn(N, CLASSES, generator=generator),
        student_features=features(STUDENT, True),
        teacher_features=features(teacher_shapes, False),
    )


def build(cls, teacher_shapes=TEACHER, **overrides):
    torch.manual_seed(0)
    method = method_from_yaml(cls, **overrides)
    method.feature_request(POINTS, POINTS)
    method.setup(STUDENT, teacher_shapes, torch.arange(N) % CLASSES, CLASSES)
    return method.train()


def stages(features):
    return [features[f"stage{i}"] for i in (1, 2, 3)]


#: method -> (teacher shapes, the unweighted term from the pure function, its weight key)
TERMS = {
    SP: (TEACHER, lambda m, b: similarity_preserving_loss(b.student_features["stage3"], b.teacher_features["stage3"])),
    CC: (
        TEACHER,
        lambda m, b: correlation_congruence_loss(
            m.embed_student(b.student_features["pre_logit"]), m.embed_teacher(b.teacher_features["pre_logit"])
        ),
    ),
    RKD: (
        TEACHER,
        lambda m, b: rkd_loss(b.student_features["pre_logit"], b.teacher_features["pre_logit"], 25.0, 50.0),
    ),
    PKT: (TEACHER, lambda m, b: pkt_loss(b.student_features["pre_logit"], b.teacher_features["pre_logit"])),
    VID: (
        TEACHER,
        lambda m, b: sum(
            vid_loss(regressor(s), t, scale, 1e-5)
            for (s, t), regressor, scale in zip(
                [match_spatial(s, t) for s, t in zip(stages(b.student_features), stages(b.teacher_features))],
                m.regressors,
                m.log_scales,
            )
        ),
    ),
    KDSVD: (SAME_WIDTH, lambda m, b: kdsvd_loss(stages(b.student_features), stages(b.teacher_features), 1)),
    NST: (
        TEACHER,
        lambda m, b: sum(nst_loss(s, t) for s, t in zip(stages(b.student_features), stages(b.teacher_features))),
    ),
}


@pytest.mark.parametrize("cls", list(TERMS))
def test_parts_and_weighted_total(cls):
    teacher_shapes, term = TERMS[cls]
    method = build(cls, teacher_shapes, ce_weight=0.7)
    batch = fake_batch(teacher_shapes)
    out = method(batch)
    name = cls.parts[1]
    assert tuple(out.parts) == ("ce", name) and method.uses_features
    weight = loss_node(cls)[f"{name}_weight"]
    ce = torch.nn.functional.cross_entropy(batch.student_logits, batch.targets)
    expected = term(method, batch)
    torch.testing.assert_close(out.parts[name], expected.reshape(()))
    torch.testing.assert_close(out.total, 0.7 * ce + weight * expected.reshape(()))
    out.total.backward()
    assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in batch.student_features.values())
    assert all(p.grad is not None for p in method.parameters())


def test_feature_points_each_method_reads():
    assert build(SP).feature_request(POINTS, POINTS).student == ("stage3",)
    two_stages = ("stem", "stage1", "stage2", "pre_logit")
    sp = method_from_yaml(SP).feature_request(POINTS, two_stages)
    assert (sp.student, sp.teacher) == (("stage3",), ("stage2",))  # the last stage of each network
    for cls in (CC, RKD, PKT):
        assert method_from_yaml(cls).feature_request(POINTS, POINTS).teacher == ("pre_logit",)
    with_preact = (*POINTS, "stage1_preact", "stage2_preact", "stage3_preact")
    for cls in (VID, KDSVD, NST):
        assert method_from_yaml(cls).feature_request(with_preact, with_preact).student == ("stage1", "stage2", "stage3")


@pytest.mark.parametrize("cls", [VID, NST, KDSVD])
def test_stage_methods_need_paired_stages(cls):
    with pytest.raises(ConfigError, match="loss.name"):
        method_from_yaml(cls).feature_request(POINTS, ("stem", "stage1", "stage2", "pre_logit"))


@pytest.mark.parametrize("cls", [CC, RKD, PKT])
def test_embedding_methods_need_pre_logit(cls):
    with pytest.raises(ConfigError, match="pre_logit"):
        method_from_yaml(cls).feature_request(("stage1",), POINTS)


def test_kdsvd_refuses_different_widths_in_one_line():
    with pytest.raises(ConfigError, match="channels differ") as error:
        build(KDSVD, TEACHER)
    assert "\n" not in str(error.value)


def test_cc_and_vid_trainable_parts_are_sized_from_the_shapes_and_saved():
    cc = build(CC)
    assert cc.embed_student.weight.shape == (128, 16) and cc.embed_teacher.weight.shape == (128, 32)
    assert {"embed_student.weight", "embed_teacher.bias"} <= set(cc.state_dict())
    vid = build(VID)
    assert [r[0].weight.shape[:2] for r in vid.regressors] == [(8, 4), (16, 8), (32, 16)]
    assert [s.shape for s in vid.log_scales] == [(8,), (16,), (32,)]
    variance = torch.log(1 + torch.exp(vid.log_scales[0])) + 1e-5
    torch.testing.assert_close(variance, torch.full((8,), 5.0))
    assert {"regressors.0.0.weight", "log_scales.2"} <= set(vid.state_dict())


def test_cc_gaussian_kernel_option():
    method = build(CC, kernel="gaussian", gamma=0.4, max_p=2)
    batch = fake_batch()
    e_s = method.embed_student(batch.student_features["pre_logit"])
    e_t = method.embed_teacher(batch.teacher_features["pre_logit"])
    torch.testing.assert_close(method(batch).parts["cc"], correlation_congruence_gaussian_loss(e_s, e_t, 0.4, 2))


BAD = [
    ("sp", "sp_weight", -1.0),
    ("cc", "cc_weight", float("nan")),
    ("cc", "feat_dim", 0),
    ("cc", "kernel", "cosine"),
    ("cc", "gamma", 0.0),
    ("cc", "max_p", 0),
    ("rkd", "distance_weight", -1.0),
    ("rkd", "angle_weight", float("inf")),
    ("rkd", "rkd_weight", "x"),
    ("pkt", "pkt_weight", -3.0),
    ("vid", "init_pred_var", 0.0),
    ("vid", "eps", -1e-5),
    ("vid", "vid_weight", float("nan")),
    ("kdsvd", "k", 0),
    ("kdsvd", "k", 1.5),
    ("nst", "nst_weight", -50.0),
    ("nst", "ce_weight", None),
]


@pytest.mark.parametrize("method,key,value", BAD)
def test_validate_config_rejects_bad_values_naming_the_key(method, key, value):
    validate_method_config(loss_node(method))  # the YAML's values are valid
    with pytest.raises(ConfigError) as error:
        validate_method_config(loss_node(method, **{key: value}))
    assert error.value.key == f"loss.{key}"


def test_every_new_method_runs_from_the_command_line(workspace: Workspace):
    """One sweep of all seven on equal-width tutorial CNNs (KDSVD needs equal widths): a row and columns each."""
    sweep_dir, _ = workspace.sweep("seven", *TINY, "teacher=light_cnn", f"loss={','.join(METHODS)}")
    records = [(json.loads(p.read_text()), p.parent) for p in Path(sweep_dir).rglob("metrics.json")]
    runs = {record["method"]: run_dir for record, run_dir in records if record["mode"] == "distill"}
    assert sorted(runs) == sorted(METHODS)
    for method, run_dir in runs.items():
        with open(run_dir / "history.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 2 and all(float(row[f"train_{method}"]) >= 0 for row in rows), method
    saved = torch.load(runs["vid"] / "model.pt", weights_only=True)["method"]["state_dict"]
    assert "log_scales.0" in saved and "regressors.0.0.weight" in saved
