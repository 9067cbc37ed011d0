"""A first hour without surprises: warnings where a setting does not fit the run, the thread default, one-line
option errors, ``--help``, a method sweep's own keys, the ETA, ``wall_seconds`` of a resumed run, ``mode=eval``
of a student, ``debug=smoke`` and the benchmark data file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from analysis_fixtures import PAPER_DKD_WARNING
from conftest import TINY, Workspace, one_line_error, read_metrics
from kd_hydra.config.compose import check_command_line, compose, hydra_session
from kd_hydra.config.sources import CLONE_CONFIGS
from kd_hydra.config.usage import INTERNAL_GROUPS, USER_GROUPS, usage_groups
from kd_hydra.data.split import class_round_robin, with_subset
from kd_hydra.data.types import ArrayData, DatasetSpec
from kd_hydra.errors import ConfigError
from kd_hydra.methods import build_method, method_class
from kd_hydra.methods.crd import CRD
from kd_hydra.methods.dkd import DKD
from kd_hydra.models import build_model
from kd_hydra.models.features import PRE_LOGIT
from kd_hydra.records import schema
from kd_hydra.records.identity import run_identity, training_settings
from kd_hydra.records.ledger import student_eta
from kd_hydra.run.fit_warnings import MIN_VAL_IMAGES, run_warnings, schedule_warnings, split_warnings, sweep_lines
from kd_hydra.train.runtime import configure_threads, usable_cores

DKD_SETTINGS = dict(ce_weight=1.0, dkd_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, standardize=False)


# -- warnings where a setting does not fit the run ------------------------------------------------------------


def test_a_dkd_warm_up_longer_than_the_run_is_one_line_with_the_weights_it_gets():
    (line,) = DKD(**DKD_SETTINGS, warmup=20).fit_warnings(3)
    assert line == (
        "loss.warmup: 20 warm-up epochs in a 3-epoch run: the dkd term is weighted 0.05 to 0.15 of "
        "loss.dkd_weight and never reaches it"
    )
    assert line == PAPER_DKD_WARNING, "the paper sweep's dkd runs record what a run writes"
    assert DKD(**DKD_SETTINGS, warmup=3).fit_warnings(3) == [], "a warm-up the run completes is fine"


def test_a_clamped_crd_nce_k_is_named_with_the_value_it_got():
    method = CRD(ce_weight=1.0, crd_weight=0.8, feat_dim=4, nce_k=100, nce_t=0.07, momentum=0.5)
    method.setup({PRE_LOGIT: (8,)}, {PRE_LOGIT: (8,)}, torch.arange(40) % 4, 4)
    assert method.fit_warnings(5) == [
        "loss.nce_k: 100 clamped to 30, the fewest other-class samples a class has among the 40 training images"
    ]


def test_lr_decays_that_never_happen_and_a_warm_up_as_long_as_the_run_are_named():
    step = OmegaConf.create(
        {"_target_": "kd_hydra.train.schedules.step_schedule", "milestones": [0.625, 0.75, 0.875], "gamma": 0.1}
    )
    (line,) = schedule_warnings(step, "scheduler", 3)
    head = "scheduler.milestones: [0.625, 0.75, 0.875] in a 3-epoch run decay the lr after epochs [2, 3]"
    assert line.startswith(head)
    assert "2 of 3 decays never happen" in line
    assert schedule_warnings(step, "scheduler", 240) == []
    torch_steps = OmegaConf.create({"_target_": "torch.optim.lr_scheduler.MultiStepLR", "milestones": [2, 5]})
    assert "1 of 2 decays never happen" in schedule_warnings(torch_steps, "teacher_training.scheduler", 5)[0]
    cosine = OmegaConf.create({"_target_": "kd_hydra.train.schedules.cosine_schedule", "warmup_epochs": 5})
    assert schedule_warnings(cosine, "scheduler", 5) == [
        "scheduler.warmup_epochs: 5 warm-up epochs in a 5-epoch run: the lr never peaks"
    ]


def test_a_small_validation_split_and_a_subset_are_named():
    dataset = OmegaConf.create({"subset": None})
    spec = DatasetSpec("d", 2, 3, 8, ("a", "b"), num_train=900, num_test=100, num_val=144)
    (line,) = split_warnings(spec, dataset)
    assert line.startswith("dataset.val_fraction: the validation split holds 144 images") and "4.2 points" in line
    assert split_warnings(spec, dataset, selects=False) == [], "a teacher's validation accuracy selects nothing"
    large = DatasetSpec("d", 2, 3, 8, ("a", "b"), num_train=9000, num_test=100, num_val=MIN_VAL_IMAGES)
    assert split_warnings(large, OmegaConf.create({"subset": 64})) == [
        "dataset.subset: at most 64 images of each split: a smoke test, not a result"
    ]


def test_a_sweep_prints_each_warning_once_with_the_share_of_jobs():
    lines = sweep_lines([["a: x", "b: y"], ["a: x"], ["a: x"]])
    assert lines == ["warning: a: x", "warning: b: y (1 of 3 jobs)"]


def test_an_init_stage_longer_than_the_run_is_named():
    with hydra_session() as hydra:
        cfg = compose(hydra, ["loss=fsp", "loss.init_epochs=3", "trainer.epochs=1"])
    spec = DatasetSpec("d", 2, 3, 8, ("a", "b"), num_train=9000, num_test=100)
    student = build_model("resnet8", num_classes=2, in_channels=3, image_size=32)
    assert run_warnings(cfg, spec, build_method(cfg.loss), student) == [
        "loss.init_epochs: an initialization stage of 3 epochs before a 1-epoch run"
    ]


def test_a_dkd_run_and_its_sweep_report_carry_the_warm_up_warning(workspace: Workspace):
    run_dir, single = workspace.single("dkd", *TINY, "loss=dkd")
    expected = "loss.warmup: 20 warm-up epochs in a 2-epoch run: the dkd term is weighted 0.05 to 0.10"
    assert single.stderr.count("warning: loss.warmup:") == 1 and expected in single.stderr
    assert read_metrics(run_dir)["warnings"][0].startswith(expected)
    assert "warning: loss.warmup" in (run_dir / "run.log").read_text()
    sweep_dir, sweep = workspace.sweep("dkd", *TINY, "loss=dkd", "loss.beta=1,8")
    assert sweep.stderr.count("warning: loss.warmup:") == 1, "the plan prints it once for every job"
    report = (sweep_dir / "report.md").read_text()
    assert "## Warnings" in report and expected in report and "(2 of 4 runs)" in report


# -- the CPU thread count ----------------------------------------------------------------------------------------


def test_one_thread_by_default_and_the_count_is_part_of_a_runs_identity():
    assert OmegaConf.load(CLONE_CONFIGS / "trainer" / "default.yaml").num_threads == 1
    saved = torch.get_num_threads()
    try:
        assert configure_threads(None, parallel_jobs=1) == usable_cores()
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)
    with hydra_session() as hydra:
        one, two = (compose(hydra, ["mode=student", f"trainer.num_threads={n}"]) for n in (1, 2))
    first, second = (run_identity(training_settings(cfg), "data", None) for cfg in (one, two))
    assert first != second and first["settings"]["trainer.num_threads"] == 1


def test_the_analysis_keeps_runs_of_different_thread_counts_apart():
    from analysis.aggregate import is_bookkeeping

    assert not is_bookkeeping("trainer.num_threads") and is_bookkeeping("trainer.progress")


# -- the command line --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-m", "loss.temperature=1,4", "dataset=digits", "--cfg", "job"], "error: --cfg shows one job's config"),
        (["--cfg", "job", "loss.temperature=1,4"], "error: loss.temperature: '1,4' is a sweep and --cfg shows one"),
        (["--run", "-m", "dataset=digits"], "error: --run and -m do not combine"),
        (["--info", "all", "-m"], "error: -m and --info do not combine"),
        (["--resolve", "dataset=digits"], "error: --resolve works with --cfg"),
        (["--package", "loss", "dataset=digits"], "error: --package works with --cfg"),
        (["--info", "dataset=digits"], "error: argument --info/-i: invalid choice: 'dataset=digits'"),
        (["--experimental-rerun", "/nonexistent.pickle"], "error: --experimental-rerun: no such file"),
        (["--config-path", "/nonexistent"], "error: --config-path: /nonexistent is not a directory"),
        (["--no-such-flag"], "error: unrecognized arguments: --no-such-flag"),
        (["--shell-completion"], "error: --shell-completion needs one of install=SHELL"),
    ],
)
def test_every_option_combination_ends_in_one_line(workspace: Workspace, args, expected):
    process = workspace.run(*args, expect=2)
    assert one_line_error(process).startswith(expected)


def test_a_method_sweep_may_set_a_key_only_the_swept_methods_have():
    overrides = check_command_line(["loss=ab,ft,fsp", "loss.init_epochs=1"], multirun=True)
    assert overrides == ["loss=ab,ft,fsp", "++loss.init_epochs=1"]
    with hydra_session() as hydra:
        assert compose(hydra, ["loss=ft", "++loss.init_epochs=1"]).loss.init_epochs == 1
    assert check_command_line(["loss.temperature=1,4"], multirun=True) == ["loss.temperature=1,4"]
    with pytest.raises(ConfigError, match="^loss.init_epochs: unknown key"):
        check_command_line(["loss=ab,kd", "loss.init_epochs=1"], multirun=True)


def test_help_shows_kd_hydras_usage_above_hydras(workspace: Workspace):
    process = workspace.run("--help")
    text = process.stdout
    assert text.index("Usage: python run.py") < text.index("== Groups you pick") < text.index("== Hydra's options")
    assert "python run.py -m experiment=quickstart" in text and "debug: a smoke test" in text
    assert "ab, at, cc, ce, crd, dist, dkd" in text and "docs/keys.md" in text
    assert "dataset/loader" not in text and "preset_method" not in text and "hydra/launcher" not in text


def test_every_config_group_is_either_picked_by_users_or_internal():
    folders = {str(p.relative_to(CLONE_CONFIGS).parent) for p in CLONE_CONFIGS.rglob("*.yaml")} - {"."}
    internal = {f for f in folders if any(f == g or f.startswith(g + "/") for g in INTERNAL_GROUPS)}
    assert folders - internal == set(USER_GROUPS) - {"teacher", "student"}
    assert "    smoke" in usage_groups()


def test_a_missing_method_class_says_so():
    with pytest.raises(ConfigError, match=r"^loss._target_: no such class: kd_hydra.methods.kd has no Nope"):
        method_class({"_target_": "kd_hydra.methods.kd.Nope"})


# -- the sweep's ETA and a resumed run's wall time --------------------------------------------------------------------


def test_the_eta_counts_student_jobs_only():
    outcomes = {"teacher": {"status": "completed", "seconds": 3600.0}, "s1": {"status": "completed", "seconds": 60.0}}
    assert student_eta(["teacher", "s1", "s2", "s3"], ["teacher"], outcomes) == "ETA 2m00s"
    assert student_eta(["teacher", "s1"], ["teacher"], {"teacher": outcomes["teacher"]}).startswith("ETA unknown")


def test_wall_seconds_count_every_process_of_a_resumed_run(workspace: Workspace, monkeypatch: pytest.MonkeyPatch):
    from test_fault_probe import interrupted_run

    args = [*TINY, "mode=student", "trainer.epochs=3"]
    run_dir = interrupted_run(workspace, monkeypatch, "resumed", *args)
    state = torch.load(run_dir / schema.TRAIN_STATE_FILE, weights_only=True)
    assert 0 < state["wall_seconds"] < 1000
    state["wall_seconds"] = 1000.0  # as if the first process had run for 1000 s before its checkpoint
    torch.save(state, run_dir / schema.TRAIN_STATE_FILE)
    workspace.single("resumed", *args)
    metrics = read_metrics(run_dir)
    assert metrics["resumed_from_epoch"] == 1 and 1000 < metrics["wall_seconds"] < 1000 + 300


# -- mode=eval of a student, and debug=smoke ------------------------------------------------------------------


def test_mode_eval_evaluates_a_student_checkpoint(workspace: Workspace):
    smoke = [*(o for o in TINY if "epochs" not in o), "mode=student", "debug=smoke", "trainer.save_checkpoint=true"]
    run_dir, _ = workspace.single("student", *smoke)
    trained = read_metrics(run_dir)
    assert trained["epochs"] == 1 and "dataset.subset: at most 64 images" in trained["warnings"][0]
    assert trained["settings"]["dataset.subset"] == 64, "a smoke run is recorded as one"
    model = run_dir / "model.pt"
    common = [*TINY, "mode=eval", "dataset.subset=64", f"student.checkpoint={model}"]
    eval_dir, _ = workspace.single("eval", *common)
    evaluated = read_metrics(eval_dir)
    assert evaluated["model"] == "light_cnn" and evaluated["teacher_source"] is None
    assert evaluated["final_test_acc"] == trained["final_test_acc"] and evaluated["checkpoint"] == str(model)
    other = [*(o for o in common if not o.startswith("student=")), "student=deep_cnn"]
    misfit = workspace.run(*other, f"hydra.run.dir={workspace.root}/w", expect=2)
    assert one_line_error(misfit).startswith(f"error: student.checkpoint={model}: checkpoint is light_cnn")
    both = workspace.run(*common, f"teacher.checkpoint={model}", f"hydra.run.dir={workspace.root}/x", expect=2)
    assert one_line_error(both).startswith("error: student.checkpoint: mode=eval evaluates one checkpoint")
    distill = workspace.run(*TINY, f"student.checkpoint={model}", f"hydra.run.dir={workspace.root}/y", expect=2)
    assert one_line_error(distill) == "error: student.checkpoint: only mode=eval reads it (mode is distill)"


def test_debug_smoke_makes_any_preset_one_epoch_on_a_subset():
    with hydra_session() as hydra:
        cfg = compose(hydra, ["experiment=cifar100_resnet32x4_resnet8x4", "debug=smoke"])
    assert (cfg.trainer.epochs, cfg.teacher_training.epochs, cfg.dataset.subset) == (1, 1, 64)
    assert cfg.teacher.name == "resnet32x4" and not cfg.trainer.save_checkpoint


def test_a_subset_takes_each_class_in_turn_in_every_split():
    labels = np.array([2, 0, 0, 1, 2, 2, 0, 1])
    assert class_round_robin(labels, 4).tolist() == [0, 1, 2, 3]
    assert sorted(labels[class_round_robin(labels, 6)].tolist()) == [0, 0, 1, 1, 2, 2]
    images = torch.zeros(8, 3, 4, 4, dtype=torch.uint8)
    spec = DatasetSpec("d", 3, 3, 4, ("a", "b", "c"), num_train=8, num_test=8)
    data = ArrayData(images, torch.as_tensor(labels), images, torch.as_tensor(labels), spec)
    small = with_subset(data, 3)
    assert (small.spec.num_train, small.spec.num_test) == (3, 3) and sorted(small.y_train.tolist()) == [0, 1, 2]
    assert with_subset(data, None) is data


# -- the benchmark data file ------------------------------------------------------------------------------------


def test_the_benchmark_file_is_the_prefix_of_each_cifar_file(tmp_path: Path):
    from test_data import PER_BATCH, write_fake_cifar

    from benchmarks.make_cifar10_prefix import prefix_arrays
    from kd_hydra.data.cifar import load_cifar

    written = write_fake_cifar(tmp_path, "cifar10")
    arrays = prefix_arrays(load_cifar(root=str(tmp_path), variant="cifar10", verify_checksums=False), 2)
    expected_train = np.concatenate([written[f"data_batch_{i}"][1][:2] for i in range(1, 6)])
    assert arrays["y_train"].tolist() == expected_train.tolist() and arrays["x_train"].shape == (10, 32, 32, 3)
    first = written["test_batch"][0][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(arrays["x_test"][0], first) and len(arrays["y_test"]) == 2 < PER_BATCH
    assert json.dumps(arrays["classes"].tolist()).startswith('["c0"')


def test_a_missing_benchmark_file_says_how_to_build_it(tmp_path: Path):
    from argparse import Namespace

    from benchmarks._common import prepare_npz

    error = prepare_npz(Namespace(npz=tmp_path / "none.npz", train_limit=None, test_limit=None), tmp_path)
    assert error is not None and error.startswith(f"--npz: {tmp_path / 'none.npz'}: no such file")
    assert "python benchmarks/make_cifar10_prefix.py --archive cifar-10-python.tar.gz" in error
