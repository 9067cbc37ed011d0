"""The command line's one-line errors (exit 2, nothing run) and ``--config-dir`` from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY
from kd_hydra.config.compose import check_command_line, representative_jobs, unwritable_reason
from kd_hydra.errors import ConfigError

TEACHERS = "deep_cnn, light_cnn"  # the start of the sorted option list


def error_of(*overrides: str, multirun: bool = False) -> str:
    with pytest.raises(ConfigError) as caught:
        check_command_line(list(overrides), multirun=multirun)
    return f"error: {caught.value}"


def test_unknown_group_option_names_the_group_and_its_options():
    assert error_of("teacher=nope").startswith(f"error: teacher: unknown option 'nope'; choose one of: {TEACHERS}")
    line = error_of("dataset=nope")
    assert (
        line == "error: dataset: unknown option 'nope'; choose one of: arrays, cifar10, cifar100, digits, folder, "
        "imagenet, synthetic, tiny_imagenet"
    )


def test_every_sweep_value_is_checked():
    line = error_of("teacher=deep_cnn,nope", "loss.temperature=1,2", multirun=True)
    assert line.startswith("error: teacher: unknown option 'nope'")
    assert representative_jobs(["a=1", "b=x,y", "c=range(0,3)"]) == [
        ["a=1", "b=x", "c=0"],
        ["a=1", "b=y", "c=0"],
        ["a=1", "b=x", "c=1"],
        ["a=1", "b=x", "c=2"],
    ]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.foo=1", "error: trainer.foo: unknown key (to append to your config use +trainer.foo=1)"),
        ("loss.temperature=[1,", "error: loss.temperature: cannot parse 'loss.temperature=[1,': "),
        ("trainer.epochs=many", "error: trainer.epochs: Value 'many' of type 'str' could not be converted to Integer"),
        ("loss.temperature=1,2", "error: loss.temperature: '1,2' is a sweep: add -m (--multirun)"),
        ("optimized_metric=loss", "error: optimized_metric: unknown metric 'loss'; choose one of: val_acc,"),
    ],
)
def test_bad_overrides_are_one_line(override, expected):
    line = error_of(override)
    assert line.startswith(expected) and "\n" not in line


def test_unwritable_output_and_cache_dirs(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert unwritable_reason(blocker / "out") == f"{blocker} is not a directory"
    assert unwritable_reason(tmp_path / "new" / "deeper") is None
    line = error_of(f"paths.output_dir={blocker}/out")
    assert line.startswith(f"error: paths.output_dir: {blocker}/out/runs/")
    assert f"({blocker} is not a directory)" in line
    assert error_of(f"hydra.run.dir={blocker}/x").startswith(f"error: hydra.run.dir: {blocker}/x is not writable")
    assert error_of(f"hydra.sweep.dir={blocker}/x", multirun=True).startswith("error: hydra.sweep.dir:")
    assert error_of(f"paths.cache_dir={blocker}/c").startswith(f"error: paths.cache_dir: {blocker}/c is not writable")
    check_command_line([f"paths.cache_dir={blocker}/c", "mode=student", f"paths.output_dir={tmp_path}"], False)


def kd_hydra_command(args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "KD_HYDRA_OUTPUT_DIR": str(tmp_path / "outputs"),
        "KD_HYDRA_CACHE_DIR": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "kd_hydra.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_command_line_exit_status_2_and_user_config_dir_from_another_cwd(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bad = kd_hydra_command(["teacher=nope"], elsewhere, tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: teacher: unknown option 'nope'; choose one of: ")
    assert not (tmp_path / "outputs").exists(), "nothing runs after a bad command line"

    user = tmp_path / "userconf"
    (user / "experiment").mkdir(parents=True)
    (user / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nmode: student\ntrainer:\n  epochs: 1\n  save_checkpoint: false\n"
    )
    run_dir = tmp_path / "run"
    ok = kd_hydra_command(
        ["--config-dir", str(user), "experiment=mine", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"],
        elsewhere,
        tmp_path,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "[kd-hydra] student light_cnn on synthetic" in ok.stdout
    assert (run_dir / "metrics.json").is_file() and (run_dir / "run.log").is_file()
    assert "experiment=mine" in (run_dir / ".hydra" / "overrides.yaml").read_text()
