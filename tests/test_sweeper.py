"""The kd sweeper: job dirs named by settings, resumed and grown grids, the teacher stage, preemption.

Most tests run the real sweeper, launchers and callbacks around a fake task (``FAKE_APP``: it
records its call and writes metrics.json, no training), so each sweep takes a few seconds; the last
tests run ``run.py -m`` on tiny generated data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import setup_globals
from hydra.types import HydraContext

import hydra_plugins.kd_hydra_sweeper.kd_sweeper as kd_sweeper_module
from conftest import REPO, TINY, Workspace, call_main, isolated_process_state, read_metrics, write_npz
from kd_hydra.config.structured import register_configs
from kd_hydra.records import schema
from kd_hydra.sweeps.jobs import (
    HASH_DIGITS,
    JobState,
    baseline_overrides,
    clear_job,
    job_dir_name,
    job_state,
    settings_hash,
    teacher_job_overrides,
    teacher_key,
    varying_keys,
)

NO_ANALYSIS = "hydra.callbacks.analysis.enabled=false"

# -- pure helpers -------------------------------------------------------------------------------


def test_job_dir_name_is_readable_order_independent_and_safe():
    job = ("dataset=synthetic", "loss.temperature=4", "loss.alpha=0.5")
    name = job_dir_name(job, {"loss.alpha", "loss.temperature"})
    assert name == f"loss.alpha=0.5,loss.temperature=4-{settings_hash(job)}"
    assert name == job_dir_name(tuple(reversed(job)), {"loss.alpha", "loss.temperature"})
    assert len(settings_hash(job)) == HASH_DIGITS and settings_hash(job) != settings_hash(job[:2])
    odd = job_dir_name(("dataset.path=/data/my file's.npz", "mode=student", "+x=" + "9" * 300), {"dataset.path", "x"})
    readable, digest = odd.rsplit("-", 1)
    assert "/" not in odd and " " not in odd and "'" not in odd and len(readable) <= 96
    assert readable.startswith("dataset.path=_data_my_file_s.npz,mode=student,x=99") and len(digest) == HASH_DIGITS
    assert job_dir_name(("trainer.epochs=2",), set()) == f"job-{settings_hash(('trainer.epochs=2',))}"


def test_varying_keys_are_those_that_differ():
    jobs = [("a=1", "b=1"), ("a=1", "b=2"), ("a=1", "b=2", "c=3")]
    assert varying_keys(jobs) == {"b", "c"}


def test_teacher_job_keeps_common_teacher_relevant_overrides():
    members = [
        ("dataset=digits", "trainer.seed=0", "loss.alpha=0.5", "mode=distill", "student=resnet20"),
        ("dataset=digits", "trainer.seed=1", "loss.alpha=0.5", "mode=distill", "student=resnet20"),
    ]
    assert teacher_job_overrides(members) == ("dataset=digits", "mode=teacher")


def test_a_baseline_and_a_teacher_job_drop_the_groups_their_mode_does_not_read():
    """Both come from kd_hydra.records.identity.MODE_GROUPS; the teacher job keeps trainer.* (where it runs)."""
    job = ("dataset=digits", "loss=dkd", "loss.beta=8", "teacher=resnet56", "teacher_training.epochs=3",
           "soft_label_cache.top_k=5", "student=resnet20", "optimizer.lr=0.1", "trainer.device=cpu",
           "mode=distill")  # fmt: skip
    assert baseline_overrides(job) == (
        "dataset=digits", "student=resnet20", "optimizer.lr=0.1", "trainer.device=cpu", "mode=student"
    )  # fmt: skip
    assert teacher_job_overrides([job]) == (
        "dataset=digits", "teacher=resnet56", "teacher_training.epochs=3", "trainer.device=cpu", "mode=teacher"
    )  # fmt: skip


def test_job_state_and_clear(tmp_path: Path):
    run_dir = tmp_path / "job"
    assert job_state(run_dir) is JobState.new
    (run_dir / schema.HYDRA_DIR).mkdir(parents=True)
    assert job_state(run_dir) is JobState.interrupted
    for status, state in (("completed", JobState.completed), ("failed", JobState.failed)):
        (run_dir / schema.METRICS_FILE).write_text(json.dumps({"status": status}))
        assert job_state(run_dir) is state
    (run_dir / schema.METRICS_FILE).write_text("[1]")
    assert job_state(run_dir) is JobState.interrupted
    for name in (schema.METRICS_FILE, schema.TRAIN_STATE_FILE, schema.HISTORY_FILE, "model.pt"):
        (run_dir / name).write_text("x")
    clear_job(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [schema.HYDRA_DIR, "model.pt"]


# -- planning, in process with Hydra's compose ---------------------------------------------------


@pytest.fixture
def sweeper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A KDSweeper set up as Hydra would, on the repository's configs with TINY settings."""
    monkeypatch.setenv("KD_HYDRA_CACHE_DIR", str(tmp_path / "cache"))
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose("config", overrides=list(TINY), return_hydra_config=True)
        setup_globals()
        kd = kd_sweeper_module.KDSweeper()  # looked up now: Hydra's plugin scan re-executes the module
        kd.config = config
        kd.hydra_context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
        yield kd
    GlobalHydra.instance().clear()


def plan(sweeper: Any, *arguments: str):
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    return sweeper.plan(parser.parse_overrides([*TINY, *arguments]))


def test_seed_sweep_needs_one_teacher_when_the_teacher_seed_is_fixed(sweeper: Any):
    first, second = plan(sweeper, "trainer.seed=0,1,2", "loss.alpha=0.5,0.9", "teacher_training.seed=0")
    teachers = [p for p in first if p.is_teacher]
    assert len(teachers) == 1 and len(first) == 1 + 3 and len(second) == 6
    assert all(p.teacher == teachers[0].overrides for p in second)
    assert "mode=teacher" in teachers[0].overrides and not any(o.startswith("loss.") for o in teachers[0].overrides)
    composed = [sweeper._compose(p.overrides) for p in (teachers[0], second[0])]
    assert teacher_key(composed[0]) == teacher_key(composed[1]), "the teacher job trains the teacher they need"
    names = [p.dir_name for p in first + second]
    assert len(set(names)) == len(names) == 10
    assert {n.rsplit("-", 1)[0] for n in names if n.startswith("mode=student")} == {
        f"mode=student,trainer.seed={s}" for s in range(3)
    }


def test_seed_following_teachers_are_one_per_seed(sweeper: Any):
    first, second = plan(sweeper, "trainer.seed=0,1", "loss.alpha=0.5,0.9", "teacher_training.seed=${trainer.seed}")
    teachers = [p for p in first if p.is_teacher]
    assert len(teachers) == 2 and len({p.teacher for p in second}) == 2
    for job in second:
        seed = next(o for o in job.overrides if o.startswith("trainer.seed="))
        assert seed in job.teacher, "each distill job waits for the teacher of its own seed"


def test_no_teacher_stage_for_external_checkpoints_or_student_grids(sweeper: Any, tmp_path: Path):
    from kd_hydra.models import build_model
    from kd_hydra.models.checkpoints import ArchSignature, save_checkpoint

    arch = ArchSignature(name="deep_cnn", source="zoo", num_classes=10, in_channels=3, image_size=16)
    save_checkpoint(tmp_path / "teacher.pt", build_model("deep_cnn", 10, 3, 16), arch)  # planned: it must load
    first, _ = plan(sweeper, "loss.alpha=0.5,0.9", f"teacher.checkpoint={tmp_path / 'teacher.pt'}")
    assert not any(p.is_teacher for p in first) and len(first) == 1  # the baseline only
    first, second = plan(sweeper, "mode=student", "trainer.seed=0,1")
    assert first == [] and len(second) == 2


def test_jobs_whose_method_cannot_pair_the_networks_are_refused_before_any_work(sweeper: Any, capsys: Any):
    first, second = plan(sweeper, "loss=fitnet", "loss.hint_point=stage2,bogus")
    err = capsys.readouterr().err
    refused = [line for line in err.splitlines() if line.endswith("it is not started")]
    assert len(refused) == 1 and "loss.hint_point=bogus" in refused[0] and "loss.hint_point: must be" in refused[0]
    names = [p.dir_name for p in second]
    assert not any("bogus" in name for name in names) and sweeper.refused and "bogus" in sweeper.refused[0]


def test_teacher_stage_can_be_switched_off(sweeper: Any):
    sweeper.teacher_stage = False
    first, _ = plan(sweeper, "loss.alpha=0.5,0.9")
    assert not any(p.is_teacher for p in first)


# -- whole sweeps around a fake task -------------------------------------------------------------

FAKE_APP = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import hydra
from hydra.core.hydra_config import HydraConfig
from kd_hydra.config.structured import register_configs
from kd_hydra.records.run_directory import RunDirectory
from kd_hydra.records.ledger import record_outcome

register_configs()


@hydra.main(version_base="1.3", config_path={conf!r}, config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    RunDirectory(out).write_settings(cfg, HydraConfig.get(), list(HydraConfig.get().overrides.task))  # as app.run
    with open(os.environ["FAKE_CALLS"], "a") as calls:
        calls.write(f"{{cfg.mode.value}} {{out.name}}\\n")
    if os.environ.get("FAKE_PREEMPT"):  # first attempt: wait to be preempted; the requeued one completes
        attempts = out / "attempts.txt"
        first = not attempts.exists()
        with open(attempts, "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")
        if first:
            Path(os.environ["FAKE_PREEMPT"]).write_text(str(os.getpid()))
            time.sleep(60)
    failed = cfg.trainer.seed == 13 or (cfg.mode.value == "teacher" and os.environ.get("FAKE_FAIL_TEACHER"))
    status = "failed" if failed else "completed"
    (out / "metrics.json").write_text(json.dumps({{"status": status, "reason": "fake failure" if failed else None}}))
    record_outcome(out, status, "fake failure" if failed else None)
    if failed:
        raise RuntimeError("fake failure")


if __name__ == "__main__":
    main()
"""


class FakeSweeps:
    """``FAKE_APP -m`` in a workspace: every call of the task is recorded as ``(mode, dir name)``.

    ``run`` runs the app's ``main`` in this process, as ``python fake_app.py`` would (see ``conftest.call_main``).
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.app = workspace.root / "fake_app.py"
        self.app.write_text(FAKE_APP.format(repo=str(REPO), conf=str(REPO / "conf")))
        self.calls_file = workspace.root / "calls.txt"
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # submitit's workers
        self.env = {**workspace.env, "FAKE_CALLS": str(self.calls_file), "PYTHONPATH": pythonpath}
        self.namespace: dict[str, Any] = {"__name__": "fake_app"}  # not __main__: defines main, does not call it
        exec(compile(self.app.read_text(), str(self.app), "exec"), self.namespace)

    def main(self, args: list[str]) -> None:
        sys.argv = [str(self.app), *args]
        self.namespace["main"]()

    def run(self, name: str, *args: str, expect: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
        self.calls_file.write_text("")
        argv = ["-m", *TINY, *args, NO_ANALYSIS, f"hydra.sweep.dir={self.workspace.root / 'sweeps' / name}"]
        with isolated_process_state({**self.env, **(env or {})}, self.workspace.root):
            code, stdout, stderr = call_main(argv, self.main)
        assert code == expect, f"exit {code}\n{stdout[-3000:]}\n{stderr[-3000:]}"
        return subprocess.CompletedProcess([str(self.app), *argv], code, stdout, stderr)

    def calls(self) -> list[tuple[str, str]]:
        return [tuple(line.split(" ", 1)) for line in self.calls_file.read_text().splitlines()]


@pytest.fixture
def fake(workspace: Workspace) -> FakeSweeps:
    return FakeSweeps(workspace)


def test_rerun_skips_completed_jobs_and_a_grown_grid_runs_only_new_settings(fake: FakeSweeps):
    sweep_dir = fake.workspace.root / "sweeps" / "grid"
    fake.run("grid", "loss.temperature=1,4", "loss.alpha=0.5")
    first = fake.calls()
    assert [mode for mode, _ in first] == ["teacher", "student", "distill", "distill"], "teacher stage first"
    names = {name for _, name in first}
    assert {n.rsplit("-", 1)[0] for n in names} == {
        "mode=teacher",
        "mode=student",
        "loss.temperature=1",
        "loss.temperature=4",
    }
    mtimes = {n: (sweep_dir / n / "metrics.json").stat().st_mtime_ns for n in names}

    again = fake.run("grid", "loss.temperature=1,4", "loss.alpha=0.5")
    assert fake.calls() == [] and "skipping 4 completed jobs" in again.stdout + again.stderr

    fake.run("grid", "loss.temperature=1,4,8", "loss.alpha=0.5")
    assert fake.calls() == [("distill", next(n for n in os.listdir(sweep_dir) if n.startswith("loss.temperature=8")))]
    assert {n: (sweep_dir / n / "metrics.json").stat().st_mtime_ns for n in names} == mtimes

    # a new swept key: the old settings keep their directories (found by their hash)
    fake.run("grid", "loss.temperature=1,4,8", "loss.alpha=0.5,0.9")
    new = fake.calls()
    assert len(new) == 3 and all("loss.alpha=0.9" in name for _, name in new)
    job_dirs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    assert len(job_dirs) == 2 + 3 + 3, "each setting once: teacher, baseline, 6 distill jobs"


def test_interrupted_job_runs_again_in_its_directory(fake: FakeSweeps):
    sweep_dir = fake.workspace.root / "sweeps" / "grid"
    fake.run("grid", "loss.temperature=1,4", "loss.alpha=0.5")
    interrupted = next(p for p in sweep_dir.iterdir() if p.name.startswith("loss.temperature=4"))
    (interrupted / "metrics.json").unlink()
    (interrupted / schema.TRAIN_STATE_FILE).write_text("epoch 1 state")
    fake.run("grid", "loss.temperature=1,4", "loss.alpha=0.5")
    assert fake.calls() == [("distill", interrupted.name)]
    assert (interrupted / schema.TRAIN_STATE_FILE).read_text() == "epoch 1 state", "kept for the job's own resume"


def test_rerun_switch(fake: FakeSweeps):
    sweep_dir = fake.workspace.root / "sweeps" / "grid"
    args = ("mode=student", "trainer.seed=1,13")
    fake.run("grid", *args, expect=1)
    failed_dir = next(p for p in sweep_dir.iterdir() if "trainer.seed=13" in p.name)
    (failed_dir / schema.TRAIN_STATE_FILE).write_text("old state")

    process = fake.run("grid", *args, expect=1)
    assert fake.calls() == [], "rerun=none skips failed jobs too"
    assert f"skipping failed job {failed_dir.name}" in process.stdout + process.stderr
    assert "1 of 2 jobs did not complete" in process.stderr, "and the end-of-sweep report lists them"

    fake.run("grid", *args, "hydra.sweeper.rerun=failed", expect=1)
    assert fake.calls() == [("student", failed_dir.name)]
    assert not (failed_dir / schema.TRAIN_STATE_FILE).exists(), "a failed job reruns from scratch"

    fake.run("grid", *args, "hydra.sweeper.rerun=all", expect=1)
    assert sorted(name for _, name in fake.calls()) == sorted(
        p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    process = fake.run("grid", *args, "hydra.sweeper.rerun=sometimes", expect=2)
    assert process.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.rerun: must be one of none")


def test_failed_teacher_stops_its_distill_jobs_once(fake: FakeSweeps):
    process = fake.run("grid", "loss.temperature=1,4", "loss.alpha=0.5", expect=1, env={"FAKE_FAIL_TEACHER": "1"})
    assert sorted(mode for mode, _ in fake.calls()) == ["student", "teacher"]
    lines = [line for line in process.stderr.splitlines() if "its 2 distill job(s) were not started" in line]
    assert len(lines) == 1 and lines[0].startswith("error: teacher job mode=teacher-")
    last = process.stderr.strip().splitlines()[-1]
    assert "1 of 4 jobs did not complete and 2 never started" in last, "the last line counts never-started jobs"


def test_a_damaged_job_directory_still_fails_the_sweep(fake: FakeSweeps):
    """A failed job whose .hydra/overrides.yaml is gone: the status callback cannot fail, the exit status is 1."""
    sweep_dir = fake.workspace.root / "sweeps" / "grid"
    fake.run("grid", "mode=student", "trainer.seed=1,13", expect=1)
    failed_dir = next(p for p in sweep_dir.iterdir() if "trainer.seed=13" in p.name)
    (failed_dir / schema.HYDRA_DIR / schema.OVERRIDES_FILE).unlink()
    process = fake.run("grid", "mode=student", "trainer.seed=1,13", expect=1)
    assert process.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs did not complete")


def test_preempted_job_is_requeued_into_the_same_directory(fake: FakeSweeps):
    """submitit's local executor: SIGUSR2 (the scheduler's preemption/time-limit signal) requeues the job."""
    pid_file = fake.workspace.root / "job.pid"
    command = [
        sys.executable,
        str(fake.app),
        "-m",
        *TINY,
        "mode=student",
        "hydra/launcher=local_gpu",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        NO_ANALYSIS,
        f"hydra.sweep.dir={fake.workspace.root / 'sweeps' / 'preempt'}",
    ]
    sweep = subprocess.Popen(
        command,
        cwd=fake.workspace.root,
        env={**fake.env, "FAKE_PREEMPT": str(pid_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.1)
        assert pid_file.exists(), "the job never started"
        time.sleep(0.5)  # let submitit's signal handler be in place (set before the task runs)
        os.kill(int(pid_file.read_text()), signal.SIGUSR2)
        stdout, stderr = sweep.communicate(timeout=90)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, stderr[-3000:]
    (job_dir,) = [p for p in (fake.workspace.root / "sweeps" / "preempt").iterdir() if (p / ".hydra").is_dir()]
    attempts = (job_dir / "attempts.txt").read_text().split()
    assert len(attempts) == 2 and attempts[0] != attempts[1], "requeued as a new process into the same directory"
    assert read_metrics(job_dir)["status"] == "completed"
    logs = "".join(p.read_text() for p in (fake.workspace.root / "sweeps" / "preempt" / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs


# -- real sweeps ---------------------------------------------------------------------------------


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def test_real_sweep_resumes_and_trains_one_teacher_for_a_seed_grid(workspace: Workspace):
    base = (*TINY, "trainer.epochs=1", "teacher_training.seed=0", "loss.alpha=0.5")
    sweep_dir, _ = workspace.sweep("grid", *base, "trainer.seed=0,1", "loss.temperature=4")
    before = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in job_dirs(sweep_dir)}
    assert len(before) == 1 + 2 + 2, "one teacher for both seeds, two baselines, two distill jobs"
    _, process = workspace.sweep("grid", *base, "trainer.seed=0,1", "loss.temperature=1,4")
    metrics = {p.name: read_metrics(p) for p in job_dirs(sweep_dir)}
    assert "skipping 5 completed jobs" in process.stdout + process.stderr
    assert {n: (sweep_dir / n / "metrics.json").stat().st_mtime_ns for n in before} == before
    assert len(metrics) == 7 and all(m["status"] == "completed" for m in metrics.values())
    assert [m["mode"] for m in metrics.values()].count("teacher") == 1
    assert len([p for p in (workspace.root / "cache" / "teachers").iterdir() if p.is_dir()]) == 1
    distill = [m for m in metrics.values() if m["mode"] == "distill"]
    assert len(distill) == 4 and {m["teacher_source"] for m in distill} == {"store"}
    results = (sweep_dir / "results.csv").read_text().strip().splitlines()
    assert len(results) == 1 + 7, "results.csv: one row per setting"


def test_sweep_with_a_bad_value_starts_no_job(workspace: Workspace):
    sweep_dir, process = workspace.sweep("bad", *TINY, "loss.temperature=2,-1", expect=2)
    assert "loss.temperature" in process.stderr and "no job was started" in process.stderr
    assert not sweep_dir.exists() or not any(p.is_dir() for p in sweep_dir.iterdir())


def test_failed_job_in_a_sweep_is_reported_and_the_others_run(workspace: Workspace):
    # a learning rate that diverges fails its job while it trains (nothing before training can tell)
    sweep_dir, process = workspace.sweep("mixed", *TINY, "mode=student", "optimizer.lr=1e-3,1e30", expect=1)
    statuses = sorted(read_metrics(job)["status"] for job in job_dirs(sweep_dir))
    assert statuses == ["completed", "failed"]
    assert "1 of 2 jobs did not complete" in process.stderr
    assert (sweep_dir / "results.csv").is_file(), "the analysis is written before the failure is reported"


def test_data_that_cannot_be_loaded_stops_the_sweep_at_its_plan_in_one_line(workspace: Workspace, tmp_path):
    good = write_npz(tmp_path / "good.npz")
    bad = write_npz(tmp_path / "broken.npz", y_test=None)
    base = [o for o in TINY if not o.startswith("dataset")]
    sweep_dir, process = workspace.sweep(
        "broken", *base, "dataset=arrays", f"dataset.path={good},{bad}", "loss.temperature=1,2,4", expect=2
    )
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.npz: missing key 'y_test'" in errors[0]
    assert errors[0].endswith("no job of the sweep was started")
    assert not sweep_dir.exists() or not job_dirs(sweep_dir), "no job starts (none retries the data)"
    assert "analysis" not in process.stderr


def test_parallel_launcher_runs_a_sweep_in_worker_processes(workspace: Workspace):
    # the one sweep started as a real `python run.py -m` (the others run the command line in this process)
    sweep_dir, _ = workspace.sweep(
        "parallel",
        *TINY,
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "loss.temperature=1,4",
        "trainer.epochs=1",
        subprocess=True,
    )
    metrics = [read_metrics(job) for job in job_dirs(sweep_dir)]
    assert len(metrics) == 4 and all(m["status"] == "completed" for m in metrics)  # teacher, baseline, 2 distill
    assert sum(m["teacher_source"] == "trained" for m in metrics) == 1
    multirun = (sweep_dir / "multirun.yaml").read_text()
    assert "joblib" in multirun
