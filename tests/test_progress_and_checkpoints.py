"""A researcher's day (issue 18): progress on terminals and notebooks, plain lines in logs, checkpoints worth
keeping, and ``mode=eval`` of any checkpoint."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, Workspace
from kd_hydra.records import schema

STUDENT = [*TINY, "mode=student"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_in_terminal(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    """``python run.py ARGS`` with stdout and stderr on a pseudo-terminal; everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal has a size
    process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env,
                               stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)  # fmt: skip
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(master)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_sweep_shows_bars_and_job_k_of_n_with_an_eta(workspace: Workspace):
    sweep_dir = workspace.root / "sweeps" / "terminal"
    output = run_in_terminal(
        ["-m", *STUDENT, "trainer.seed=0,1", f"hydra.sweep.dir={sweep_dir}", "hydra.callbacks.analysis.enabled=false"],
        workspace.root,
        workspace.env,
    )
    assert "job 1 of 2 (ETA unknown until a student job ends)" in output
    assert "job 2 of 2 (ETA " in output and "s)" in output
    assert "student: 100%" in output and "\r" in output, "a tqdm bar over the run's epochs"


def test_a_non_terminal_run_prints_plain_lines(workspace: Workspace):
    run_dir, process = workspace.single("plain", *STUDENT, "dataset.val_fraction=0.25")
    assert "\r" not in process.stderr + process.stdout, "no progress bar outside a terminal"
    log = (run_dir / "run.log").read_text()
    epoch_lines = [line for line in log.splitlines() if "student epoch" in line]
    assert len(epoch_lines) == 2
    assert all("(ce " in line and "val acc" in line and "test acc" in line for line in epoch_lines)


def test_a_notebook_call_shows_a_progress_bar_and_can_be_silenced(tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    overrides = [*STUDENT, "trainer.epochs=1"]
    cells = [
        f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom kd_hydra import run_experiment",
        f"record = run_experiment({overrides!r}, output_dir={str(tmp_path / 'loud')!r})",
        f"quiet = run_experiment({overrides!r}, output_dir={str(tmp_path / 'quiet')!r}, progress=False)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env_dirs = {"KD_HYDRA_CACHE_DIR": str(tmp_path / "cache"), "KD_HYDRA_DATA_DIR": str(tmp_path / "data")}
    saved = {k: os.environ.get(k) for k in env_dirs}
    os.environ.update(env_dirs)
    try:
        nbclient.NotebookClient(
            notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)

    def shown(cell: int) -> str:
        outputs = notebook.cells[cell].outputs
        return "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in outputs)

    assert "student" in shown(1) and "100%" in shown(1), "a progress bar over the run's epochs"
    assert "[kd-hydra] student light_cnn on synthetic" in shown(1)
    assert shown(2) == "", "progress=False prints nothing"
    assert json.loads((tmp_path / "quiet" / schema.METRICS_FILE).read_text())["status"] == "completed"


def test_best_and_periodic_checkpoints_and_eval_of_the_best(workspace: Workspace):
    args = [*STUDENT, "trainer.epochs=3", "dataset.val_fraction=0.25", "trainer.save_best=true",
            "trainer.save_every=2"]  # fmt: skip
    run_dir, _ = workspace.single("kept", *args)
    record = json.loads((run_dir / schema.METRICS_FILE).read_text())
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "epoch_0002.pt"]
    assert record["best_checkpoint_split"] == "val" and record["best_checkpoint_epoch"] == record["best_val_epoch"]
    history = read_csv(run_dir / schema.HISTORY_FILE)
    best_row = history[record["best_val_epoch"] - 1]

    eval_dir, process = workspace.single(
        "eval-best", "mode=eval", *TINY[:3], "dataset.val_fraction=0.25", "teacher=light_cnn",
        f"teacher.checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "trainer.device=cpu",
    )  # fmt: skip
    evaluation = json.loads((eval_dir / schema.METRICS_FILE).read_text())
    assert evaluation["mode"] == "eval" and evaluation["status"] == "completed"
    assert evaluation["final_test_acc"] == pytest.approx(float(best_row["test_acc"]), abs=1e-3), "the best epoch's"
    assert process.stdout.strip().splitlines()[-1].startswith("[kd-hydra] eval light_cnn on synthetic: test acc")


def test_eval_writes_per_class_accuracy_and_the_confusion_matrix(workspace: Workspace, tmp_path: Path):
    import torch

    run_dir, _ = workspace.single("model", *STUDENT, "trainer.epochs=1")
    record = json.loads((run_dir / schema.METRICS_FILE).read_text())
    published = tmp_path / "published.pth"  # a published layout: a bare {"model": state_dict}
    torch.save({"model": torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]}, published)
    for name, checkpoint in (("eval-kd", run_dir / "model.pt"), ("eval-published", published)):
        eval_dir, _ = workspace.single(name, "mode=eval", *TINY[:3], "teacher=light_cnn",
                                       f"teacher.checkpoint={checkpoint}", "trainer.device=cpu")  # fmt: skip
        evaluation = json.loads((eval_dir / schema.METRICS_FILE).read_text())
        assert evaluation["final_test_acc"] == pytest.approx(record["final_test_acc"], abs=1e-3)
        per_class = read_csv(eval_dir / schema.PER_CLASS_FILE)
        assert [row["class"] for row in per_class] == [str(i) for i in range(10)]
        assert sum(int(row["images"]) for row in per_class) == 128
        matrix = read_csv(eval_dir / schema.CONFUSION_FILE)
        correct = sum(int(row[row["true\\predicted"]]) for row in matrix)
        assert correct == sum(int(row["correct"]) for row in per_class)
        assert 100.0 * correct / 128 == pytest.approx(evaluation["final_test_acc"])


def test_eval_needs_a_checkpoint(workspace: Workspace):
    _, process = workspace.single("no-checkpoint", "mode=eval", *TINY[:3], expect=2)
    assert process.stderr.strip().splitlines()[-1].startswith("error: teacher.checkpoint: mode=eval evaluates")


def test_a_resumed_run_keeps_choosing_the_same_best_checkpoint(workspace: Workspace, monkeypatch: pytest.MonkeyPatch):
    import torch

    from kd_hydra.train.trainer import Snapshots

    args = [*STUDENT, "trainer.epochs=3", "dataset.val_fraction=0.25", "trainer.save_best=true", "trainer.save_every=1"]
    original = Snapshots.after_epoch

    def killed_after_epoch_2_snapshots(self, epoch, track):  # before epoch 2's training state is saved
        original(self, epoch, track)
        if epoch == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Snapshots, "after_epoch", killed_after_epoch_2_snapshots)
        with pytest.raises(KeyboardInterrupt):
            workspace.single("resumed", *args)
    resumed_dir, _ = workspace.single("resumed", *args)
    full_dir, _ = workspace.single("full", *args)
    resumed = json.loads((resumed_dir / schema.METRICS_FILE).read_text())
    full = json.loads((full_dir / schema.METRICS_FILE).read_text())
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["best_checkpoint_epoch"] == full["best_checkpoint_epoch"]
    for name in ("best.pt", "epoch_0003.pt"):
        ours = torch.load(resumed_dir / "checkpoints" / name, weights_only=True)["state_dict"]
        theirs = torch.load(full_dir / "checkpoints" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
