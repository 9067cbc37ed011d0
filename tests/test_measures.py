"""What a run measures after training (kd_hydra.run.measures): ECE, agreement and KL against hand-computed values,
MACs, the method's own modules' MACs, and one tiny real sweep whose metrics.json and report carry them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY, Workspace
from kd_hydra.enums import Mode
from kd_hydra.models import build_model
from kd_hydra.records import schema
from kd_hydra.run.measures import (
    ECE_BINS,
    TEACHER_LOGITS_CACHE,
    SplitMeasures,
    expected_calibration_error,
    forward_macs,
    method_macs,
)
from tests.method_helpers import set_up_like_the_trainer


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is ``probabilities`` (each row sums to 1)."""
    return torch.tensor(probabilities, dtype=torch.float64).log()


def test_ece_by_hand_one_image_per_bin() -> None:
    # confidences 0.9 (right), 0.62 (wrong), 0.55 (right), 0.81 (right): bins 14, 10, 9, 13 of 15 (all apart)
    logits = logits_of([[0.9, 0.1], [0.62, 0.38], [0.45, 0.55], [0.19, 0.81]])
    targets = torch.tensor([0, 1, 1, 1])
    expected = (abs(1 - 0.9) + abs(0 - 0.62) + abs(1 - 0.55) + abs(1 - 0.81)) / 4
    assert expected_calibration_error(logits, targets) == pytest.approx(100 * expected)


def test_ece_by_hand_images_sharing_a_bin() -> None:
    # 0.9 (right) and 0.92 (wrong) share bin (13/15, 14/15]: |accuracy 0.5 - confidence 0.91| over both images
    logits = logits_of([[0.9, 0.1], [0.92, 0.08]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(100 * 0.41)
    one_bin = expected_calibration_error(logits_of([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([1, 1]), bins=1)
    assert one_bin == pytest.approx(100 * abs(0.5 - (0.9 + 0.7) / 2))
    assert ECE_BINS == 15


def test_agreement_and_kl_by_hand_and_streamed_over_batches() -> None:
    teacher = logits_of([[0.6, 0.4], [0.9, 0.1], [0.2, 0.8]])
    student = logits_of([[0.25, 0.75], [0.9, 0.1], [0.3, 0.7]])
    targets = torch.tensor([0, 0, 1])
    kl = (0.6 * math.log(0.6 / 0.25) + 0.4 * math.log(0.4 / 0.75) + 0 + 0.2 * math.log(0.2 / 0.3)
          + 0.8 * math.log(0.8 / 0.7)) / 3  # fmt: skip
    whole = SplitMeasures()
    whole.add(student, targets, teacher)
    assert whole.agreement == pytest.approx(100 * 2 / 3) and whole.kl == pytest.approx(kl)
    streamed = SplitMeasures()
    streamed.add(student[:2], targets[:2], teacher[:2])
    streamed.add(student[2:], targets[2:], teacher[2:])
    assert (streamed.agreement, streamed.kl, streamed.ece, streamed.teacher_ece) == pytest.approx(
        (whole.agreement, whole.kl, whole.ece, whole.teacher_ece)
    )
    assert whole.teacher_ece == pytest.approx(expected_calibration_error(teacher, targets))
    alone = SplitMeasures()
    alone.add(student, targets)
    assert alone.agreement is None and alone.kl is None and alone.teacher_ece is None


def test_the_analysis_computes_a_baselines_agreement_as_the_run_does() -> None:
    from analysis.logits import agreement_and_kl

    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(64, 10, generator=generator), torch.randn(64, 10, generator=generator) * 3
    measures = SplitMeasures()
    measures.add(student, torch.zeros(64, dtype=torch.int64), teacher)
    agreement, kl = agreement_and_kl(student.double().numpy(), teacher.double().numpy())
    assert (agreement, kl) == pytest.approx((measures.agreement, measures.kl))


def test_forward_macs_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10))
    # conv: 8 x 4 x 4 outputs of 3 x 3 x 3 multiply-accumulates; linear: 128 x 10
    assert forward_macs(model, (3, 4, 4), torch.device("cpu")) == 8 * 16 * 27 + 128 * 10


def test_method_macs_count_the_methods_own_modules_per_image() -> None:
    student, teacher = build_model("resnet8", 10, 3, 32), build_model("resnet14", 10, 3, 32)
    targets = torch.arange(40) % 10
    fitnet, request = set_up_like_the_trainer("fitnet", student, teacher, (3, 32, 32), targets, 10,
                                              hint_point="pre_logit")  # fmt: skip
    linear = fitnet.regressor[0]  # Linear(student features, teacher features) + BatchNorm + ReLU
    assert method_macs(fitnet, student, teacher, request, (3, 32, 32), torch.device("cpu")) == (
        linear.in_features * linear.out_features
    )
    kd, request = set_up_like_the_trainer("kd", student, teacher, (3, 32, 32), targets, 10)
    assert method_macs(kd, student, teacher, request, (3, 32, 32), torch.device("cpu")) == 0
    crd, request = set_up_like_the_trainer("crd", student, teacher, (3, 32, 32), targets, 10)
    before = {name: tensor.clone() for name, tensor in crd.state_dict().items() if torch.is_tensor(tensor)}
    assert method_macs(crd, student, teacher, request, (3, 32, 32), torch.device("cpu")) > 0
    after = crd.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # probed on a copy: memory untouched


def test_a_real_sweep_records_the_measures_and_the_report_uses_them(tmp_path) -> None:
    workspace = Workspace(tmp_path)
    sweep, _ = workspace.sweep("s", *TINY, "loss=kd,fitnet", "trainer.seed=0,1", "dataset.val_fraction=0.25")
    records = {}
    for job in sorted(p for p in sweep.iterdir() if (p / schema.METRICS_FILE).is_file()):
        record = json.loads((job / schema.METRICS_FILE).read_text())
        records[job] = record
        assert record["status"] == "completed" and set(record) == set(schema.METRICS_KEYS)
        assert (record["train_images"], record["val_images"], record["test_images"]) == (196, 60, 128)
        assert 0 <= record["test_ece"] <= 100 and record["model_macs"] > 0
        keeps_logits = record["mode"] in (Mode.teacher.value, Mode.student.value)
        assert (job / schema.TEST_LOGITS_FILE).is_file() == keeps_logits
        if keeps_logits:
            logits = np.load(job / schema.TEST_LOGITS_FILE)
            assert logits.shape == (128, 10) and logits.dtype == np.float16
    distill = [r for r in records.values() if r["mode"] == Mode.distill.value]
    assert len(distill) == 4
    # the teacher's test logits: computed once (by the teacher job), kept in the cache, read by every distill run
    (entry,) = [p for p in (tmp_path / "cache" / TEACHER_LOGITS_CACHE).iterdir() if p.is_dir()]
    (teacher_dir,) = [job for job, record in records.items() if record["mode"] == Mode.teacher.value]
    kept = np.load(entry / schema.TEST_LOGITS_FILE)
    assert np.array_equal(kept, np.load(teacher_dir / schema.TEST_LOGITS_FILE))
    assert len({r["teacher_test_ece"] for r in distill}) == 1
    assert distill[0]["teacher_test_ece"] == pytest.approx(records[teacher_dir]["test_ece"])
    for record in distill:
        assert 0 <= record["teacher_agreement"] <= 100 and record["teacher_kl"] >= 0
        assert record["teacher_test_ece"] >= 0 and record["teacher_macs"] > record["model_macs"]
        assert record["teacher_val_acc"] is not None and record["train_seconds"] > 0
        if record["method"] == "kd":  # each seed's cache entry is filled by its own (only) kd job
            assert 0 < record["soft_label_cache_fill_seconds"] <= record["train_seconds"]
            assert record["method_macs"] == 0
        else:  # fitnet runs the teacher live and has a regressor
            assert record["soft_label_cache_fill_seconds"] is None and record["method_macs"] > 0
    from analysis import write_report

    written = write_report(sweep, tmp_path / "out")
    report = written["report"].read_text()
    baseline = next(line for line in report.splitlines() if line.startswith("| baseline (CE only) |"))
    cells = [cell.strip() for cell in baseline.strip("|").split("|")]
    header = next(line for line in report.splitlines() if line.startswith("| model |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells[columns.index("top-1 agreement with teacher (%)")] != "—"  # from the kept test logits
    assert "Soft-label cache fill" in report and "kd seed 0" in report and "kd seed 1" in report
    assert written["table_tex"].read_text().count(r"\begin{tabular}") == 1
