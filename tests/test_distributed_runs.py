"""Jobs on two CPU workers (``trainer.devices=2``, gloo), end to end: the record, what is written and by whom,
torchrun and a sweep on its workers and its rerun, a worker killed by SIGKILL, another world size. Each test
starts worker processes (seconds each): they are few and small."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kd_hydra.records import schema
from kd_hydra.train.trainer import TRAIN_STATE_FORMAT
from tests.conftest import REPO, TINY, Workspace, read_metrics

TWO = [*TINY, "trainer.devices=2", "trainer.epochs=4", "trainer.progress=false"]
RUN_FILES = {".hydra", ".kd-hydra-claim.lock", "history.csv", "metrics.json", "model.pt", "run.log"}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """A distill job on two workers (its teacher trained by them, its soft labels filled by them)."""
    workspace = Workspace(tmp_path_factory.mktemp("two"))
    run_dir, _ = workspace.single("full", *TWO)
    return workspace, run_dir


def history(run_dir: Path) -> list[list[str]]:
    """history.csv without its timings."""
    lines = [line.split(",") for line in (run_dir / schema.HISTORY_FILE).read_text().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name != "seconds"]
    return [[row[i] for i in keep] for row in lines]


def same_weights(a: Path, b: Path) -> bool:
    first, second = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_two_worker_job_records_its_topology_and_the_leader_alone_writes(two_workers, tmp_path: Path):
    workspace, run_dir = two_workers
    record = read_metrics(run_dir)
    assert record["status"] == schema.STATUS_COMPLETED and record["soft_label_cache"] == "cold"
    assert record["topology"] == {"workers": 2, "nodes": 1, "backend": "gloo", "device": "cpu", "batchnorm_batch": 32}
    assert record["settings"]["trainer.devices"] == 2 and record["settings"]["trainer.batchnorm_batch"] == 32
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES  # as a 1-device run: no worker left a file
    for store in ("teachers", "soft_labels"):  # one entry each, the leader's
        assert len([p for p in (workspace.root / "cache" / store).iterdir() if p.is_dir()]) == 1
    assert sum(1 for line in (run_dir / "run.log").read_text().splitlines() if "student epoch" in line) == 4
    rerun = workspace.run(*TWO, f"hydra.run.dir={run_dir}")
    assert "already completed" in rerun.stdout


def test_torchrun_runs_the_same_job_and_a_sweep_on_the_same_workers(two_workers, tmp_path: Path):
    """A sweep under torchrun: its jobs (the teacher's, the baselines, two distill jobs) each on the 2 workers; the
    seed-0 job equals the trainer.devices=2 job; its rerun skips every job."""
    workspace, run_dir = two_workers
    other = Workspace(tmp_path)
    other.copy_from(workspace, "cache")
    args = [a for a in TWO if not a.startswith("trainer.devices")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    sweep = tmp_path / "torchrun"
    command = [*torchrun, str(REPO / "run.py"), "-m", *args, "trainer.seed=0,1", f"hydra.sweep.dir={sweep}"]
    process = subprocess.run(command, cwd=tmp_path, env=other.env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    records = {p.parent: read_metrics(p.parent) for p in sweep.glob("*/metrics.json")}
    jobs = {r["settings"]["trainer.seed"]: path for path, r in records.items() if r["mode"] == "distill"}
    assert sorted(jobs) == [0, 1]  # the workers ran every job of the sweep (teacher, baselines), one after the other
    assert all(r["status"] == schema.STATUS_COMPLETED for r in records.values())
    ours, theirs = read_metrics(run_dir), read_metrics(jobs[0])
    assert theirs["topology"] == ours["topology"] and theirs["settings"] == ours["settings"]
    assert theirs["config_digest"] == ours["config_digest"] and theirs["soft_label_cache"] == "warm"
    assert history(jobs[0]) == history(run_dir)
    assert same_weights(jobs[0] / "model.pt", run_dir / "model.pt")
    rerun = subprocess.run(command, cwd=tmp_path, env=other.env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and f"skipping {len(records)} completed jobs" in rerun.stdout + rerun.stderr


def worker_pids(pid: int) -> list[int]:
    """The worker processes the launcher started below process ``pid``."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                pass
            pending.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes in /proc (Linux)")
def test_a_worker_killed_mid_run_is_restarted_and_the_run_ends_bit_identical(two_workers, tmp_path: Path):
    workspace, run_dir = two_workers
    other = Workspace(tmp_path)
    other.copy_from(workspace, "cache")
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *TWO, f"hydra.run.dir={killed}"], cwd=tmp_path,
                               env=other.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, victim = time.monotonic() + 240, None
    while time.monotonic() < deadline and process.poll() is None and victim is None:
        state = killed / schema.TRAIN_STATE_FILE
        if state.is_file() and torch.load(state, weights_only=True)["epoch"] >= 1:
            pids = worker_pids(process.pid)
            if pids:
                victim = max(pids)
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.05)
    assert process.wait(timeout=300) == 0
    assert victim is not None, "the run finished before a worker could be killed"
    assert "resuming from" in (killed / "run.log").read_text()
    assert history(killed) == history(run_dir)
    assert same_weights(killed / "model.pt", run_dir / "model.pt")


def test_another_world_size_does_not_resume_a_checkpoint(two_workers, tmp_path: Path):
    """A state saved by two workers is refused by one (the samples per BatchNorm batch differ), in one line."""
    workspace, run_dir = two_workers
    target = tmp_path / "run"
    shutil.copytree(run_dir / ".hydra", target / ".hydra")  # a 2-worker run killed before its record
    record = read_metrics(run_dir)
    identity = {key: record[key] for key in ("settings", "data_digest", "teacher_id")}
    torch.save({"format": TRAIN_STATE_FORMAT, "identity": identity, "stage": 0, "epoch": 1},
               target / schema.TRAIN_STATE_FILE)  # fmt: skip
    other = Workspace(tmp_path)
    other.copy_from(workspace, "cache")
    one_worker = [a for a in TWO if not a.startswith("trainer.devices")]
    process = other.run(*one_worker, f"hydra.run.dir={target}", expect=2)
    assert "trainer.batchnorm_batch: 32 -> None" in process.stderr and len(process.stderr.splitlines()) == 1
