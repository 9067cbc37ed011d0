"""The third fault probe (issue 25), mechanisms 1 to 4: cache entries checked against their key, one writer per run
directory, waits and write failures that say so, and records that never describe what is not there."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from test_store_seams import (
    BATCHES,
    CLASSES,
    LOGIT_METHOD,
    RUNTIME,
    cache_settings,
    epoch_logits,
    generated_pipeline,
    tiny_teacher,
)
from torch import nn

from conftest import read_metrics
from kd_hydra.errors import KDHydraError
from kd_hydra.models.checkpoints import ArchSignature
from kd_hydra.records import schema
from kd_hydra.records.claims import exclusive
from kd_hydra.records.files import WriteError, write_json
from kd_hydra.records.ledger import ledger_dir
from kd_hydra.records.run_directory import CLAIM_NAME, RunDirectory
from kd_hydra.stores.logit_cache import decode_logits, encode_logits
from kd_hydra.stores.sharded_logits import ShardedTeacher
from kd_hydra.stores.teacher_outputs import LiveTeacher, teacher_outputs
from kd_hydra.stores.teachers import TeacherStore
from kd_hydra.sweeps.jobs import run_dirs_of

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

TINY_ARCH = ArchSignature(name="tiny", source="zoo", num_classes=CLASSES, in_channels=3, image_size=6)


# ------------------------------------------------------------------ 1. a cache entry is checked against its key


def test_a_teacher_entry_placed_under_another_recipes_key_is_never_served(tmp_path: Path) -> None:
    store = TeacherStore(tmp_path)
    recipe_a, recipe_b = {"training": {"lr": 0.1}}, {"training": {"lr": 0.5}}
    trained: list[str] = []

    def train_as(name: str, seed: int):
        def train(model: nn.Module, entry_dir: Path) -> dict[str, float]:
            model.load_state_dict(tiny_teacher(seed).state_dict())
            trained.append(name)
            return {"final_test_acc": 50.0 + seed}

        return train

    store.get_or_train(recipe_a, "t", tiny_teacher(), TINY_ARCH, train_as("a", 1))
    entry_a, entry_b = store.entry(recipe_a, "t").path, store.entry(recipe_b, "t").path
    shutil.copytree(entry_a, entry_b)  # recipe a's teacher, under recipe b's key, its seal intact
    teacher = store.get_or_train(recipe_b, "t", tiny_teacher(), TINY_ARCH, train_as("b", 2))
    assert trained == ["a", "b"] and teacher.source == "trained" and teacher.test_acc == 52.0
    for name, tensor in teacher.model.state_dict().items():
        assert torch.equal(tensor, tiny_teacher(2).state_dict()[name])
    again = store.get_or_train(recipe_b, "t", tiny_teacher(), TINY_ARCH, train_as("b", 3))
    assert again.source == "store" and trained == ["a", "b"]


def outputs_for(root: Path, teacher: nn.Module, teacher_sha256: str, top_k: int | None = None):
    pipeline = generated_pipeline()
    settings = cache_settings(root, top_k=top_k)
    return teacher_outputs(teacher, teacher_sha256, LOGIT_METHOD, pipeline, BATCHES, CLASSES, settings, RUNTIME)


def stored_as(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """``logits`` as the soft-label cache keeps them (float16, top-k)."""
    return decode_logits(encode_logits(logits, torch.float16, top_k), CLASSES)


def second_epoch_file(entry: Path) -> Path:
    """One file of epoch 1 in a soft-label entry (the dense ``.pt`` or the sharded format's first shard)."""
    return next(path for path in sorted(entry.iterdir()) if path.name.startswith("epoch_0001"))


@pytest.mark.parametrize(
    ("top_k", "damaged"),
    [(None, False), (None, True), (2, True)],
    ids=["dense", "dense-one-file-damaged", "sharded-one-file-damaged"],
)
def test_a_soft_label_entry_of_teacher_a_under_teacher_bs_key_is_recomputed(
    tmp_path: Path, caplog, top_k: int | None, damaged: bool
) -> None:
    pipeline = generated_pipeline()
    cold_a = outputs_for(tmp_path, tiny_teacher(1), "sha-a", top_k)
    assert isinstance(cold_a.source, ShardedTeacher) is (top_k is not None)
    logits_a = epoch_logits(cold_a.source, pipeline, epoch=0)
    epoch_logits(cold_a.source, pipeline, epoch=1)
    entry_a = cold_a.source.entry.path
    entry_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b", top_k).source.entry.path
    shutil.copytree(entry_a, entry_b)  # a's logits under b's key, sealed
    if damaged:  # a file of another epoch no longer matches the seal: the entry is still not b's
        second_epoch_file(entry_b).write_bytes(b"damaged")
    served_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b", top_k)
    with caplog.at_level("WARNING"):
        logits_b = epoch_logits(served_b.source, pipeline, epoch=0)
    assert served_b.cache_status == "cold" and served_b.source.epochs_computed == 1
    assert f"cache entry {entry_b} does not hold what its key names" in caplog.text
    live_b = epoch_logits(LiveTeacher(tiny_teacher(2), RUNTIME), pipeline, epoch=0)
    torch.testing.assert_close(logits_b, stored_as(live_b, top_k), rtol=0, atol=0)
    assert not torch.equal(logits_a, logits_b)
    warm_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b", top_k)
    assert torch.equal(epoch_logits(warm_b.source, pipeline, epoch=0), logits_b) and warm_b.cache_status == "warm"


def test_a_soft_label_entry_replaced_during_a_run_is_not_served_at_the_next_epoch(tmp_path: Path) -> None:
    pipeline = generated_pipeline()
    cold_a = outputs_for(tmp_path, tiny_teacher(1), "sha-a", top_k=2)
    for epoch in (0, 1):
        epoch_logits(cold_a.source, pipeline, epoch)
    running_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b", top_k=2).source
    epoch_logits(running_b, pipeline, epoch=0)
    shutil.rmtree(running_b.entry.path)
    shutil.copytree(cold_a.source.entry.path, running_b.entry.path)  # a's epochs 0 and 1, sealed, under b's key
    logits = epoch_logits(running_b, pipeline, epoch=1)
    live_b = epoch_logits(LiveTeacher(tiny_teacher(2), RUNTIME), pipeline, epoch=1)
    torch.testing.assert_close(logits, stored_as(live_b, 2), rtol=0, atol=0)
    assert running_b.epochs_computed == 2 and running_b.epochs_read == 0


def test_a_tampered_soft_label_shard_is_recomputed_never_served(tmp_path: Path, caplog) -> None:
    pipeline = generated_pipeline()
    cold = outputs_for(tmp_path, tiny_teacher(1), "sha-a", top_k=2)
    logits = epoch_logits(cold.source, pipeline, epoch=0)
    shard = cold.source.entry.file(cold.source.epoch_store(0).names[0])
    tampered = bytearray(shard.read_bytes())
    tampered[:4] = bytes(4)  # the first sample's largest logit, its sealed size kept
    shard.write_bytes(bytes(tampered))
    again = outputs_for(tmp_path, tiny_teacher(1), "sha-a", top_k=2)
    with caplog.at_level("WARNING"):
        assert torch.equal(epoch_logits(again.source, pipeline, epoch=0), logits)
    assert again.cache_status == "cold" and f"soft-label shard {shard} changed since it was sealed" in caplog.text


# ------------------------------------------------------------------ 2. one writer per run directory and per sweep

BASE = ["dataset=digits", "mode=student", "trainer.epochs=1", "trainer.num_threads=1", "trainer.device=cpu"]


def test_a_decoded_image_entry_placed_under_another_datasets_key_is_decoded_again(tmp_path: Path, caplog) -> None:
    from test_folder_store import entries, stacked, write_folder

    from kd_hydra.data import load_folder

    cache = tmp_path / "cache"
    mine, other = write_folder(tmp_path / "mine", seed=0), write_folder(tmp_path / "other", seed=1)
    load_folder(path=str(tmp_path / "other"), cache_dir=str(cache), image_size=8)
    (other_entry,) = entries(cache)
    load_folder(path=str(tmp_path / "mine"), cache_dir=str(cache), image_size=8)
    (mine_entry,) = [entry for entry in entries(cache) if entry != other_entry]
    shutil.rmtree(mine_entry)
    shutil.copytree(other_entry, mine_entry)  # intact files and seal, under another key
    with caplog.at_level("WARNING"):
        data = load_folder(path=str(tmp_path / "mine"), cache_dir=str(cache), image_size=8)
    assert torch.equal(data.x_train, stacked(mine["train"])[0]) and torch.equal(data.x_test, stacked(mine["test"])[0])
    assert not torch.equal(data.x_train, stacked(other["train"])[0])
    assert f"decoded store {mine_entry} failed its check (it does not hold what its key names" in caplog.text


def kd_hydra_files(folder: Path) -> list[str]:
    """The names in ``folder`` besides Hydra's job log and the claim's lock file."""
    return sorted(p.name for p in folder.iterdir() if p.name != "run.log" and not p.name.startswith(CLAIM_NAME))


def error_line(process) -> str:
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    return lines[0]


def test_two_runs_into_one_directory_never_write_at_the_same_time(workspace) -> None:
    run_dir = workspace.root / "runs" / "shared"
    workspace.env["KD_HYDRA_CLAIM_TIMEOUT_S"] = "0.5"
    with RunDirectory(run_dir).claimed():  # another writer holds the directory
        _, process = workspace.single("shared", *BASE, expect=2)
        line = error_line(process)
        assert f"is still held by pid {os.getpid()}" in line and str(run_dir) in line, line
        assert not (run_dir / schema.METRICS_FILE).exists() and not (run_dir / schema.HYDRA_DIR).exists()
    released = threading.Event()

    def hold_then_release() -> None:
        with RunDirectory(run_dir).claimed():
            released.wait(1.0)

    holder = threading.Thread(target=hold_then_release)
    holder.start()
    time.sleep(0.2)
    workspace.env["KD_HYDRA_CLAIM_TIMEOUT_S"] = "60"
    workspace.single("shared", *BASE)  # waits for the holder, then runs alone
    holder.join()
    assert "waiting for run directory" in (run_dir / "run.log").read_text()
    assert read_metrics(run_dir)["status"] == "completed"


def test_a_stale_claim_is_taken_over_and_says_so(workspace) -> None:
    run_dir = workspace.root / "runs" / "stale"
    run_dir.mkdir(parents=True)
    owner = {"user": "gone", "host": "elsewhere", "pid": 999999, "since": "2020-01-01T00:00:00+00:00"}
    (run_dir / f"{CLAIM_NAME}.json").write_text(json.dumps(owner))
    workspace.single("stale", *BASE)
    assert "taking over a stale claim of pid 999999 of gone on elsewhere" in (run_dir / "run.log").read_text()
    assert read_metrics(run_dir)["status"] == "completed" and not (run_dir / f"{CLAIM_NAME}.json").exists()


def test_a_second_invocation_of_a_sweep_waits_for_the_first(workspace) -> None:
    sweep_dir = workspace.root / "sweeps" / "twice"
    workspace.env["KD_HYDRA_CLAIM_TIMEOUT_S"] = "0.5"
    args = (*BASE, "trainer.seed=1,2")
    with exclusive(ledger_dir(sweep_dir), "sweep", "the first invocation"):
        _, process = workspace.sweep("twice", *args, expect=2)
        assert "is still held by pid" in error_line(process)
    assert run_dirs_of(sweep_dir) == []
    workspace.sweep("twice", *args)
    _, again = workspace.sweep("twice", *args)  # after the first: every job is found completed, none runs again
    assert "skipping 2 completed jobs" in again.stdout + again.stderr
    assert [read_metrics(d)["status"] for d in run_dirs_of(sweep_dir)] == ["completed", "completed"]


def test_a_sweep_rerun_reuses_existing_job_directories_and_never_fails_in_the_launcher(workspace) -> None:
    args = (*BASE, "trainer.seed=1,2,3,4")
    sweep_dir, _ = workspace.sweep("again", *args)
    started, claimed, hydra_file, plain_file = run_dirs_of(sweep_dir)
    for path in started.iterdir():  # a job that was killed: only its settings are left
        if path.name != schema.HYDRA_DIR:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    owner = {"user": "gone", "host": "elsewhere", "pid": 999999, "since": "2020-01-01T00:00:00+00:00"}
    shutil.rmtree(claimed)
    claimed.mkdir()  # a job whose directory holds only a dead process's claim
    (claimed / f"{CLAIM_NAME}.json").write_text(json.dumps(owner))
    shutil.rmtree(hydra_file)
    hydra_file.mkdir()
    (hydra_file / schema.HYDRA_DIR).write_text("")  # cannot hold a run's settings
    shutil.rmtree(plain_file)
    plain_file.write_text("")  # a file where the job's directory belongs
    _, process = workspace.sweep("again", *args, expect=1)
    output = process.stdout + process.stderr
    assert "the launcher failed" not in output and "FileExistsError" not in output and "File exists" not in output
    for refused, named in ((hydra_file, hydra_file / schema.HYDRA_DIR), (plain_file, plain_file)):
        line = f"error: job {refused.name}: {named}: is a file, expected a directory; it is not started"
        assert line in process.stderr.splitlines(), process.stderr
    assert [read_metrics(d)["status"] for d in (started, claimed)] == ["completed", "completed"]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.startswith("mode="))
    assert jobs == [started, claimed, hydra_file, plain_file]  # reused in place: no second directory for a job
    assert sorted(p.name for p in hydra_file.iterdir()) == [schema.HYDRA_DIR] and plain_file.read_text() == ""


# ------------------------------------------------------------------ 3. waits and write failures say so


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_what_was_recorded(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"status": "completed"})

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError) as raised:
        write_json(target, {"status": "failed"})
    monkeypatch.undo()
    assert (
        str(raised.value)
        == f"{target}: cannot be written (No space left on device); nothing recorded there was changed"
    )
    assert isinstance(raised.value, KDHydraError) and raised.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"status": "completed"} and sorted(tmp_path.iterdir()) == [target]


def test_a_full_disk_during_a_run_is_one_line(workspace, monkeypatch) -> None:
    real_mkstemp = tempfile.mkstemp

    def full_for_history(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(f".{schema.HISTORY_FILE}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr("kd_hydra.records.files.tempfile.mkstemp", full_for_history)
    run_dir, process = workspace.single("full", *BASE, expect=2)
    line = error_line(process)
    assert line == f"error: {run_dir / schema.HISTORY_FILE}: cannot be written (No space left on device); " + (
        "nothing recorded there was changed"
    )
    assert read_metrics(run_dir)["status"] == "failed" and not (run_dir / "model.pt").exists()


def test_a_full_disk_while_the_sharded_cache_is_filled_is_one_line_naming_the_shard(
    tmp_path: Path, monkeypatch
) -> None:
    def full_disk(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full_disk, raising=False)  # else a mapped write faults (SIGBUS)
    source = outputs_for(tmp_path, tiny_teacher(1), "sha-a", top_k=2).source
    shard = source.entry.file(source.epoch_store(0).names[0])
    with pytest.raises(WriteError) as raised:
        source.begin_epoch(0)
    assert (
        str(raised.value) == f"{shard}: cannot be written (No space left on device); nothing recorded there was changed"
    )
    assert not shard.exists() and source.entry.sealed_files() == {}


def test_a_full_disk_while_images_are_decoded_is_one_line_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    from test_folder_store import entries, write_folder

    from kd_hydra.data import load_folder

    def full_disk(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    write_folder(tmp_path / "images")
    monkeypatch.setattr(os, "posix_fallocate", full_disk, raising=False)
    with pytest.raises(WriteError, match=r"x_train\.npy: cannot be written \(No space left on device\); nothing"):
        load_folder(path=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"), image_size=8)
    assert entries(tmp_path / "cache") == []  # no partial entry stays behind


@pytest.mark.parametrize("odd", ["ledger-is-a-file", "plan-is-a-directory"])
def test_odd_typed_ledger_paths_are_one_line(workspace, odd: str) -> None:
    sweep_dir = workspace.root / "sweeps" / odd
    sweep_dir.mkdir(parents=True)
    if odd == "ledger-is-a-file":
        ledger_dir(sweep_dir).write_text("")
        named = ledger_dir(sweep_dir)
    else:
        (ledger_dir(sweep_dir) / "plan.json").mkdir(parents=True)
        named = ledger_dir(sweep_dir) / "plan.json"
    _, process = workspace.sweep(odd, *BASE, "trainer.seed=1,2", expect=2)
    line = error_line(process)
    assert str(named) in line and "cannot be written" in line, line
    assert run_dirs_of(sweep_dir) == []


def test_a_run_directory_that_is_a_symbolic_link_is_refused_untouched(workspace) -> None:
    real = workspace.root / "real"
    real.mkdir()
    (real / "notes.txt").write_text("mine")
    link = workspace.root / "runs" / "link"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    process = workspace.run(*BASE, f"hydra.run.dir={link}", expect=2)
    assert error_line(process).startswith(f"error: hydra.run.dir: {link}: is a symbolic link"), process.stderr
    assert kd_hydra_files(real) == ["notes.txt"]


# ------------------------------------------------------------------ 4. records that describe only what is there


@pytest.mark.parametrize("foreign", [schema.METRICS_FILE, schema.HISTORY_FILE])
def test_a_directory_with_another_tools_record_is_refused(workspace, foreign: str) -> None:
    run_dir = workspace.root / "runs" / "foreign"
    run_dir.mkdir(parents=True)
    content = '{"accuracy": 0.93}\n' if foreign == schema.METRICS_FILE else "step,loss\n1,0.5\n"
    (run_dir / foreign).write_text(content)
    _, process = workspace.single("foreign", *BASE, expect=2)
    line = error_line(process)
    assert line.startswith("error: hydra.run.dir: ") and ("kd-hydra did not write" in line or "not written by" in line)
    assert kd_hydra_files(run_dir) == [foreign]
    assert (run_dir / foreign).read_text() == content


def test_an_evaluation_never_writes_into_a_training_runs_directory(workspace) -> None:
    run_dir, _ = workspace.single("trained", *BASE)
    before = {name: (run_dir / name).read_bytes() for name in kd_hydra_files(run_dir) if (run_dir / name).is_file()}
    args = ("dataset=digits", "mode=eval", "teacher=light_cnn", f"teacher.checkpoint={run_dir / 'model.pt'}")
    _, process = workspace.single("trained", *args, "trainer.device=cpu", expect=2)
    assert "an evaluation never writes into it" in error_line(process)
    after = {name: (run_dir / name).read_bytes() for name in kd_hydra_files(run_dir) if (run_dir / name).is_file()}
    assert after == before


def test_a_missing_best_checkpoint_is_named_on_rerun_and_in_the_analysis(workspace) -> None:
    from analysis.load import load_runs

    run_dir, _ = workspace.single("best", *BASE, "trainer.save_best=true")
    best = Path(read_metrics(run_dir)["best_checkpoint"])
    best.unlink()
    workspace.single("best", *BASE, "trainer.save_best=true")  # left alone, with a warning
    assert f"best_checkpoint: {best} is missing" in (run_dir / "run.log").read_text()
    with pytest.warns(UserWarning, match=r"names a checkpoint that is not usable \(best_checkpoint: .* is missing\)"):
        load_runs(run_dir)


def test_a_resume_after_the_external_teachers_weights_changed_is_refused(workspace, monkeypatch) -> None:
    from test_fault_probe import interrupted_run

    teacher_dir, _ = workspace.single("teacher", *BASE)
    teacher_file = workspace.root / "teacher.pt"
    shutil.copy(teacher_dir / "model.pt", teacher_file)
    args = ("dataset=digits", "mode=distill", "teacher=light_cnn", f"teacher.checkpoint={teacher_file}", *BASE[-2:])
    run_dir = interrupted_run(workspace, monkeypatch, "resumed", *args, "trainer.epochs=3")
    state = torch.load(teacher_file, weights_only=True)
    weights = state.get("state_dict", state) if isinstance(state, dict) else state
    name = next(key for key, value in weights.items() if torch.is_floating_point(value))
    weights[name] = weights[name] + 1.0  # the same file, other weights
    torch.save(state, teacher_file)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != "run.log"}
    _, process = workspace.single("resumed", *args, "trainer.epochs=3", expect=2)
    line = error_line(process)
    assert line.startswith("error: trainer.resume: ") and "the teacher's weights changed" in line, line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != "run.log"} == before
    assert not (run_dir / schema.METRICS_FILE).exists()


# ------------------------------------------------------------------ the "Checks and errors" page shows these lines

ERRORS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def test_the_errors_page_shows_the_lines_these_checks_print(tmp_path: Path, monkeypatch, caplog) -> None:
    """Each documented line, printed by the code that prints it (with the page's example values)."""
    from kd_hydra.methods import DistillMethod, LossOutput
    from kd_hydra.methods.contract import check_output, check_parts
    from kd_hydra.records.claims import ClaimError, describe_holder
    from kd_hydra.records.files import write_error
    from kd_hydra.records.identity import identity_differences
    from kd_hydra.records.run_directory import checkpoint_problems

    page = ERRORS_PAGE.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    run_dir = Path("outputs/my-run")
    shown = [f"error: {write_error(run_dir / schema.HISTORY_FILE, OSError(errno.ENOSPC, 'No space left on device'))}"]
    best = run_dir / "checkpoints" / "best.pt"
    shown.append(
        f"{run_dir}: metrics.json names a checkpoint that is not usable ("
        + (f"{checkpoint_problems({'best_checkpoint': str(best)})[0]})")
    )
    assert identity_differences({"teacher_id": "sha256:a"}, {"teacher_id": "sha256:b"}) in page
    holder = {"user": "alice", "host": "node-3", "pid": 4242, "since": "2025-05-01T10:00:00+00:00"}
    with exclusive(run_dir, CLAIM_NAME, f"run directory {run_dir}"):
        (run_dir / f"{CLAIM_NAME}.json").write_text(json.dumps(holder))
        with caplog.at_level("WARNING"), pytest.raises(ClaimError) as held:
            with exclusive(run_dir, CLAIM_NAME, f"run directory {run_dir}", timeout_s=0):
                pass
    (waiting,) = [record.getMessage() for record in caplog.records if "waiting for" in record.getMessage()]
    shown.append(f"WARNING {waiting}".replace("=0 s)", "=86400 s)"))
    shown.append(f"error: {held.value}".replace("after 0 s", "after 86400 s"))
    assert describe_holder(holder) in page

    def line_of(check, *arguments) -> None:
        with pytest.raises(KDHydraError) as raised:
            check(*arguments)
        shown.append(f"`error: {raised.value}`")

    scalar = torch.tensor(1.0)
    line_of(check_output, LossOutput(torch.zeros(64), {"ce": scalar}), ("ce",), "my_methods.M")
    line_of(check_output, LossOutput(torch.tensor(float("inf")), {"ce": scalar}), ("ce",), "my_methods.M")
    parts = {"ce": scalar, "x": scalar}
    line_of(check_output, LossOutput(scalar, parts), ("ce", "mse"), "my_methods.M")
    line_of(check_parts, type("M", (DistillMethod,), {"__module__": "my_methods", "parts": ("ce", "acc")}))
    from omegaconf import OmegaConf

    import kd_hydra
    from kd_hydra.data.load import check_fits_data
    from kd_hydra.data.types import DatasetSpec

    digits = DatasetSpec("digits", 10, 1, 8, tuple(map(str, range(10))), num_train=32, num_test=16)
    preset = OmegaConf.create({"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}})
    line_of(check_fits_data, preset, digits)
    with pytest.raises(KDHydraError) as multirun:
        kd_hydra.run_experiment(["-m"], output_dir=tmp_path / "never")
    shown.append(f"`{multirun.value}`")
    missing = [line for line in shown if line not in page]
    assert not missing, f"docs/errors.md does not show: {missing}"
