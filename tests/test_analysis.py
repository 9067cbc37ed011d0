"""Tests of the ``analysis`` package on hand-made run directories (see analysis_fixtures.py)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # the tests run without installing the package
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.image  # noqa: E402
import nbclient  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

import analysis  # noqa: E402
from analysis import (  # noqa: E402
    NoRunsError,
    aggregate,
    completed_runs,
    kd_gain,
    load_history,
    load_runs,
    plot_accuracy_vs_temperature,
    plot_heatmap,
    plot_kd_gain,
    plot_learning_curves,
    plot_method_comparison,
    save_figure,
    write_report,
)
from analysis.callback import AnalysisCallback  # noqa: E402
from analysis_fixtures import (  # noqa: E402
    BASELINE_ACC,
    DISTILL_ACC,
    FAILED_REASON,
    METHOD_SWEEP,
    METHOD_SWEEP_BASELINE,
    TEACHER_ACC,
    TOP5_OFFSET,
    FakeSweep,
    make_config,
    make_history,
    make_metrics,
    overrides_of,
    write_fake_sweep,
    write_method_sweep,
    write_run,
    write_two_dataset_sweep,
)
from conftest import call_main, isolated_process_state  # noqa: E402
from kd_hydra.records import schema  # noqa: E402

T = "loss.temperature"
ALPHA = "loss.alpha"
SEED = "trainer.seed"
ACC = "final_test_acc"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_DF1 = 12.706204736174696  # t_{0.975, 1}, from a t table
T_975_DF2 = 4.302652729749464  # t_{0.975, 2}
FIGURES = ("heatmap.png", "accuracy_vs_temperature.png", "kd_gain.png", "learning_curves.png")


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the repo and the fixtures importable, no display."""
    paths = [str(REPO_ROOT), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "MPLBACKEND": "Agg"}


def assert_png(path: Path) -> None:
    """``path`` is a non-empty PNG that both PIL and matplotlib can decode."""
    assert path.is_file() and path.stat().st_size > 0, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> FakeSweep:
    """A read-only fake multirun shared by the tests that only read it."""
    return write_fake_sweep(tmp_path_factory.mktemp("sweep") / "multirun")


@pytest.fixture(scope="module")
def runs(sweep: FakeSweep) -> pd.DataFrame:
    """``load_runs`` of the shared fake sweep."""
    return load_runs(sweep.root)


def row_of(runs: pd.DataFrame, run_dir: Path) -> pd.Series:
    """The row of ``run_dir`` in a load_runs table."""
    rows = runs[runs["run_dir"] == str(run_dir.resolve())]
    assert len(rows) == 1, run_dir
    return rows.iloc[0]


# --- load_runs ------------------------------------------------------------------------------


def test_load_runs_has_one_row_per_run_sorted_with_nested_sweeps(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    assert len(runs) == sweep.n_runs == 14
    assert list(runs["run_dir"]) == sorted(runs["run_dir"])
    for nested in (*sweep.baseline_dirs.values(), sweep.teacher_dir):
        row_of(runs, nested)
    assert (runs["mode"].value_counts() == pd.Series({"distill": 11, "student": 2, "teacher": 1})).all()


def test_load_runs_columns(runs: pd.DataFrame) -> None:
    expected = {"run_dir", "status", "reason", "overrides", "mode", "dataset.name", "teacher.name",
                "student.name", T, ALPHA, SEED, "trainer.epochs", "optimizer.lr", "scheduler.name"}  # fmt: skip
    expected |= {key for key in schema.METRICS_KEYS if key != "settings"}
    assert expected <= set(runs.columns)
    assert not any(column.startswith("settings") for column in runs.columns)
    assert runs.columns.is_unique


def test_config_is_flattened_and_interpolations_resolved(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    row = row_of(runs, sweep.distill_dirs[(4.0, 0.5, 0)])
    assert row[T] == 4.0 and row[ALPHA] == 0.5 and row[SEED] == 0
    assert row["trainer.milestones"] == "[2, 3]"
    assert row["paths.cache_dir"] == "/tmp/somewhere/cache"
    assert row["overrides"] == "mode=distill trainer.seed=0 loss.temperature=4 loss.alpha=0.5"
    assert row[ACC] == 83.0 and row["teacher_test_acc"] == TEACHER_ACC and row["status"] == "completed"
    assert pd.isna(row["reason"])


def test_failed_unfinished_and_corrupt_runs_stay_in_the_table(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    failed = row_of(runs, sweep.failed_dir)
    assert failed["status"] == schema.STATUS_FAILED and failed["reason"] == FAILED_REASON
    unfinished = row_of(runs, sweep.unfinished_dir)
    assert unfinished["status"] == schema.STATUS_UNFINISHED and schema.METRICS_FILE in unfinished["reason"]
    assert unfinished[T] == 8.0  # the config is still read
    corrupt = row_of(runs, sweep.corrupt_dir)
    assert corrupt["status"] == schema.STATUS_UNFINISHED and corrupt["reason"] == "metrics.json unreadable"
    assert (runs["status"] == schema.STATUS_COMPLETED).sum() == 11


def test_runs_with_a_different_config_schema_still_load(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    odd = row_of(runs, sweep.odd_schema_dir)
    assert odd["trainer.grad_clip"] == 1.0 and pd.isna(odd["scheduler.warmup_epochs"])
    others = runs[runs["run_dir"] != str(sweep.odd_schema_dir.resolve())]
    assert others["trainer.grad_clip"].isna().all()
    assert (others["scheduler.warmup_epochs"] == 0).all()


def test_load_runs_accepts_single_runs_and_several_overlapping_paths(sweep: FakeSweep) -> None:
    single = load_runs(sweep.teacher_dir)
    assert len(single) == 1 and single.at[0, "mode"] == "teacher"
    several = load_runs(sweep.root / "baselines", sweep.teacher_dir, sweep.root / "baselines" / "0")
    assert len(several) == 3


def test_no_runs_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(NoRunsError, match="no run directories under") as caught:
        load_runs(tmp_path / "empty")
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    with pytest.raises(NoRunsError):
        load_runs(tmp_path / "does-not-exist")


def test_hidden_folders_are_not_searched(tmp_path: Path) -> None:
    config = make_config("student", 0)
    write_run(tmp_path / "sweep" / "0", config, make_metrics(config, 70.0))
    write_run(tmp_path / "sweep" / ".ipynb_checkpoints" / "0", config, make_metrics(config, 70.0))
    assert len(load_runs(tmp_path / "sweep")) == 1


# --- load_history ---------------------------------------------------------------------------


def test_load_history_is_long_form(sweep: FakeSweep) -> None:
    history = load_history(sweep.root)
    assert list(history.columns[:4]) == ["run_dir", "epoch", "metric", "value"]
    assert {"mode", "student.name", T, ALPHA, SEED} <= set(history.columns)
    empty = {"epoch", "test_acc_top5", "val_acc", "val_loss"}  # no values in the fixture: no rows
    assert set(history["metric"]) == set(schema.history_columns(("ce", "kd"))) - empty
    odd = history[history["run_dir"] == str(sweep.odd_schema_dir.resolve())]
    per_epoch_metrics = len(schema.history_columns(("ce", "kd"))) - len(empty)
    assert len(odd) == 3 * per_epoch_metrics - 1  # epoch 2 was not evaluated: no test_acc
    last = odd[(odd["metric"] == "test_acc") & (odd["epoch"] == 3)]
    assert last["value"].tolist() == [DISTILL_ACC[(4.0, 0.9, 1)]]
    assert set(odd[T]) == {4.0} and set(odd[SEED]) == {1}
    unfinished = history[history["run_dir"] == str(sweep.unfinished_dir.resolve())]
    assert sorted(unfinished["epoch"].unique()) == [1, 2]  # partial history of an unfinished run
    assert history["value"].notna().all()


# --- aggregate and kd_gain ------------------------------------------------------------------


def test_aggregate_matches_hand_computed_statistics(runs: pd.DataFrame) -> None:
    table = aggregate(completed_runs(runs, "distill"), by=[T, ALPHA])
    assert list(table.columns) == [T, ALPHA, "mean", "std", "n", "ci95"]
    assert len(table) == 4 and (table["n"] == 2).all()
    best = table[(table[T] == 4.0) & (table[ALPHA] == 0.9)].iloc[0]
    # values 85.0 and 86.5: mean 85.75, std |a-b|/sqrt(2), CI t_{.975,1} * std / sqrt(2)
    assert best["mean"] == pytest.approx(85.75)
    assert best["std"] == pytest.approx(1.5 / math.sqrt(2))
    assert best["ci95"] == pytest.approx(T_975_DF1 * 0.75)
    low = table[(table[T] == 1.0) & (table[ALPHA] == 0.5)].iloc[0]
    assert low["mean"] == pytest.approx(81.0) and low["ci95"] == pytest.approx(T_975_DF1 * 1.0)


def test_aggregate_counts_only_completed_runs(runs: pd.DataFrame) -> None:
    by_mode = aggregate(runs, by="mode").set_index("mode")
    assert by_mode.at["distill", "n"] == 8  # failed, unfinished and corrupt runs left out
    assert by_mode.at["student", "mean"] == pytest.approx(79.5)
    assert math.isnan(by_mode.at["teacher", "ci95"])  # n = 1: no interval


def test_aggregate_three_values_by_hand() -> None:
    df = pd.DataFrame({"status": ["completed"] * 3 + ["failed"], "g": ["a"] * 4, ACC: [70.0, 72.0, 77.0, 10.0]})
    row = aggregate(df, by=["g"]).iloc[0]
    # mean 73; deviations -3, -1, 4 -> variance 26 / 2 = 13
    assert row["mean"] == pytest.approx(73.0) and row["std"] == pytest.approx(math.sqrt(13.0))
    assert row["n"] == 3 and row["ci95"] == pytest.approx(T_975_DF2 * math.sqrt(13.0) / math.sqrt(3.0))
    with pytest.raises(KeyError, match="no column"):
        aggregate(df, by=["missing"])


def test_kd_gain_against_same_seed_baselines(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    gains = kd_gain(runs)
    assert len(gains) == 8 and set(gains["mode"]) == {"distill"}
    for key, run_dir in sweep.distill_dirs.items():
        row = row_of(gains, run_dir)
        expected = DISTILL_ACC[key] - BASELINE_ACC[key[2]]
        assert row["gain"] == pytest.approx(expected), key
        assert row["baseline_n"] == 1
        assert row["baseline_run_dirs"] == str(sweep.baseline_dirs[key[2]].resolve())
    assert row_of(gains, sweep.odd_schema_dir)["gain"] == pytest.approx(86.5 - 80.0)


def test_kd_gain_is_nan_without_a_matching_baseline(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    changed = runs.copy()
    baseline0 = changed["run_dir"] == str(sweep.baseline_dirs[0].resolve())
    changed.loc[baseline0, "optimizer.lr"] = 0.05  # a training setting differs: not a baseline
    baseline1 = changed["run_dir"] == str(sweep.baseline_dirs[1].resolve())
    changed.loc[baseline1, "paths.output_dir"] = "/elsewhere"  # paths do not matter
    changed.loc[baseline1, "teacher.name"] = "none"  # nor does the teacher
    changed["soft_label_cache.enabled"] = changed["mode"] == "distill"  # nor the teacher-logit cache
    gains = kd_gain(changed).set_index(SEED)
    assert gains.loc[0, "gain"].isna().all() and (gains.loc[0, "baseline_n"] == 0).all()
    assert gains.loc[1, "gain"].notna().all()


# --- plots ----------------------------------------------------------------------------------


def texts_of(fig: Figure) -> str:
    """Every title, axis label, legend entry and annotation of ``fig``, joined."""
    parts = [fig.get_suptitle()]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    for legend in fig.legends:
        parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


def test_plot_heatmap(runs: pd.DataFrame, tmp_path: Path) -> None:
    fig = plot_heatmap(runs)
    text = texts_of(fig)
    assert "temperature T" in text and "α" in text and "cifar10: resnet56 → resnet8" in text
    assert {"85.8", "83.5", "81.2", "81.0"} <= set(text.split("\n"))
    assert "test accuracy (%)" in text  # the colorbar label
    assert fig.get_size_inches().tolist() == [7.0, 4.5]
    assert_png(save_figure(fig, tmp_path / "deep" / "heatmap.png"))


def test_plot_accuracy_vs_temperature(runs: pd.DataFrame) -> None:
    fig = plot_accuracy_vs_temperature(runs)
    text = texts_of(fig)
    assert "temperature T" in text and "student test accuracy (%)" in text
    assert "baseline student resnet8 (79.5)" in text and "teacher resnet56 (93.0)" in text
    assert "0.5" in text and "0.9" in text
    reference_levels = {line.get_ydata()[0] for line in fig.axes[0].lines if len(set(line.get_ydata())) == 1}
    assert {79.5, 93.0} <= reference_levels


def test_plot_kd_gain(runs: pd.DataFrame, sweep: FakeSweep) -> None:
    fig = plot_kd_gain(runs)
    assert "KD gain over baseline (percentage points)" in texts_of(fig)
    # the band at T=4 of α=0.9 is the paired gains' t-interval: seeds 85 - 79 and 86.5 - 80
    gains = [DISTILL_ACC[(4.0, 0.9, seed)] - BASELINE_ACC[seed] for seed in (0, 1)]
    half = T_975_DF1 * abs(gains[0] - gains[1]) / 2
    bands = [sorted({round(y, 6) for x, y in band.get_paths()[0].vertices if x == 4.0})
             for band in fig.axes[0].collections]  # fmt: skip
    assert [round(sum(gains) / 2 - half, 6), round(sum(gains) / 2 + half, 6)] in bands
    no_baselines = runs[runs["mode"] != "student"]
    with pytest.raises(ValueError, match="no distill run has a matched baseline"):
        plot_kd_gain(no_baselines)


def test_plots_refuse_what_they_cannot_draw(runs: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no completed distill runs"):
        plot_heatmap(runs[runs["mode"] != "distill"])
    with pytest.raises(ValueError, match="at least two temperatures"):
        plot_accuracy_vs_temperature(runs[runs[T] == 4.0])
    other_student = runs.copy()
    other_student.loc[other_student.index[:2], "student.name"] = "resnet14"
    with pytest.raises(ValueError, match="setups"):
        plot_heatmap(other_student)


def test_plot_learning_curves(sweep: FakeSweep, runs: pd.DataFrame) -> None:
    history = load_history(sweep.root)
    chosen = [str(sweep.distill_dirs[(4.0, 0.9, 0)].resolve()), str(sweep.baseline_dirs[0].resolve())]
    fig = plot_learning_curves(history, chosen)
    titles = [ax.get_title() for ax in fig.axes]  # every loss term on its own axis
    assert titles == ["test accuracy per epoch", "training loss (the optimised objective)",
                      "train_ce (unweighted term)", "train_kd (unweighted term)"]  # fmt: skip
    text = texts_of(fig)
    assert "epoch" in text and "test accuracy (%)" in text
    assert "loss.temperature=4 loss.alpha=0.9" in text and "student" in text
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2, 1]  # the baseline has no KD term
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "test accuracy (%)",
        "weighted sum of the terms (mixed units)",
        "cross-entropy (nats)",
        "T²-scaled KL(teacher‖student) (nats)",
    ]
    default = plot_learning_curves(history, runs=runs)  # the report's selection, seeds averaged
    legend = texts_of(default)
    assert "distill: T = 4, α = 0.9" in legend and "baseline student" in legend and "teacher" in legend
    assert len(default.axes[0].lines) == 2  # the students; the teacher's own epochs are on a panel of their own
    teacher_panel = default.axes[-1]
    assert teacher_panel.get_title() == "teacher: test accuracy per epoch" and len(teacher_panel.lines) == 1
    assert teacher_panel.get_xlabel() == "teacher epoch (its own recipe)"
    mean_curve = default.axes[0].lines[0].get_ydata()
    best = [DISTILL_ACC[(4.0, 0.9, 0)], DISTILL_ACC[(4.0, 0.9, 1)]]
    assert mean_curve[-1] == pytest.approx(sum(best) / 2)  # last epoch: mean of the two seeds
    assert texts_of(plot_learning_curves(history)) == legend  # runs read from the history's run dirs
    with pytest.raises(ValueError, match="no history"):
        plot_learning_curves(history, ["/not/a/run"])


def test_only_terms_that_mean_the_same_in_every_method_get_a_unit() -> None:
    # issue 24: AT's and CRD's terms were drawn under a "nats" axis; each method's own term has its own units
    from analysis.plots import axis_label_of

    assert axis_label_of("train_ce") == "cross-entropy (nats)"
    assert axis_label_of("train_at") == "at term (its own units)"
    assert axis_label_of("train_crd") == "crd term (its own units)"


# --- report, CLI, callback, notebook ---------------------------------------------------------


def run_cli(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m analysis ARGS`` from the repo root."""
    return subprocess.run([sys.executable, *python_flags, "-m", "analysis", *args], cwd=REPO_ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_writes_results_report_and_figures(sweep: FakeSweep, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(str(sweep.root), "--out", str(out), python_flags=("-X", "importtime"))
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "seaborn" in imported and not {"torch", "kd_hydra.losses"} & imported  # analysis never imports torch
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 14 and "final_test_acc" in results.columns
    for name in FIGURES:
        assert_png(out / name)
    report = (out / "report.md").read_text()
    assert "| distill | 8 | 1 | 2 |" in report and "| **all** | 11 | 1 | 2 |" in report
    assert "**T = 4, α = 0.9**" in report and "85.75" in report
    assert "| teacher | — | resnet56 | 850,000 | 1 | 93.00 |" in report
    assert "| baseline (CE only) | — | resnet8 | 78,000 | 2 | 79.50 ± 6.35 |" in report
    # paired KD gains of the best setting 6.0 and 6.5: mean 6.25 ± t_{.975,1} * s / sqrt(2), s = 0.5 / sqrt(2)
    assert f"+6.25 ± {T_975_DF1 * 0.25:.2f}" in report
    assert "No other setting is distinguishable from T = 4, α = 0.9" in report  # n=2: every interval overlaps
    assert "Best setting" not in report and "the data do not support naming a best setting" in report
    assert FAILED_REASON in report
    for name in FIGURES:
        assert f"]({name})" in report


def test_report_leaves_out_figures_that_do_not_apply(tmp_path: Path) -> None:
    for seed in (0, 1):  # one temperature, no baselines, one run without history
        config = make_config("distill", seed, 4.0, 0.9)
        write_run(tmp_path / "sweep" / str(seed), config, make_metrics(config, 80.0 + seed),
                  make_history(80.0 + seed) if seed else None, overrides_of(config))  # fmt: skip
    written = write_report([tmp_path / "sweep"], None)
    assert written["report"] == tmp_path / "sweep" / "report.md"
    assert "learning_curves" in set(written) and not {"heatmap", "kd_gain"} & set(written)
    report = written["report"].read_text()
    assert "skipped" not in report and "Figures not drawn" not in report  # not one line per figure
    left_out = [line for line in report.splitlines() if line.startswith("Left out as not applicable")]
    assert len(left_out) == 1
    for name in ("heatmap.png", "accuracy_vs_temperature.png", "kd_gain.png", "method_comparison.png"):
        assert f"<code>{name}</code>" in left_out[0]
    assert "— (no baseline runs)" in report


def test_report_draws_one_set_of_figures_per_setup(tmp_path: Path) -> None:
    for index, (student, temperature) in enumerate([(s, t) for s in ("resnet8", "resnet14") for t in (1.0, 4.0)]):
        config = make_config("distill", 0, temperature, 0.9)
        config["student"]["name"] = student
        write_run(tmp_path / "sweep" / str(index), config, make_metrics(config, 80.0 + index))
    written = write_report(tmp_path / "sweep", tmp_path / "out")
    report = written["report"].read_text()
    for student in ("resnet8", "resnet14"):
        assert_png(written[f"accuracy_vs_temperature_cifar10_resnet56_{student}"])
        assert f"<code>heatmap_cifar10_resnet56_{student}.png</code>" in report  # left out: one swept key
    assert "**T = 4** (cifar10: resnet56 → resnet14)" in report  # 83.0, the highest of both setups (α is fixed)
    assert "learning_curves_cifar10_resnet56_resnet8.png" in report  # no history: left out


def test_report_on_a_sweep_without_distill_runs(tmp_path: Path) -> None:
    config = make_config("teacher", 0)
    write_run(tmp_path / "t", config, make_metrics(config, TEACHER_ACC), make_history(TEACHER_ACC, distill=False))
    written = write_report(tmp_path / "t", tmp_path / "out")
    report = written["report"].read_text()
    assert "No completed distill runs" in report and "heatmap" not in report
    assert_png(written["learning_curves"])


def test_cli_on_an_empty_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_cli(str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no run directories under {tmp_path}"
    assert not (tmp_path / "report.md").exists()


def test_callback_writes_into_the_sweep_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = write_fake_sweep(tmp_path / "sweep")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(fake.root)}}})
    AnalysisCallback(enabled=False).on_multirun_end(config)
    assert not (fake.root / "report.md").exists()
    with caplog.at_level(logging.INFO, logger="analysis.callback"):
        AnalysisCallback().on_multirun_end(config)
    for name in ("results.csv", "report.md", *FIGURES):
        assert (fake.root / name).is_file(), name
    assert "analysis written to" in caplog.text
    assert len(load_runs(fake.root)) == fake.n_runs  # its outputs are not mistaken for runs


def test_callback_failure_exits_non_zero_with_a_last_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}})
    with pytest.raises(SystemExit) as exited:
        AnalysisCallback().on_multirun_end(config)
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: analysis of the sweep failed: NoRunsError: no run directories under")
    with pytest.raises(SystemExit):
        AnalysisCallback().on_multirun_end(OmegaConf.create({}))  # no hydra node at all
    assert "no hydra.sweep.dir" in capsys.readouterr().err


def test_callback_failure_still_runs_the_job_status_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = write_fake_sweep(tmp_path / "sweep")  # a failed, an unfinished and a corrupt job
    analysis_node = {"_target_": "analysis.callback.AnalysisCallback", "out_subdir": "0/metrics.json"}
    callbacks = {"job_status": {"_target_": "kd_hydra.sweeps.status.JobStatusCallback"}, "analysis": analysis_node}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(fake.root)}, "callbacks": callbacks}})
    with pytest.raises(SystemExit) as exited:  # out_subdir names a file: the analysis cannot be written
        AnalysisCallback(out_subdir="0/metrics.json").on_multirun_end(config)
    assert exited.value.code == 1  # the job status callback's own exit status
    lines = capsys.readouterr().err.strip().splitlines()
    assert any("jobs did not complete" in line for line in lines[:-1])
    assert lines[-1].startswith("error: analysis of the sweep failed: FileExistsError")
    assert f"python -m analysis {fake.root}" in lines[-1]


def test_callback_config_instantiates() -> None:
    from hydra.utils import instantiate

    node = OmegaConf.load(REPO_ROOT / "conf" / "hydra" / "callbacks" / "analysis.yaml")
    assert (REPO_ROOT / "conf/hydra/callbacks/analysis.yaml").read_text().startswith("# @package hydra.callbacks")
    callback = instantiate(node.analysis)
    assert isinstance(callback, AnalysisCallback) and callback.enabled is True and callback.out_subdir == ""


HYDRA_APP = """
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from analysis_fixtures import make_history, make_metrics

ACC = {(1.0, 0): 80.0, (1.0, 1): 81.0, (4.0, 0): 84.0, (4.0, 1): 86.0}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    acc = ACC[(float(cfg.loss.temperature), int(cfg.trainer.seed))]
    history = make_history(acc)
    lines = [",".join(history[0])] + [",".join("" if v is None else str(v) for v in row.values()) for row in history]
    (out / "history.csv").write_text("\\n".join(lines) + "\\n")
    (out / "metrics.json").write_text(json.dumps(make_metrics(OmegaConf.to_container(cfg), acc)))


main()
"""


def test_callback_in_a_real_hydra_multirun(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "conf" / "hydra" / "callbacks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "conf" / "hydra" / "callbacks" / "analysis.yaml", app / "conf" / "hydra" / "callbacks")
    config = {"defaults": ["_self_", {"override hydra/callbacks": "analysis"}], **make_config("distill", 0)}
    config["hydra"] = {"sweep": {"dir": "${oc.env:SWEEP_OUT}", "subdir": "${hydra.job.num}"}}
    (app / "conf" / "config.yaml").write_text(yaml.safe_dump(config))
    (app / "app.py").write_text(textwrap.dedent(HYDRA_APP))
    sweep_args = ["-m", "loss.temperature=1,4", "trainer.seed=0,1"]

    def run_app(sweep_dir: Path, *extra: str, expected: int = 0) -> str:
        """``python app.py ARGS``, run in this process (see conftest.call_main); returns its stderr."""
        env = {**subprocess_env(), "SWEEP_OUT": str(sweep_dir)}

        def main(args: list[str]) -> None:
            sys.argv = ["app.py", *args]
            runpy.run_path(str(app / "app.py"), run_name="__main__")

        with isolated_process_state(env, app):
            code, _, stderr = call_main([*sweep_args, *extra], main)
        assert code == expected, stderr
        return stderr

    run_app(tmp_path / "sweep")
    for name in ("results.csv", "report.md", "accuracy_vs_temperature.png", "learning_curves.png"):
        assert (tmp_path / "sweep" / name).is_file(), name  # no baselines: no kd_gain.png; one alpha: no heatmap
    assert not (tmp_path / "sweep" / "heatmap.png").exists()
    assert (pd.read_csv(tmp_path / "sweep" / "results.csv")["status"] == "completed").sum() == 4
    assert "**T = 4**" in (tmp_path / "sweep" / "report.md").read_text()  # α is the same in every run
    run_app(tmp_path / "off", "hydra.callbacks.analysis.enabled=false")
    assert (tmp_path / "off" / "0").is_dir() and not (tmp_path / "off" / "report.md").exists()
    stderr = run_app(tmp_path / "bad", "+hydra.callbacks.analysis.out_subdir=0/metrics.json", expected=2)
    assert stderr.strip().splitlines()[-1].startswith("error: analysis of the sweep failed: FileExistsError")


def run_notebook(sweep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """Execute analysis/explore.ipynb headless on ``sweep_dir``; returns the outputs of its code cells."""
    for name, value in subprocess_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KD_HYDRA_SWEEP_DIR", str(sweep_dir))
    nb = nbformat.read(REPO_ROOT / "analysis" / "explore.ipynb", as_version=4)
    assert "parameters" in nb.cells[1].metadata.get("tags", []) and "SWEEP_DIR" in nb.cells[1].source
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], [o.get("evalue") for o in outputs]
    assert not [o for o in outputs if o.get("name") == "stderr" and "Warning" not in o.get("text", "")]
    return outputs


def output_text(outputs: list) -> str:
    """The plain text of notebook outputs (streams and displayed values)."""
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def test_notebook_runs_on_a_temperature_alpha_grid(sweep: FakeSweep, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    outputs = run_notebook(sweep.root, tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # heatmap, accuracy vs T, KD gain, learning curves (one method: no comparison)
    text = output_text(outputs)
    assert "85.75" in text and "not drawn" not in text
    assert "Recipe of every compared run" in text and "No other setting is distinguishable from T = 4, α = 0.9" in text
    assert "setting_gain_ci95" in text and "overlaps" in text  # results.csv's columns: paired gains, intervals


def test_notebook_runs_on_a_method_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = run_notebook(write_method_sweep(tmp_path / "sweep"), tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # dkd heatmap, kd accuracy vs T and gain, methods compared, learning curves
    text = output_text(outputs)
    assert "dkd.beta" in text and "kd.temperature" in text  # method columns apart
    assert "dkd: beta = 8, warmup = 5" in text and "fitnet: hint_point = stage2" in text  # varying / fixed apart
    assert "No other method is distinguishable from dkd" in text and "table.md" not in text
    assert "ci95" in text and "not drawn" not in text


def test_public_api() -> None:
    expected = {"load_runs", "load_history", "aggregate", "kd_gain", "write_report", "save_figure",
                "plot_heatmap", "plot_accuracy_vs_temperature", "plot_kd_gain", "plot_learning_curves"}  # fmt: skip
    assert expected <= set(analysis.__all__) and all(callable(getattr(analysis, name)) for name in expected)
    with pytest.raises(AttributeError):
        analysis.not_a_name  # noqa: B018


# --- schema v2: methods, validation selection, top-5, data identity, escaping, file modes --------


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """``load_runs`` of the fake kd / dkd / fitnet sweep (validation split, top-5)."""
    return load_runs(write_method_sweep(tmp_path_factory.mktemp("methods") / "multirun"))


def test_rank_settings_selects_on_validation_and_reports_test(method_runs: pd.DataFrame) -> None:
    ranked = analysis.rank_settings(method_runs)
    assert ranked.attrs["selected_on"] == "final_val_acc"
    assert list(ranked.columns[:4]) == ["loss.name", "dkd.beta", "dkd.warmup", "kd.temperature"]  # methods apart
    assert len(ranked) == len(METHOD_SWEEP)  # one row per setting: seeds averaged, methods apart
    top = ranked.iloc[0]
    assert (top["loss.name"], top["dkd.beta"], top["dkd.warmup"]) == ("dkd", 8.0, 5)
    assert list(ranked["selected"]) == [True] + [False] * (len(ranked) - 1)
    assert top["val_mean"] == pytest.approx(78.0) and top["mean"] == pytest.approx(78.0)  # not 81 (test-best)
    assert top["top5_mean"] == pytest.approx(78.0 + TOP5_OFFSET)
    baseline = {seed: acc for seed, (acc, _) in METHOD_SWEEP_BASELINE.items()}
    assert top["gain"] == pytest.approx((78.0 - baseline[0] + 78.0 - baseline[1]) / 2) and top["gain_n"] == 2
    assert top["setting"] == "dkd: beta = 8, warmup = 5"  # only what varies (T and α are the same in all dkd runs)
    assert top["val_ci95"] == pytest.approx(T_975_DF1 * math.sqrt(2.0) / math.sqrt(2.0))  # 77 and 79
    test_only = method_runs.assign(final_val_acc=None)
    assert analysis.rank_settings(test_only).iloc[0]["mean"] == pytest.approx(81.0)  # dkd beta=1, warmup=5


def test_compare_methods_picks_each_methods_best_setting(method_runs: pd.DataFrame) -> None:
    table = analysis.compare_methods(method_runs)
    assert list(table["loss.name"]) == ["dkd", "fitnet", "kd"]  # validation 78, then a tie at 74: by name, not test
    assert list(table["selected"]) == [True, False, False] and list(table["tied"]) == [1, 1, 1]
    kd = table.set_index("loss.name").loc["kd"]
    assert kd["setting"] == "T = 4" and kd["mean"] == pytest.approx(75.0) and kd["n"] == 2
    assert kd["ci95"] == pytest.approx(T_975_DF1 * math.sqrt(2.0) / math.sqrt(2.0))
    assert kd["gain"] == pytest.approx(4.5)
    assert analysis.distill_methods(method_runs) == ["dkd", "fitnet", "kd"]
    assert analysis.swept_loss_keys(analysis.runs_of_method(method_runs, "dkd")) == ["loss.beta", "loss.warmup"]


def test_method_sweep_report_and_figures(method_runs: pd.DataFrame, tmp_path: Path) -> None:
    source = Path(method_runs["run_dir"].iloc[0]).parent
    written = write_report(source, tmp_path / "out")
    for key in ("method_comparison", "heatmap_dkd", "accuracy_vs_temperature_kd", "kd_gain_kd"):
        assert_png(written[key])
    report = written["report"].read_text()
    assert "selected on the validation split: **dkd: beta = 8, warmup = 5**" in report  # labels: what varies
    assert "test accuracy 78.00 ± 0.00 (n=2), validation accuracy 78.00 ± 12.71 (n=2)" in report
    # kd's row: validation, last and best test, top-5, paired gain (4 and 5: mean 4.5 ± t_{.975,1} * 0.5)
    assert (
        "| kd | T = 4 | resnet8 | 78,000 | 2 | 74.00 ± 12.71 | 75.00 ± 12.71 | 75.00 ± 12.71 | 85.00 ± 12.71 | "
        f"+4.50 ± {T_975_DF1 * 0.5:.2f} |" in report
    )
    assert "No other method is distinguishable from dkd (the highest mean validation accuracy) at n=2" in report
    assert (
        "Fixed method settings: dkd: T = 4, α = 1; fitnet: hint_point = stage2, hint_weight = 100; kd: α = 0.9."
        in report
    )  # said once, not on every row
    assert "top-5 test acc, last epoch (%)" in report and "test acc, best epoch (%)" in report
    assert "skipped" not in report and report.count("Left out as not applicable") == 1
    assert "<code>heatmap_kd.png</code>" in report and "<code>kd_gain_fitnet.png</code>" in report
    results = pd.read_csv(written["results"])
    assert len(results) == 16 and results["run_dir"].is_unique  # one row per run directory


def test_plot_method_comparison_and_heatmap_of_any_two_keys(method_runs: pd.DataFrame) -> None:
    fig = plot_method_comparison(method_runs)
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["dkd", "fitnet", "kd"]
    reference_levels = {line.get_ydata()[0] for line in ax.lines if len(set(line.get_ydata())) == 1}
    assert 70.5 in reference_levels and "baseline student resnet8 (70.5)" in texts_of(fig)
    with pytest.raises(ValueError, match="needs at least two methods"):
        plot_method_comparison(analysis.runs_of_method(method_runs, "kd"))
    with pytest.raises(ValueError, match="2 methods|3 methods"):
        plot_heatmap(method_runs)
    dkd = analysis.runs_of_method(method_runs, "dkd")
    text = texts_of(plot_heatmap(dkd))
    assert "loss.beta" in text and "loss.warmup" in text and {"81.0", "78.0", "76.0"} <= set(text.split("\n"))
    swapped = texts_of(plot_heatmap(dkd, x="loss.warmup", y="loss.beta"))
    assert "dkd student test accuracy" in swapped
    with pytest.raises(ValueError, match="both x and y"):
        plot_heatmap(dkd, x="loss.beta")
    panels = plot_heatmap(dkd, x="loss.beta", y=T)  # warmup varies too: one panel per warmup, never a best
    assert [ax.get_title() for ax in panels.axes if ax.get_title()] == ["warmup = 20", "warmup = 5"]
    assert {"81.0", "78.0", "76.0"} <= set(texts_of(panels).split("\n"))


def test_datasets_with_the_same_name_are_not_averaged(tmp_path: Path) -> None:
    root = write_two_dataset_sweep(tmp_path / "sweep")
    runs = load_runs(root)
    setups = analysis.distill_setups(runs)
    assert [dict(setup.data)["dataset.path"] for setup in setups] == ["/data/a.npz", "/data/b.npz"]
    gains = kd_gain(runs)
    assert (gains["baseline_n"] == 1).all()  # the baseline of the same data file only
    assert sorted(gains["gain"]) == pytest.approx([5.0, 5.0, 6.0, 6.0])
    ranked = analysis.rank_settings(runs)
    assert sorted(ranked["mean"]) == pytest.approx([61.0, 91.0]) and set(ranked["n"]) == {2}
    report = write_report(root, tmp_path / "out")["report"].read_text()
    assert "91.00 ± 12.71 (n=2)" in report and "76.00" not in report  # not (60 + 62 + 90 + 92) / 4
    assert "| baseline (CE only) | — | resnet8 | 78,000 | 2 | 85.50 ± 6.35 |" in report


def test_optuna_like_search_without_baselines(tmp_path: Path) -> None:
    trials = [(0.5 + 0.7 * i, 10 ** (-1 - i / 4), 60.0 + i, 70.0 - abs(i - 5)) for i in range(12)]
    for index, (temperature, lr, test, val) in enumerate(trials):
        config = make_config("distill", 0, temperature, 0.9)
        config["optimizer"]["lr"] = lr
        write_run(tmp_path / "search" / str(index), config, make_metrics(config, test, final_val_acc=val))
    written = write_report(tmp_path / "search", tmp_path / "out")
    report = written["report"].read_text()
    best = trials[5]
    assert f"selected on the validation split: **T = {best[0]:g}, optimizer.lr = {best[1]:g}**" in report
    assert f"test accuracy {best[2]:.2f} (n=1)" in report
    assert "the data do not support naming a best setting" in report and "unknown (fewer than 2 seeds)" in report
    assert "<code>heatmap.png</code>" in report  # left out: one swept loss key
    assert "would be 12 lines" in report  # accuracy vs T: one line per learning rate is too many


def test_results_csv_and_report_escape_config_text(tmp_path: Path) -> None:
    formula, markup = '=HYPERLINK("http://x","y")', "<img src=x onerror=alert(1)>"
    for seed in (0, 1):
        config = make_config("distill", seed)
        config["student"]["name"] = markup
        config["trainer"].update(note=formula, at="@cmd", offset=-0.5, tab="\tx")
        write_run(tmp_path / "sweep" / str(seed), config, make_metrics(config, 80.0 + seed),
                  overrides=["+trainer.note=1", f"trainer.seed={seed}"])  # fmt: skip
    written = write_report(tmp_path / "sweep", tmp_path / "out")
    results = pd.read_csv(written["results"], dtype=str, keep_default_na=False)
    assert set(results["trainer.note"]) == {"'" + formula} and set(results["trainer.at"]) == {"'@cmd"}
    assert set(results["trainer.tab"]) == {"'\tx"}
    assert set(results["overrides"]) == {"'+trainer.note=1 trainer.seed=0", "'+trainer.note=1 trainer.seed=1"}
    assert set(results["trainer.offset"]) == {"-0.5"}  # numbers are not text: unchanged
    assert set(results["final_test_acc"]) == {"80.0", "81.0"}
    report = written["report"].read_text()
    assert markup not in report and html_escaped(markup) in report


def html_escaped(text: str) -> str:
    """``text`` with &, <, >, " and ' as HTML entities (an independent spelling of html.escape)."""
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#x27;")):
        text = text.replace(raw, entity)
    return text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from kd_hydra.records.files import atomic_write_bytes, current_umask

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_bytes(tmp_path / "file.bin", b"data")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"data")  # what open() gives, for comparison
    finally:
        os.umask(previous)
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o666 & ~umask == plain.stat().st_mode & 0o777
    assert (tmp_path / "file.bin").read_bytes() == b"data" and len(list(tmp_path.iterdir())) == 2


def test_report_files_are_not_private(sweep: FakeSweep, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        written = write_report(sweep.root, tmp_path / "out")
    finally:
        os.umask(previous)
    for path in written.values():
        assert path.stat().st_mode & 0o777 == 0o644, path


# --- bad input: one line, never a traceback (issue 16) ---------------------------------------


def write_damaged_runs(root: Path) -> dict[str, Path]:
    """Two good distill runs and one run per kind of damage; returns name -> run dir."""
    dirs = {}
    for seed in (0, 1):
        config = make_config("distill", seed)
        dirs[f"good{seed}"] = write_run(root / f"good{seed}", config, make_metrics(config, 80.0 + seed),
                                        make_history(80.0 + seed))  # fmt: skip
    damaged = {
        "status_list": {"status": ["completed"]},
        "acc_text": {"final_test_acc": "high"},
        "settings_list": {"settings": [1, 2]},
        "mode_dict": {"mode": {"a": 1}},
        "settings_meta": {"settings": {"run_dir": "/elsewhere", "status": "failed", "mode": ["distill"]}},
    }
    for name, change in damaged.items():
        config = make_config("distill", 2)
        dirs[name] = write_run(root / name, config, {**make_metrics(config, 90.0), **change})
    config = make_config("distill", 3)
    dirs["not_utf8"] = write_run(root / "not_utf8", config, None, None)
    (dirs["not_utf8"] / schema.METRICS_FILE).write_bytes(b"\xff\xfe\x00{")
    dirs["array"] = write_run(root / "array", config, None, None)
    (dirs["array"] / schema.METRICS_FILE).write_text("[1, 2, 3]")
    dirs["bad_history"] = write_run(root / "bad_history", config, make_metrics(config, 70.0), None)
    (dirs["bad_history"] / schema.HISTORY_FILE).write_bytes(b"epoch,test_acc\nx,\xff\n\x00\x00\n")
    dirs["bad_config"] = write_run(root / "bad_config", config, None, None)
    (dirs["bad_config"] / ".hydra" / "config.yaml").write_text("mode: [unclosed\n")
    return dirs


def test_cli_skips_damaged_runs_with_one_warning_each(tmp_path: Path) -> None:
    dirs = write_damaged_runs(tmp_path / "sweep")
    done = run_cli(str(tmp_path / "sweep"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    for name in ("status_list", "acc_text", "settings_list", "mode_dict", "not_utf8", "array", "bad_history"):
        assert sum(name in line for line in warned) == 1, (name, warned)
    assert all(line.startswith("warning: ") for line in done.stderr.splitlines()), done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "&#x27;status&#x27; is a list, expected text" in report
    assert "**kd**" in report and "77.00 ± " in report  # (80 + 81 + 70) / 3: none of the 90s
    assert "Only one setting: kd; nothing to compare it with." in report and "kd: T = 4, α = 0.9" in report
    runs = load_runs(tmp_path / "sweep")
    assert (runs["status"] == "completed").sum() == 4  # the good runs, a bad history.csv, odd settings
    assert row_of(runs, dirs["bad_config"])["reason"] == "no metrics.json (run unfinished or killed)"
    odd = row_of(runs, dirs["settings_meta"])  # settings cannot overwrite the run's own columns
    assert odd["status"] == "completed" and odd["mode"] == '["distill"]' and odd["run_dir"].endswith("settings_meta")


def test_cli_out_naming_a_file_is_one_error_line(sweep: FakeSweep, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep me")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        done = run_cli(str(sweep.teacher_dir), "--out", str(out))
        assert done.returncode == 2
        assert done.stderr.strip() == f"error: --out {out}: {tmp_path / 'file'} exists and is not a directory"
    assert (tmp_path / "file").read_text() == "keep me"


# --- any settings, like with like, selection without the test set (issue 15) ---------------


def test_lr_sweeps_with_dict_settings_are_analysed_together(tmp_path: Path) -> None:
    from analysis_fixtures import lr_sweep_accuracy, write_lr_sweep

    write_lr_sweep(tmp_path / "lr")  # teacher_training follows the student's optimizer: one teacher per lr
    write_lr_sweep(tmp_path / "plain", lrs=(1e-3,), epochs=5)
    done = run_cli(str(tmp_path / "lr"), str(tmp_path / "plain"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    runs = load_runs(tmp_path / "lr", tmp_path / "plain")
    assert runs["teacher_training.optimizer"].map(lambda v: v.startswith('{"_target_"')).all()
    assert runs["scheduler.milestones"].eq("[2, 3]").all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("### cifar10: resnet56 [teacher #") == 3  # students grouped by their teacher
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == len(runs) == 3 * 7
    assert any(name.startswith("accuracy_vs_temperature_") for name in os.listdir(tmp_path / "out"))
    by = analysis.across_setups_by(runs)
    assert {"optimizer.lr", "trainer.epochs"} <= set(by)
    for setup in analysis.distill_setups(runs):
        for row in analysis.rank_settings(analysis.runs_of_setup(runs, setup), by=by).to_dict("records"):
            members = runs[runs["run_dir"].isin(row["run_dirs"])]
            assert members["optimizer.lr"].nunique() == 1 and members["trainer.epochs"].nunique() == 1
            expected = [lr_sweep_accuracy("distill", row["optimizer.lr"], row["trainer.epochs"], seed, row[T])
                        for seed in members[SEED]]  # fmt: skip
            assert row["mean"] == pytest.approx(sum(expected) / len(expected)) and row["n"] == 2


def test_optuna_lr_search_with_a_pinned_teacher_and_complete_records(tmp_path: Path) -> None:
    from analysis_fixtures import PINNED_TEACHER, lr_sweep_accuracy, write_lr_sweep

    lrs = (1.3e-4, 4.1e-4, 7.7e-4, 1.9e-3, 3.3e-3)
    write_lr_sweep(tmp_path / "optuna", lrs=lrs, seeds=(0,), temperatures=(4.0,), teacher=PINNED_TEACHER,
                   complete=True)  # fmt: skip
    runs = load_runs(tmp_path / "optuna")
    assert runs["teacher_id"].dropna().nunique() == 1 and len(analysis.distill_setups(runs)) == 1
    written = write_report(tmp_path / "optuna", tmp_path / "out")
    report = written["report"].read_text()
    best = lr_sweep_accuracy("distill", lrs[-1], 2, 0)
    assert f"**optimizer.lr = {lrs[-1]:g}**" in report and f"{best:.2f} (n=1)" in report
    assert "teacher #" not in report  # one teacher: nothing to tell apart


def test_complete_settings_in_metrics_json_are_the_record(tmp_path: Path) -> None:
    from analysis_fixtures import PINNED_TEACHER, complete_metrics, lr_sweep_config

    config = lr_sweep_config("distill", 0, 1e-3, 2, teacher=PINNED_TEACHER)
    run = write_run(tmp_path / "run", config, complete_metrics(config, 70.0, teacher_id="t1", data_digest="d1"))
    refused = copy.deepcopy(config)  # a refused rerun rewrote .hydra with another lr and a new key
    refused["optimizer"]["lr"] = 0.05
    refused["trainer"]["extra"] = 1
    OmegaConf.save(OmegaConf.create(refused), run / ".hydra" / "config.yaml")
    row = row_of(load_runs(run), run)
    assert row["optimizer.lr"] == 1e-3 and "trainer.extra" not in row.index
    assert row["teacher_training.optimizer"] == json.dumps(PINNED_TEACHER["optimizer"], sort_keys=True)
    assert row["teacher_id"] == "t1" and row["data_digest"] == "d1" and row[ACC] == 70.0
    old = make_config("distill", 0)  # an old record: its settings subset still wins over a rewritten .hydra
    old_run = write_run(tmp_path / "old", old, make_metrics(old, 71.0))
    rewritten = copy.deepcopy(old)
    rewritten["optimizer"]["lr"] = 0.05
    OmegaConf.save(OmegaConf.create(rewritten), old_run / ".hydra" / "config.yaml")
    assert row_of(load_runs(old_run), old_run)["optimizer.lr"] == 0.1


def test_students_of_different_teachers_or_data_are_never_averaged(tmp_path: Path) -> None:
    from analysis_fixtures import complete_metrics, lr_sweep_config

    for teacher_id, data_digest, acc in (("t1", "d1", 70.0), ("t2", "d1", 80.0), ("t1", "d2", 90.0)):
        for seed in (0, 1):
            config = lr_sweep_config("distill", seed, 1e-3, 2, teacher={"epochs": 5})
            metrics = complete_metrics(config, acc + seed, teacher_id=teacher_id, data_digest=data_digest)
            write_run(tmp_path / "sweep" / f"{teacher_id}-{data_digest}-{seed}", config, metrics)
    runs = load_runs(tmp_path / "sweep")
    setups = analysis.distill_setups(runs)
    assert [(dict(s.data).get("data_digest"), dict(s.teacher_keys).get("teacher_id")) for s in setups] == [
        ("d1", "t1"), ("d1", "t2"), ("d2", None)]  # d2 has one teacher: nothing to tell apart  # fmt: skip
    means = sorted(analysis.rank_settings(analysis.runs_of_setup(runs, s)).iloc[0]["mean"] for s in setups)
    assert means == pytest.approx([70.5, 80.5, 90.5])
    report = write_report(tmp_path / "sweep", tmp_path / "out")["report"].read_text()
    assert "teacher_id=t2" in report and "80.50 ± 6.35 (n=2)" in report


def test_eval_runs_are_listed_apart(sweep: FakeSweep, tmp_path: Path) -> None:
    shutil.copytree(sweep.root, tmp_path / "sweep")
    config = make_config("teacher", 0)
    config["mode"] = "eval"
    config["teacher"]["checkpoint"] = "/ckpt/model.pt"
    metrics = {"schema_version": 3, "status": "completed", "reason": None, "mode": "eval", "dataset": "cifar10",
               "model": "resnet56", "test_acc": 91.25, "test_acc_top5": 99.5, "per_class_acc": [90.0] * 10,
               "confusion_matrix": "confusion_matrix.csv", "settings": {"mode": "eval", "dataset.name": "cifar10",
               "teacher.name": "resnet56", "teacher.checkpoint": "/ckpt/model.pt"}}  # fmt: skip
    run = write_run(tmp_path / "sweep" / "eval", config, metrics)
    (run / "confusion_matrix.csv").write_text("1,0\n0,1\n")
    done = run_cli(str(tmp_path / "sweep"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0 and "sweep/eval" not in done.stderr, done.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Evaluations (mode=eval)" in report and "test_acc 91.25, test_acc_top5 99.50" in report
    assert "<code>/ckpt/model.pt</code>" in report and "| eval | 1 |" in report
    assert "**T = 4, α = 0.9**" in report and "85.75" in report  # the comparisons are unchanged


def write_tied_sweep(root: Path) -> dict[tuple[float, float], float]:
    """T × α grid, 2 seeds, where (T=1, α=0.9) and (T=4, α=0.5) tie on validation; returns test means."""
    validation = {(1.0, 0.5): 60.0, (1.0, 0.9): 70.0, (4.0, 0.5): 70.0, (4.0, 0.9): 65.0}
    test = {(1.0, 0.5): 61.0, (1.0, 0.9): 72.0, (4.0, 0.5): 78.0, (4.0, 0.9): 79.0}
    for (temperature, alpha), val in validation.items():
        for seed in (0, 1):
            config = make_config("distill", seed, temperature, alpha)
            spread = 1.0 if seed else -1.0  # same mean, different seeds
            metrics = make_metrics(config, test[(temperature, alpha)] + spread, final_val_acc=val - spread)
            write_run(root / f"T{temperature:g}-a{alpha:g}-s{seed}", config, metrics, make_history(80.0))
    return test


def test_tied_validation_accuracies_name_every_tied_setting(tmp_path: Path) -> None:
    test = write_tied_sweep(tmp_path / "sweep")
    runs = load_runs(tmp_path / "sweep")
    ranked = analysis.rank_settings(runs)
    selected = analysis.best_settings(ranked)
    assert sorted(selected["setting"]) == ["T = 1, α = 0.9", "T = 4, α = 0.5"]
    assert not ranked.set_index("setting").at["T = 4, α = 0.9", "selected"]  # best on test: not selected
    report = write_report(tmp_path / "sweep", tmp_path / "out")["report"].read_text()
    assert "2 settings tie on the highest mean final_val_acc" in report and "picks none of them by test" in report
    for label, key in (("T = 1, α = 0.9", (1.0, 0.9)), ("T = 4, α = 0.5", (4.0, 0.5))):
        assert f"- **{label}**: test accuracy {test[key]:.2f} ± " in report
        assert f"| kd (tied, 1 of 2) | {label} |" in report
    assert "**T = 4, α = 0.9**" not in report and "| kd (tied, 1 of 2) | T = 4, α = 0.9 |" not in report
    assert "2 settings tie on the highest mean validation accuracy" in report and "none is named best" in report
    legend = texts_of(plot_learning_curves(load_history(tmp_path / "sweep"), runs=runs))
    assert "distill: T = 1, α = 0.9" in legend and "distill: T = 4, α = 0.5" in legend
    assert "T = 4, α = 0.9" not in legend  # the learning curves follow the report's selection


def write_dkd_dist_sweep(root: Path) -> Path:
    """dkd (β 1, 8) and dist (β 2, 3) on cifar10, two seeds each, with histories of their own loss terms."""
    for method, betas in (("dkd", (1.0, 8.0)), ("dist", (2.0, 3.0))):
        for index, beta in enumerate(betas):
            for seed in (0, 1):
                config = make_config("distill", seed, method=method, beta=beta)
                acc = 70.0 + index + seed + (5.0 if method == "dist" else 0.0)
                write_run(root / f"{method}-{beta:g}-{seed}", config, make_metrics(config, acc),
                          make_history(acc, method=method))  # fmt: skip
    return root


def test_method_sweep_keeps_methods_apart(tmp_path: Path) -> None:
    root = write_dkd_dist_sweep(tmp_path / "sweep")
    runs = load_runs(root)
    ranked = analysis.rank_settings(runs)
    assert list(ranked.columns[:3]) == ["loss.name", "dist.beta", "dkd.beta"] and "loss.beta" not in ranked.columns
    labels = set(ranked["setting"])
    assert labels == {"dkd: beta = 1", "dkd: beta = 8", "dist: beta = 2", "dist: beta = 3"}  # only what varies
    written = write_report(root, tmp_path / "out")
    report = written["report"].read_text()
    assert "| method | dist.beta | dkd.beta |" in report
    assert report.count("Left out as not applicable") == 1 and "skipped" not in report
    curves = plot_learning_curves(load_history(root), runs=runs)
    titles = [ax.get_title() for ax in curves.axes]
    assert "train_dkd (unweighted term)" in titles and "train_dist (unweighted term)" in titles
    legend = texts_of(curves)
    assert "dist: beta = 3" in legend and "dkd: beta = 8" in legend
    assert_png(written["learning_curves"])


def test_close_learning_rates_of_a_search_stay_apart(tmp_path: Path) -> None:
    for index, lr in enumerate((1.2345671e-3, 1.2345674e-3)):  # equal to 6 significant digits
        config = make_config("distill", 0)
        config["optimizer"]["lr"] = lr
        write_run(tmp_path / "search" / str(index), config, make_metrics(config, 70.0 + index))
    ranked = analysis.rank_settings(load_runs(tmp_path / "search"))
    assert list(ranked["mean"]) == [71.0, 70.0] and list(ranked["n"]) == [1, 1]


def test_setups_ranked_together_never_merge_settings(tmp_path: Path) -> None:
    write_dkd_dist_sweep(tmp_path / "sweep" / "a")  # dkd and dist with resnet8, no validation split
    for beta in (1.0, 8.0):  # dkd alone with resnet14, β swept, a validation split
        for seed in (0, 1):
            config = make_config("distill", seed, method="dkd", beta=beta)
            config["student"]["name"] = "resnet14"
            metrics = make_metrics(config, 60.0 + beta + seed, final_val_acc=50.0 + beta)
            write_run(tmp_path / "sweep" / "b" / f"{beta:g}-{seed}", config, metrics)
    runs = load_runs(tmp_path / "sweep")
    by = analysis.across_setups_by(runs)
    resnet14 = [s for s in analysis.distill_setups(runs) if s.student == "resnet14"][0]
    ranked = analysis.rank_settings(analysis.runs_of_setup(runs, resnet14), by=by)
    assert sorted(ranked["mean"]) == [61.5, 68.5] and set(ranked["n"]) == {2}  # β 1 and β 8 not averaged
    report = write_report(tmp_path / "sweep", tmp_path / "out")["report"].read_text()
    assert "**dkd: beta = 8** (cifar10: resnet56 → resnet14)" in report
    assert "validation accuracy 58.00 ± 0.00 (n=2)" in report


def test_a_run_repeated_into_another_directory_counts_once() -> None:
    """Equal ``config_digest`` (settings, seed, data, teacher): the same run twice is not two seeds."""
    from analysis.aggregate import aggregate

    runs = pd.DataFrame(
        {
            "status": ["completed"] * 3,
            "mode": ["distill"] * 3,
            "loss.temperature": [4.0, 4.0, 4.0],
            "config_digest": ["same", "same", "other seed"],
            "final_test_acc": [90.0, 90.0, 80.0],
        }
    )
    table = aggregate(runs, "loss.temperature")
    assert table["n"].tolist() == [2] and table["mean"].tolist() == [85.0]


def test_bookkeeping_is_the_identity_s_non_training_keys_and_the_device() -> None:
    """One definition (kd_hydra.records.identity): what a resumed run may change never splits settings either;
    the device stays in a run's identity but not in its setting."""
    from analysis.aggregate import is_bookkeeping
    from kd_hydra.records.identity import NON_TRAINING_KEYS, training_settings

    assert all(is_bookkeeping(key) for key in NON_TRAINING_KEYS)
    assert is_bookkeeping("paths.cache_dir") and is_bookkeeping("hydra.x")
    assert is_bookkeeping("trainer.device") and "trainer.device" in training_settings(
        OmegaConf.create({"mode": "student", "trainer": {"device": "cpu", "num_threads": 1}})
    )
    thread_count = "trainer.num_threads"  # changes float summation order, so the numbers: never bookkeeping
    assert not any(is_bookkeeping(key) for key in ("trainer.seed", "trainer.eval_every", "dataset.path", "loss.alpha"))
    assert not is_bookkeeping(thread_count) and thread_count in training_settings(
        OmegaConf.create({"mode": "student", "trainer": {"device": "cpu", "num_threads": 1}})
    )
