"""The second fault probe (issue 16): each reproduction ends in one ``error:`` line (exit 2) or its documented
recovery, before any work and without changing anything completed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, Workspace

BASE = ["dataset=digits", "mode=student", "trainer.epochs=1", "trainer.num_threads=1", "trainer.device=cpu"]


def one_error_line(workspace: Workspace, *args: str) -> str:
    """Run ``args``; assert exit 2 with exactly one ``error:`` line on stderr and no trained model; return it."""
    run_dir = workspace.root / "runs" / "probe"
    process = workspace.run(*args, f"hydra.run.dir={run_dir}", expect=2)
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    assert not (run_dir / "model.pt").exists()
    return lines[0]


# ----------------------------------------------------------------------------- optimizer and scheduler


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.weight_decay=-1"], "optimizer.weight_decay"),
        (["optimizer=sgd", "optimizer.momentum=-0.5"], "optimizer.momentum"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas"),
        (["optimizer.betas=[-0.1,0.9]"], "optimizer.betas"),
        (["+optimizer.eps=0"], "optimizer.eps"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["scheduler=step", "scheduler.gamma=-1"], "scheduler.gamma"),
        (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma"),
        (["scheduler=step", "scheduler.milestones=[0.5,1.5]"], "scheduler.milestones"),
        (["scheduler=step", "scheduler.milestones=[0,0.5]"], "scheduler.milestones"),
        (["scheduler.min_lr=-0.1"], "scheduler.min_lr"),
        (["+optimizer.foo=1"], "optimizer"),
    ],
)
def test_optimizer_and_scheduler_arguments_are_checked_before_any_work(workspace, overrides, key):
    line = one_error_line(workspace, *BASE, *overrides)
    assert line.startswith(f"error: {key}: "), line


def test_teacher_training_optimizer_and_scheduler_are_checked(workspace):
    line = one_error_line(
        workspace,
        *TINY,
        "mode=distill",
        "teacher_training.optimizer={_target_:torch.optim.SGD,_partial_:true,lr:0.1,momentum:-1}",
    )
    assert line.startswith("error: teacher_training.optimizer.momentum: "), line
    line = one_error_line(
        workspace,
        *TINY,
        "mode=distill",
        "teacher_training.scheduler={_target_:kd_hydra.optim.step_schedule,_partial_:true,gamma:-1}",
    )
    assert line.startswith("error: teacher_training.scheduler.gamma: "), line


def test_python_api_raises_a_config_error_not_a_value_error(tmp_path: Path, monkeypatch):
    from kd_hydra.api import run_experiment
    from kd_hydra.errors import ConfigError

    monkeypatch.setenv("KD_HYDRA_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^optimizer\.weight_decay: must be"):
        run_experiment([*BASE, "optimizer.weight_decay=-1"], output_dir=tmp_path / "run")


def test_python_api_takes_a_string_as_one_override(tmp_path: Path, monkeypatch):
    from kd_hydra.api import run_experiment
    from kd_hydra.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset: unknown option 'nosuch'"):
        run_experiment("dataset=nosuch", output_dir=tmp_path / "run")


# ----------------------------------------------------------------------------- environment


@pytest.mark.parametrize("variable", ["KD_HYDRA_OUTPUT_DIR", "KD_HYDRA_CACHE_DIR", "KD_HYDRA_DATA_DIR"])
def test_an_empty_path_variable_counts_as_unset(tmp_path: Path, monkeypatch, variable):
    from kd_hydra.preflight import compose, hydra_session

    monkeypatch.setenv(variable, "")
    with hydra_session() as hydra:
        cfg = compose(hydra, [])
    default = {"KD_HYDRA_OUTPUT_DIR": "outputs", "KD_HYDRA_CACHE_DIR": "cache", "KD_HYDRA_DATA_DIR": "data"}
    key = {"KD_HYDRA_OUTPUT_DIR": "output_dir", "KD_HYDRA_CACHE_DIR": "cache_dir", "KD_HYDRA_DATA_DIR": "data_dir"}
    assert cfg.paths[key[variable]] == default[variable]
    if variable == "KD_HYDRA_OUTPUT_DIR":
        assert str(cfg.hydra.run.dir).startswith("outputs/")
    monkeypatch.setenv(variable, str(tmp_path))
    with hydra_session() as hydra:
        assert compose(hydra, []).paths[key[variable]] == str(tmp_path)


# ----------------------------------------------------------------------------- config files

#: 540 bytes that expand to 9**8 strings: the "billion laughs" alias bomb as an experiment.
ALIAS_BOMB = "# @package _global_\n" + "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")),
    ]
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# @package _global_\ntrainer:\n  epochs: [1, 2\n", "YAML syntax error: line 4"),
        (
            "# @package _global_\ntrainer: !!python/object:os.system {}\n",
            "line 2: tag 'tag:yaml.org,2002:python/object",
        ),
        (ALIAS_BOMB, "expands to more than 100000 values"),
    ],
    ids=["syntax", "python-tag", "alias-bomb"],
)
def test_a_bad_config_file_is_one_line_naming_it(workspace, text, expected):
    config_dir = workspace.root / "my_conf"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "experiment" / "mine.yaml").write_text(text)
    line = one_error_line(workspace, "--config-dir", str(config_dir), *BASE, "experiment=mine")
    assert line.startswith(f"error: {config_dir / 'experiment' / 'mine.yaml'}: "), line
    assert expected in line, line


def test_the_python_api_checks_config_files_too(tmp_path: Path):
    from kd_hydra.api import run_experiment
    from kd_hydra.errors import ConfigError

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(ALIAS_BOMB)
    with pytest.raises(ConfigError, match="mine.yaml: expands to more than"):
        run_experiment(["experiment=mine"], config_dir=tmp_path)


# ----------------------------------------------------------------------------- Optuna

OPTUNA = [*BASE, "hparams_search=kd_optuna"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("hydra.sweeper.n_trials=0", "error: hydra.sweeper.n_trials: must be an integer >= 1 (got 0)"),
        ("hydra.sweeper.n_trials=-1", "error: hydra.sweeper.n_trials: must be an integer >= 1 (got -1)"),
        ("loss.temperature=interval(8.0,1.0)", "error: loss.temperature: 'interval(8.0,1.0)': an interval needs"),
        ("optimizer.lr=tag(log,interval(0,1))", "error: optimizer.lr: 'tag(log,interval(0,1))': a log interval"),
        (
            "+hydra.sweeper.params.optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "give the search dimension as 'optimizer.lr=tag(log, interval(1e-4, 1e-2))'",
        ),
    ],
)
def test_optuna_settings_and_space_are_checked_before_any_trial(workspace, override, expected):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install '.[optuna]'")
    process = workspace.run(*OPTUNA, override, expect=2)
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], process.stderr
    assert not (workspace.root / "outputs").exists()


def test_optuna_space_in_a_config_file_is_checked(workspace):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install '.[optuna]'")
    config_dir = workspace.root / "my_conf"
    (config_dir / "hparams_search").mkdir(parents=True)
    (config_dir / "hparams_search" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - kd_optuna\nhydra:\n  sweeper:\n    params:\n"
        "      loss.alpha: interval(0.9, 0.1)\n"
    )
    process = workspace.run("--config-dir", str(config_dir), *BASE, "hparams_search=mine", expect=2)
    assert process.stderr.strip() == (
        "error: hydra.sweeper.params.loss.alpha: 'interval(0.9, 0.1)': an interval needs lower < upper bound "
        "(got 0.9, 0.1)"
    )


def test_optuna_learning_rate_dimension_as_documented_and_no_rerun_hint(workspace):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install '.[optuna]'")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = "optimizer.lr=tag(log, interval(1e-4, 1e-2))"
    assert f"'{documented}'" in readme
    sweep_dir, _ = workspace.sweep("lr", *OPTUNA, "hydra.sweeper.n_trials=1", documented)
    from omegaconf import OmegaConf

    best = OmegaConf.load(sweep_dir / "optimization_results.yaml").best_params
    assert 1e-4 <= best["optimizer.lr"] <= 1e-2
    _, failed = workspace.sweep("fail", *OPTUNA, "hydra.sweeper.n_trials=1", "trainer.batch_size=0", expect=1)
    assert "1 of 1 jobs did not complete" in failed.stderr
    assert "rerun" not in failed.stderr
