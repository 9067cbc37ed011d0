"""A method sweep end to end: every method trains, its own parts are trained and saved, results compare them."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import TINY, Workspace, read_metrics
from kd_hydra.methods.fitnet import FitNet
from kd_hydra.models import build_model
from kd_hydra.models.features import feature_points, probe_feature_shapes
from kd_hydra.records import schema

METHODS = ("kd", "dkd", "dist", "fitnet", "at", "crd")
LOGIT_METHODS = ("kd", "dkd", "dist")


@pytest.fixture(scope="module")
def method_sweep(tmp_path_factory, teacher_workspace):
    workspace = Workspace(tmp_path_factory.mktemp("methods"))
    workspace.copy_from(teacher_workspace, "cache")  # the teacher job finds the TINY teacher stored
    sweep_dir, process = workspace.sweep(
        "methods", *TINY, f"loss={','.join(METHODS)}", "trainer.epochs=1", "teacher_training.epochs=2"
    )  # the stored teacher's epochs
    runs = [p for p in sweep_dir.iterdir() if (p / schema.METRICS_FILE).is_file()]
    return sweep_dir, {read_metrics(p)["method"]: p for p in runs}, process


def test_every_method_completes_and_reports_its_parts(method_sweep):
    sweep_dir, runs, _ = method_sweep
    assert set(runs) == {*METHODS, "ce"}, "six methods and the matched baseline"
    for method in METHODS:
        record = read_metrics(runs[method])
        assert record["status"] == "completed" and record["mode"] == "distill"
        assert record["settings"]["loss.name"] == method
        expected_outputs = "cache" if method in LOGIT_METHODS else "live"
        assert record["teacher_outputs"] == expected_outputs
        assert record["soft_label_cache"] in (("cold", "warm") if method in LOGIT_METHODS else ("off",))
        with open(runs[method] / schema.HISTORY_FILE) as handle:
            header = next(csv.reader(handle))
        part = {"kd": "kd", "dkd": "dkd", "dist": "dist", "fitnet": "hint", "at": "at", "crd": "crd"}[method]
        assert header == list(schema.history_columns(("ce", part)))
    assert read_metrics(runs["fitnet"])["method_params"] > 0 and read_metrics(runs["crd"])["method_params"] > 0
    assert read_metrics(runs["kd"])["method_params"] == 0
    with open(sweep_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["loss.name"] for row in rows if row["mode"] == "distill") == sorted(METHODS)
    report = (sweep_dir / "report.md").read_text()
    assert "Methods compared" in report and (sweep_dir / "method_comparison.png").is_file()
    compared = report.split("Methods compared", 1)[1].split("\n\n", 2)[1]
    assert all(f"| {method} |" in compared for method in METHODS), "the report compares every method"


def test_a_method_s_own_parts_are_trained_and_saved(method_sweep):
    _, runs, _ = method_sweep
    saved = torch.load(runs["fitnet"] / "model.pt", weights_only=True)
    assert saved["method"]["name"] == "fitnet"
    config = json.loads((runs["fitnet"] / schema.METRICS_FILE).read_text())["settings"]
    # rebuild the regressor as the run did before training: same seed, same probed shapes
    student, teacher = build_model("light_cnn", 10, 3, 16), build_model("deep_cnn", 10, 3, 16)
    method = FitNet(
        ce_weight=config["loss.ce_weight"], hint_weight=config["loss.hint_weight"], hint_point=config["loss.hint_point"]
    )
    request = method.feature_request(list(feature_points(student)), list(feature_points(teacher)))
    torch.manual_seed(config["trainer.seed"])
    method.setup(
        probe_feature_shapes(student, list(request.student), (3, 16, 16)),
        probe_feature_shapes(teacher, list(request.teacher), (3, 16, 16)),
        torch.zeros(4, dtype=torch.long),
        10,
    )
    initial = method.state_dict()
    trained = saved["method"]["state_dict"]
    assert set(trained) == set(initial)
    weights = [k for k in initial if k.endswith("weight")]
    assert weights and all(not torch.equal(initial[k], trained[k]) for k in weights), "the regressor was trained"
