"""Published tables as one sweep (issue 26): the published numbers as data, ``table=<name>`` expanding into the
sweep, the plan and its cost before any job, the budget refusal, and each cell set beside the authors' number."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, Workspace, one_line_error, write_npz
from kd_hydra.config.structured import register_configs
from kd_hydra.errors import ConfigError
from kd_hydra.sweeps import cost
from kd_hydra.sweeps.table import expand_table, table_spec

CONF = REPO / "conf"
PUBLISHED = CONF / "published" / "cifar100.yaml"
register_configs()


def composed(*overrides: str, config_dir: Path = CONF):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# -- the published numbers ------------------------------------------------------------------------------------


def _docs_rows() -> dict[str, list[str]]:
    """The rows of docs/recipes.md's "The published numbers" table: preset -> its cells."""
    text = (REPO / "docs" / "recipes.md").read_text().split("## The published numbers", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| `cifar100_")]
    return {cells[0].strip().strip("`"): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_the_docs_table_shows_the_published_data_cell_for_cell():
    data = yaml.safe_load(PUBLISHED.read_text())
    text = (REPO / "docs" / "recipes.md").read_text().split("## The published numbers", 1)[1]
    header = next(line for line in text.splitlines() if line.startswith("| preset |"))
    columns = [c.strip().lower().replace("+", "_") for c in header.strip("|").split("|")][1:]
    assert columns == list(data["columns"])  # same columns, same order
    docs = _docs_rows()
    assert list(docs) == list(data["rows"])
    for preset, cells in docs.items():
        expected = ["—" if data["rows"][preset][c] is None else f"{data['rows'][preset][c]:.2f}" for c in columns]
        assert cells == expected, preset
    assert set(data["columns"].values()) == set(data["sources"])  # every column has a source, every source a use
    for source in data["sources"].values():
        assert source["metric"] == "best_test_acc" and source["epochs"] == 240 and source["where"].count("/") == 1


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "table").glob("*.yaml")))
def test_every_table_names_presets_methods_and_published_numbers(name):
    node = composed(f"table={name}").table
    spec = table_spec(node)
    presets = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    methods = {p.stem for p in (CONF / "loss").glob("*.yaml")}
    assert {spec.preset(pair) for pair in spec.pairs} <= presets
    assert set(spec.methods) <= methods and spec.seeds == (0, 1, 2) and node.name == name
    missing = []
    for pair in spec.pairs:  # each cell has its published number, but the one the CRD README lists as 0.00
        row = node.published.rows[pair]
        assert row.teacher is not None and row.student is not None
        missing += [(pair, m) for m in spec.methods if row[spec.column(m)] is None]
    assert missing == ([("cifar100_wrn_40_2_wrn_40_1", "fsp")] if name == "crd_cifar100_same" else [])


def test_a_table_expands_into_its_cells_and_its_keys_are_set_through_it():
    node = composed("table=dkd_cifar100_same", "table.pairs=[cifar100_resnet56_resnet20]", "table.seeds=[0,1]").table
    got = expand_table(["table=dkd_cifar100_same", "table.seeds=[0,1]", "trainer.epochs=1"], node)
    assert got == ["trainer.epochs=1", "experiment=cifar100_resnet56_resnet20", "loss=kd,crd,dkd", "trainer.seed=0,1"]
    ls = expand_table(["table=kd_ls_cifar100"], composed("table=kd_ls_cifar100").table)
    assert ls[0].startswith("experiment=cifar100_resnet56_resnet20_kd_ls,") and ls[1] == "loss=kd"
    with pytest.raises(ConfigError, match=r"^trainer\.seed: set by table=dkd_cifar100_same; change table\.seeds"):
        expand_table(["trainer.seed=0"], node)
    with pytest.raises(ConfigError, match=r"^table\.methods: must be a non-empty list"):
        table_spec(OmegaConf.merge(node, {"methods": []}))


# -- the cost model -------------------------------------------------------------------------------------------


class FixedTimes(cost.Calibrator):
    """Seconds per image by architecture: (step, forward)."""

    def network(self, node, data, batch_size, trainer, precision):
        step, forward = {"deep_cnn": (4.0, 1.0), "light_cnn": (2.0, 0.5)}[str(node.name)]
        return cost.NetTimes(step, forward)


def test_a_jobs_cost_is_its_epochs_of_steps_and_forwards_and_the_cache_is_filled_once():
    base = ["dataset=synthetic", "dataset.loader.num_train=100", "dataset.loader.num_test=10", "trainer.epochs=3",
            "trainer.eval_every=2", "teacher_training.epochs=5"]  # fmt: skip
    kd = composed(*base, "loss=kd")

    def changed(cfg, **values):
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k.replace('__', '.')}={v}" for k, v in values.items()]))

    jobs = [
        ("t", changed(kd, mode="teacher")),
        ("s", changed(kd, mode="student")),
        ("kd0", kd),
        ("dkd0", composed(*base, "loss=dkd")),
        ("kd1", changed(kd, trainer__seed=1)),
        ("at", composed(*base, "loss=at")),
    ]
    t, s, kd0, dkd0, kd1, at = cost.estimate(jobs, FixedTimes())
    assert cost.evaluations(3, 2) == 2 and cost.evaluations(5, 2) == 3 and cost.evaluations(4, 2) == 2
    assert t.seconds == 5 * 100 * 4.0 + 3 * 10 * 1.0 and t.kind == "teacher"  # 5 epochs of steps, 3 evaluations
    student = 3 * 100 * 2.0 + 2 * 10 * 0.5
    assert s.seconds == student and s.kind == "baseline"
    teacher_end, teacher_epochs = 10 * 1.0, 3 * 100 * 1.0  # the teacher on the test split; its forward each epoch
    assert (kd0.cache, kd0.seconds) == ("fill", student + teacher_end + teacher_epochs)
    assert (dkd0.cache, dkd0.seconds, dkd0.saved) == ("warm", student + teacher_end, teacher_epochs)  # same seed
    assert kd1.cache == "fill"  # another seed: other batches, another cache entry
    assert (at.cache, at.seconds) == ("live", student + teacher_end + teacher_epochs)  # features: the teacher live
    lines = cost.plan_lines([t, s, kd0, dkd0, kd1, at], "cpu")
    assert lines[0].startswith("plan: 6 jobs to run, 20 epochs; estimated on cpu")
    assert "soft-label cache: 2 of 3 logit-method jobs fill it" in "\n".join(lines)
    total = sum(c.seconds for c in (t, s, kd0, dkd0, kd1, at))
    assert lines[-1] == f"  total: {cost.hours(total)}"
    assert cost.over_budget([t], 1.0) is None
    assert cost.over_budget([t], 0.1).startswith("hydra.sweeper.budget_hours: the sweep's estimate, 0.56 device-hours")
    pool = ["soft_label_cache.crops_per_image=4"]  # a crop pool: K teacher passes once, for every seed and method
    kd0, kd1, dkd1 = cost.estimate(
        [("kd0", composed(*base, *pool)), ("kd1", composed(*base, *pool, "trainer.seed=1")),
         ("dkd1", composed(*base, *pool, "trainer.seed=1", "loss=dkd"))],
        FixedTimes(),
    )  # fmt: skip
    assert (kd0.cache, kd0.seconds) == ("fill", student + teacher_end + 4 * 100 * 1.0)
    assert (kd1.cache, kd1.seconds, dkd1.cache) == ("warm", student + teacher_end, "warm")


def test_data_sizes_come_from_the_config_without_loading(tmp_path: Path):
    cifar = composed("dataset=cifar100", "dataset.val_fraction=0.1").dataset
    assert cost.data_shape(cifar) == cost.DataShape(45_000, 5_000, 10_000, 100, 3, 32)
    smoke = composed("dataset=cifar10", "dataset.subset=128").dataset
    assert cost.data_shape(smoke) == cost.DataShape(128, 0, 128, 10, 3, 32)
    write_npz(tmp_path / "a.npz")
    arrays = composed("dataset=arrays", f"dataset.path={tmp_path / 'a.npz'}").dataset
    assert cost.data_shape(arrays) == cost.DataShape(32, 0, 16, 4, 3, 8)
    with pytest.raises(ConfigError, match="^dataset: tiny_imagenet: its size is known only once loaded"):
        cost.data_shape(composed("dataset=tiny_imagenet").dataset)


def test_the_calibration_times_a_network_once_per_shape():
    ticks = iter(range(0, 1000, 3))
    calibrator = cost.Calibrator(batches=2, clock=lambda: float(next(ticks)))
    cfg = composed("dataset=synthetic", "dataset.image_size=8", "trainer.batch_size=4")
    data = cost.DataShape(64, 0, 32, 10, 3, 8)
    times = calibrator.network(cfg.student, data, 4, cfg.trainer, "fp32")
    assert times == cost.NetTimes(3.0 / 2 / 4, 3.0 / 2 / 4)  # (end - start) / batches / images
    assert calibrator.network(cfg.student, data, 4, cfg.trainer, "fp32") is times and len(calibrator.times) == 1


# -- a small table end to end ---------------------------------------------------------------------------------

TINY_PRESET = """# @package _global_
defaults:
  - override /dataset: synthetic
  - override /teacher: {teacher}
  - override /student: light_cnn
dataset: {{image_size: 8, loader: {{num_train: 64, num_test: 32, num_classes: 4}}}}
trainer: {{epochs: 1, batch_size: 32, save_checkpoint: false, progress: false}}
teacher_training: {{epochs: 1, batch_size: 32}}
"""
TINY_PUBLISHED = {
    "dataset": "cifar100",
    "sources": {"paper": {"citation": "A et al.", "where": "a/b README.md", "metric": "best_test_acc", "epochs": 1}},
    "columns": {"teacher": "paper", "student": "paper", "kd": "paper", "at": "paper", "dist": "paper"},
    "rows": {"tiny_a": {"teacher": 60.0, "student": 40.0, "kd": 45.0, "at": 46.0, "dist": None},
             "tiny_b": {"teacher": 61.0, "student": 40.0, "kd": 44.0, "at": 47.0, "dist": 45.5}},
}  # fmt: skip
TINY_TABLE = """# @package table
defaults:
  - /published@published: tiny
  - _self_
name: tiny
title: A tiny table
pairs: [tiny_a, tiny_b]
methods: [kd, at, dist]
seeds: [0, 1]
preset_suffix: ""
columns: {}
teacher_tolerance: 100.0
"""


@pytest.fixture
def tiny_table(workspace: Workspace) -> tuple[Workspace, Path]:
    """A workspace with a config dir holding two tiny presets and a table of them (2 pairs x 3 methods x 2 seeds)."""
    conf = workspace.root / "conf"
    for folder in ("experiment", "table", "published"):
        (conf / folder).mkdir(parents=True)
    (conf / "experiment" / "tiny_a.yaml").write_text(TINY_PRESET.format(teacher="deep_cnn"))
    (conf / "experiment" / "tiny_b.yaml").write_text(TINY_PRESET.format(teacher="light_cnn"))
    (conf / "published" / "tiny.yaml").write_text(yaml.safe_dump(TINY_PUBLISHED))
    (conf / "table" / "tiny.yaml").write_text(TINY_TABLE)
    return workspace, conf


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return [p for p in sweep_dir.glob("*") if p.is_dir() and not p.name.startswith(".")] if sweep_dir.is_dir() else []


def test_a_table_without_multirun_is_refused_in_one_line(workspace: Workspace):
    done = workspace.run("table=dkd_cifar100_same", expect=2)
    assert one_line_error(done) == (
        "error: table: a published table is a sweep of many jobs: add -m (python run.py -m table=<name>)"
    )


def test_a_dry_run_prints_the_plan_and_its_cost_and_runs_nothing(tiny_table):
    workspace, conf = tiny_table
    sweep_dir, done = workspace.sweep("dry", "--config-dir", str(conf), "table=tiny", "table.seeds=[0]",
                                      "hydra.sweeper.dry_run=true")  # fmt: skip
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    assert lines[start].startswith("plan: 10 jobs to run, 10 epochs; estimated on cpu")
    kinds = [line.split()[0] for line in lines[start + 1 : start + 6]]
    assert kinds == ["teacher", "baseline", "kd", "at", "dist"]
    assert "  soft-label cache: 2 of 4 logit-method jobs fill it" in done.stdout and "  total: " in done.stdout
    assert "dry run (hydra.sweeper.dry_run=true): nothing was run" in done.stdout
    assert not _job_dirs(sweep_dir) and not (workspace.root / "cache" / "teachers").exists()


def test_a_sweep_over_its_budget_is_refused_in_one_line(tiny_table):
    workspace, conf = tiny_table
    sweep_dir, done = workspace.sweep("budget", "--config-dir", str(conf), "table=tiny", "table.seeds=[0]",
                                      "table.pairs=[tiny_a]", "table.methods=[kd]", "hydra.sweeper.budget_hours=1e-9",
                                      expect=2)  # fmt: skip
    line = one_line_error(done)
    assert line.startswith("error: hydra.sweeper.budget_hours: the sweep's estimate, ")
    assert line.endswith("exceeds the budget of 1e-09 device-hours; no job was started")
    assert "plan: 3 jobs to run" in done.stdout and not _job_dirs(sweep_dir)


def test_a_small_table_runs_end_to_end_beside_its_published_numbers(tiny_table, monkeypatch: pytest.MonkeyPatch):
    from analysis import report, reproduction

    workspace, conf = tiny_table
    sweep_dir, done = workspace.sweep("table", "--config-dir", str(conf), "table=tiny",
                                      "hydra.callbacks.analysis.enabled=false")  # fmt: skip
    assert done.stdout.index("plan: 18 jobs to run") < done.stdout.index("job 1 of 18")  # the plan before any job
    assert len(_job_dirs(sweep_dir)) == 18  # 2 teachers, 4 baselines, 12 cells of 2 seeds
    table = reproduction.read_table([sweep_dir])
    assert table is not None and table.pairs == ("tiny_a", "tiny_b") and table.methods == ("kd", "at", "dist")
    from analysis import load_runs

    runs = load_runs(sweep_dir)
    cells = reproduction.cells(runs, table)
    assert list(zip(cells["row"], cells["pair"]))[:4] == [("teacher", "tiny_a"), ("teacher", "tiny_b"),
                                                          ("student", "tiny_a"), ("student", "tiny_b")]  # fmt: skip
    assert len(cells) == 10 and list(cells["n"]) == [1, 1, 2, 2, 2, 2, 2, 2, 2, 2]
    dist_a = cells[(cells["pair"] == "tiny_a") & (cells["row"] == "dist")].iloc[0]
    assert pd.isna(dist_a["published"]) and math.isnan(dist_a["difference"])
    kd_b = cells[(cells["pair"] == "tiny_b") & (cells["row"] == "kd")].iloc[0]
    members = runs[(runs["loss.name"] == "kd") & runs["overrides"].str.contains("experiment=tiny_b")]
    assert kd_b["mean"] == pytest.approx(members["best_test_acc"].astype(float).mean())
    assert kd_b["difference"] == pytest.approx(kd_b["mean"] - 44.0) and kd_b["source"] == "A et al.: a/b README.md"
    assert kd_b["published_inside"] == (kd_b["mean"] - kd_b["ci95"] <= 44.0 <= kd_b["mean"] + kd_b["ci95"])
    assert kd_b["metric"] == "best_test_acc" and not kd_b["like_for_like"]
    assert kd_b["not_like_for_like"] == "dataset synthetic, the source cifar100"  # 1 epoch = the source's 1
    assert not kd_b["teacher_off"]  # within the test table's 100-point tolerance
    monkeypatch.setattr(report, "draw_figures", lambda runs, out: report.FigureOutcome())  # the figures: elsewhere
    written = report.write_report([sweep_dir])  # what the end-of-sweep callback writes
    results = pd.read_csv(written["results"])
    kd_runs = results[results["table_row"] == "kd"]
    assert len(kd_runs) == 4 and set(kd_runs["published_acc"]) == {45.0, 44.0}
    assert set(reproduction.RESULT_COLUMNS) <= set(results.columns) and results["table_pair"].notna().all()
    assert "## Reproduction of a published table" in written["report"].read_text()
    markdown = written["reproduction_md"].read_text()
    assert "| Teacher | " in markdown and "| dist | " in markdown and "A et al." in markdown
    assert "Cost: estimated " in markdown and "estimate / measured = " in markdown
    assert r"\begin{tabular}{lcc}" in written["reproduction_tex"].read_text()
    assert written["reproduction_png"].stat().st_size > 0
    saved = pd.read_csv(written["reproduction_csv"])
    assert list(saved.columns) == list(reproduction.CELL_COLUMNS) and len(saved) == 10
    _, again = workspace.sweep("table", "--config-dir", str(conf), "table=tiny", "hydra.sweeper.dry_run=true")
    assert "plan: 0 jobs to run (18 already completed, skipped), 0 epochs" in again.stdout  # the sweep resumes
