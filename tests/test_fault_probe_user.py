"""The third fault probe (issue 25), mechanisms 5 and 6: user methods, checks before any work, neighbours that leak."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import TINY, Workspace, one_line_error
from kd_hydra.records import schema

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# ----------------------------------------------------------------------------- 5. user methods

USER_HEAD = """
import math
import torch
from kd_hydra.losses import cross_entropy
from kd_hydra.methods import DistillMethod, LossOutput

CALLS = [0]
"""

USER_METHODS = {
    "syntax": "class Broken(DistillMethod)\n    pass\n",
    "non_scalar": """
class Method(DistillMethod):
    def forward(self, batch):
        ce = torch.nn.functional.cross_entropy(batch.student_logits, batch.targets, reduction="none")
        return LossOutput(ce, {"ce": ce.mean()})
""",
    "non_finite": """
class Method(DistillMethod):
    def forward(self, batch):
        ce = cross_entropy(batch.student_logits, batch.targets)
        return LossOutput(ce * math.inf, {"ce": ce})
""",
    "parts": """
class Method(DistillMethod):
    parts = ("ce", "mse")
    def __init__(self, *, mse_weight: float) -> None:
        super().__init__()
        self.mse_weight = mse_weight
    def forward(self, batch):
        ce = cross_entropy(batch.student_logits, batch.targets)
        return LossOutput(ce, {"ce": ce, "mse_loss": ce})
""",
    "column": """
class Method(DistillMethod):
    parts = ("ce", "acc")
    def __init__(self, *, acc_weight: float) -> None:
        super().__init__()
        self.acc_weight = acc_weight
    def forward(self, batch):
        ce = cross_entropy(batch.student_logits, batch.targets)
        return self.weighted_loss(batch, {"ce": ce, "acc": ce})
""",
    "late": """
class Method(DistillMethod):
    def forward(self, batch):
        CALLS[0] += 1
        ce = cross_entropy(batch.student_logits, batch.targets)
        return LossOutput(ce if CALLS[0] == 1 else ce.expand(3), {"ce": ce})
""",
}
SETTINGS = {"parts": "mse_weight: 1.0\n", "column": "acc_weight: 1.0\n"}


def user_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> Path:
    """``user_<case>.py`` importable and ``conf/loss/user.yaml`` naming its class; the config dir."""
    module = f"user_{case}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{module}.py").write_text(USER_HEAD + USER_METHODS[case])
    conf = tmp_path / "conf" / "loss"
    conf.mkdir(parents=True)
    cls = "Broken" if case == "syntax" else "Method"
    conf.joinpath("user.yaml").write_text(f"_target_: {module}.{cls}\nname: user\n{SETTINGS.get(case, '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return tmp_path / "conf"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("syntax", "importing user_syntax for user_syntax.Broken fails: SyntaxError"),
        ("non_scalar", "user_non_scalar.Method.forward's total must be a scalar (got shape (4,))"),
        ("non_finite", "user_non_finite.Method.forward's total is not finite (inf)"),
        ("parts", "user_parts.Method.forward returned parts ['ce', 'mse_loss'], its parts declare ['ce', 'mse']"),
        ("column", "user_column.Method.parts has 'acc', whose history column train_acc is a built-in one"),
    ],
)
def test_a_faulty_user_method_is_one_line_naming_the_target_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Workspace, case: str, message: str
):
    conf = user_method(tmp_path / "user", monkeypatch, case)
    run_dir, process = workspace.single("user", "--config-dir", str(conf), *TINY, "loss=user", expect=2)
    line = one_line_error(process)
    assert line.startswith("error: loss._target_: ") and message in line, line
    assert not (workspace.root / "cache" / "teachers").exists()  # refused before the teacher stage
    assert not (run_dir / schema.HISTORY_FILE).exists() and not (run_dir / "model.pt").exists()


def test_a_user_method_that_breaks_after_the_probe_fails_at_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Workspace, teacher_workspace: Workspace
):
    workspace.copy_from(teacher_workspace, "cache")
    conf = user_method(tmp_path / "user", monkeypatch, "late")
    run_dir, process = workspace.single("late", "--config-dir", str(conf), *TINY, "loss=user", expect=2)
    line = one_line_error(process)
    assert "error: loss._target_: user_late.Method.forward's total must be a scalar (got shape (3,))" in line
    from kd_hydra.records.run_directory import read_metrics

    record, _ = read_metrics(run_dir)
    assert record is None or record["status"] == schema.STATUS_FAILED
    assert not (run_dir / "model.pt").exists()


def test_the_probe_leaves_the_method_and_the_random_state_as_they_were():
    import torch

    from kd_hydra.methods.contract import probe_method
    from kd_hydra.methods.kd import KD

    method = KD(temperature=4.0, alpha=None, ce_weight=1.0, kd_weight=1.0, standardize=False)
    before = torch.get_rng_state()
    probe_method(method, {}, {}, 10)
    assert torch.equal(before, torch.get_rng_state())


# ----------------------------------------------------------------------------- 6. the Python API


def restore_caller_state(logger, threads, torch_rng, python_rng, numpy_rng, level) -> None:
    """Put back what the test below changed on purpose, so that the tests after it run as usual."""
    import random

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.set_rng_state(torch_rng)
    random.setstate(python_rng)
    np.random.set_state(numpy_rng)
    logger.setLevel(level)


def test_run_experiment_leaves_the_callers_process_state_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
):
    import logging
    import os
    import random

    import numpy as np
    import torch

    import kd_hydra

    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("kd_hydra")
    saved = (torch.get_num_threads(), torch.get_rng_state(), random.getstate(), np.random.get_state(), logger.level)
    request.addfinalizer(lambda: restore_caller_state(logger, *saved))  # later tests must see the usual state
    torch.set_num_threads(3)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    logger.setLevel(logging.ERROR)
    root_level, root_handlers = logging.getLogger().level, list(logging.getLogger().handlers)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    tiny = [o for o in TINY if not o.startswith("trainer.num_threads")]
    kd_hydra.run_experiment(
        [*tiny, "mode=student", "trainer.epochs=1", "trainer.num_threads=1", f"paths.cache_dir={tmp_path / 'c'}"],
        output_dir=tmp_path / "run",
        progress=False,
    )
    assert torch.get_num_threads() == 3 and os.getcwd() == str(tmp_path)
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    assert np.array_equal(before[2], np.random.get_state()[1])
    assert logger.level == logging.ERROR and logging.getLogger().level == root_level
    assert logging.getLogger().handlers == root_handlers


def test_a_concurrent_call_is_refused_in_one_line_and_the_first_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import threading

    import kd_hydra
    import kd_hydra.run.app
    from kd_hydra.errors import KDHydraError

    started, release, results = threading.Event(), threading.Event(), []

    def slow_run(cfg):
        started.set()
        release.wait(30)
        return {"status": "completed", "dir": cfg.paths.output_dir}

    monkeypatch.setattr(kd_hydra.run.app, "run", slow_run)
    first = threading.Thread(
        target=lambda: results.append(kd_hydra.run_experiment(["mode=student"], output_dir=tmp_path / "a"))
    )
    first.start()
    assert started.wait(30)
    with pytest.raises(KDHydraError, match="another call is running in this process") as caught:
        kd_hydra.run_experiment(["mode=student"], output_dir=tmp_path / "b")
    assert "\n" not in str(caught.value) and not (tmp_path / "b").exists()
    release.set()
    first.join(30)
    assert results and results[0]["status"] == "completed"
    assert kd_hydra.run_experiment(["mode=student"], output_dir=tmp_path / "c")["status"] == "completed"


@pytest.mark.parametrize("overrides", [["-m"], ["--multirun"], ["hydra.mode=MULTIRUN"]])
def test_run_experiment_refuses_multirun_settings(tmp_path: Path, overrides: list[str]):
    import kd_hydra
    from kd_hydra.errors import ConfigError

    with pytest.raises(ConfigError, match="run_experiment runs one job") as caught:
        kd_hydra.run_experiment(["mode=student", *overrides], output_dir=tmp_path / "run")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 6. the analysis

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 9)}]\n" for i in range(1, 10)
)


def test_the_analysis_skips_a_non_utf8_run_name_and_an_alias_bomb_with_a_line_each(tmp_path: Path, capsys):
    import os

    from analysis import load
    from analysis.__main__ import main
    from analysis_fixtures import write_fake_sweep

    sweep = write_fake_sweep(tmp_path / "sweep")
    bad_name = os.fsencode(sweep.root) + b"/run-\xff"
    os.makedirs(bad_name + b"/.hydra")
    with open(bad_name + b"/.hydra/config.yaml", "w") as handle:
        handle.write("mode: student\n")
    bomb = sweep.root / "bomb"
    (bomb / ".hydra").mkdir(parents=True)
    (bomb / ".hydra" / "config.yaml").write_text(ALIAS_BOMB)
    (bomb / ".hydra" / "overrides.yaml").write_text(ALIAS_BOMB.replace("a: &a", "- &a", 1).split("\n")[0] + "\n")

    with pytest.warns(UserWarning) as caught:
        runs = load.load_runs(sweep.root)
    lines = [str(w.message) for w in caught]
    assert any("run-\\xff" in line and "not UTF-8" in line for line in lines), lines
    assert any(str(bomb) in line and "alias" in line for line in lines), lines
    assert len(runs) == sweep.n_runs + 1  # the bomb is a row (unfinished, config unreadable), the odd name is not
    row = runs[runs["run_dir"] == str(bomb.resolve())].iloc[0]
    assert row["status"] == schema.STATUS_UNFINISHED and row.isna()["mode"]  # no config value read

    assert main([str(sweep.root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "alias" in err


# ----------------------------------------------------------------------------- 6. a preset against the data

PRESET = [*(a for a in TINY if not a.startswith("optimizer=")), "experiment=cifar100_resnet32x4_resnet8x4"]
GRAY = "dataset.loader.channels=1"  # the preset's normalisation has 3 values
GRAY_LINE = "dataset.normalize.mean: 3 values for a 1-channel dataset (synthetic); expected one per channel"


def test_a_preset_against_a_dataset_of_another_shape_is_one_line_before_anything_trains(workspace: Workspace):
    run_dir, process = workspace.single("gray", *PRESET, GRAY, expect=2)
    assert one_line_error(process) == f"error: {GRAY_LINE}"
    assert not (workspace.root / "cache" / "teachers").exists()  # refused before the teacher stage
    assert not (run_dir / schema.HISTORY_FILE).exists() and not (run_dir / "model.pt").exists()


def test_a_sweep_refuses_each_job_whose_preset_does_not_fit_its_data_before_any_job_starts(workspace: Workspace):
    sweep_dir, process = workspace.sweep("gray", *PRESET, GRAY, "loss.alpha=0.5,0.9", expect=None)
    refused = [line for line in process.stderr.splitlines() if line.endswith("it is not started")]
    assert len(refused) == 2 and all(line.startswith("error: job ") and GRAY_LINE in line for line in refused)
    assert "did not complete" not in process.stderr  # no job started and failed
    assert not (workspace.root / "cache" / "teachers").exists()
    assert not sweep_dir.exists() or not any(path.name == schema.HISTORY_FILE for path in sweep_dir.rglob("*"))


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"normalize": {"mean": [0.5], "std": [0.2, 0.2, 0.2]}}, "dataset.normalize.std: 3 values for a 1-channel"),
        ({"image_size": 32}, "dataset.image_size: is 32 for a dataset of 8x8 images (gray)"),
        ({"num_classes": 100}, "dataset.num_classes: is 100 for a dataset of 10 classes (gray)"),
    ],
)
def test_every_value_a_dataset_and_a_preset_share_is_checked_against_the_data(values: dict, line: str):
    from omegaconf import OmegaConf

    from kd_hydra.data.load import check_fits_data
    from kd_hydra.data.types import DatasetSpec
    from kd_hydra.errors import ConfigError

    spec = DatasetSpec("gray", 10, 1, 8, tuple(map(str, range(10))), num_train=32, num_test=16)
    check_fits_data(OmegaConf.create({"normalize": {"mean": [0.5], "std": [0.2]}, "image_size": 8}), spec)
    with pytest.raises(ConfigError) as caught:
        check_fits_data(OmegaConf.create(values), spec)
    assert line in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- 6. a damaged tracker store


def test_a_damaged_mlflow_store_is_one_warning_naming_its_file_and_the_run_goes_on(tmp_path: Path, caplog):
    import logging
    import os

    from omegaconf import OmegaConf

    from kd_hydra.trackers.fanout import build_loggers
    from kd_hydra.trackers.mlflow import MLFLOW_DB_FILE

    store = tmp_path / "store" / MLFLOW_DB_FILE
    store.parent.mkdir()
    garbage = os.urandom(4096)
    store.write_bytes(garbage)
    node = {"_target_": "kd_hydra.trackers.mlflow.MLflowTracker", "store_dir": str(store.parent)}
    with caplog.at_level(logging.WARNING, logger="kd_hydra.trackers"):
        run = build_loggers(OmegaConf.create({"mlflow": node}), "job", "group", tmp_path / "run")
    assert run.names == ()  # left out; the run goes on
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    line = record.getMessage()
    assert line.startswith(f"logger.mlflow: could not start ({store}: not a usable MLflow store"), line
    assert "\n" not in line and record.exc_info is None
    assert store.read_bytes() == garbage  # the damaged file is left as it was
