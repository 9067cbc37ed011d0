"""The second fault probe (issue 16): each reproduction ends in one ``error:`` line (exit 2) or its documented
recovery, before any work and without changing anything completed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, Workspace
from kd_hydra.records import schema

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

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
        (["optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.nesterov"),
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
        "teacher_training.scheduler={_target_:kd_hydra.train.schedules.step_schedule,_partial_:true,gamma:-1}",
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
    from kd_hydra.config.compose import compose, hydra_session

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


# ----------------------------------------------------------------------------- image files


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels: signature, IHDR, an empty IDAT and IEND (109 bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_folder(root: Path, size: int = 8) -> Path:
    """<root>/train/{a,b}/0.png and <root>/test/{a,b}/0.png of random pixels."""
    import torch
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
            write_png(image, str(root / split / name / "0.png"))
    return root


def test_image_headers_give_the_declared_size(tmp_path: Path):
    import io

    from PIL import Image

    from kd_hydra.data.image_header import declared_size

    assert declared_size(png_header(30000, 20000)) == (30000, 20000)
    for fmt, options in (("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {}), ("WEBP", {}),
                         ("WEBP", {"lossless": True}), ("PNG", {})):  # fmt: skip
        buffer = io.BytesIO()
        Image.new("RGB", (37, 21), (10, 20, 30)).save(buffer, format=fmt, **options)
        assert declared_size(buffer.getvalue()) == (37, 21), (fmt, options)
    assert declared_size(b"not an image") is None


def test_an_image_declaring_too_many_pixels_is_refused_undecoded(tmp_path: Path):
    from kd_hydra.data import load_folder
    from kd_hydra.errors import DataError

    root = image_folder(tmp_path / "images")
    (root / "train" / "a" / "huge.png").write_bytes(png_header(30000, 30000))
    with pytest.raises(DataError) as caught:
        load_folder(path=str(root), cache_dir=str(tmp_path / "cache"), image_size=8)
    assert str(caught.value) == (
        f"{root / 'train' / 'a' / 'huge.png'}: declares 30000x30000 = 900,000,000 pixels, over "
        "dataset.max_image_pixels=89,478,485; refused before decoding (raise the budget if the image is real)"
    )
    (root / "train" / "a" / "huge.png").unlink()
    with pytest.raises(DataError, match=r"0\.png: declares 8x8 = 64 pixels, over dataset\.max_image_pixels=63"):
        load_folder(path=str(root), cache_dir=None, image_size=8, max_image_pixels=63)


@pytest.mark.parametrize("kind", ["fifo", "device-link"])
def test_only_regular_files_are_read(tmp_path: Path, kind):
    import os
    import signal

    from kd_hydra.data import load_folder
    from kd_hydra.errors import DataError

    root = image_folder(tmp_path / "images")
    odd = root / "train" / "b" / "odd.png"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    expected = {"fifo": "is a FIFO", "device-link": "is a character device"}[kind]

    def hung(*_: object) -> None:
        raise AssertionError("reading a non-regular file hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        for in_memory in (True, False):
            with pytest.raises(DataError) as caught:
                load_folder(path=str(root), cache_dir=str(tmp_path / "cache"), image_size=8, in_memory=in_memory)
            assert str(caught.value) == f"{odd}: {expected}; expected a regular image file"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_file_name_with_a_newline_is_shown_in_full(tmp_path: Path, workspace):
    root = image_folder(tmp_path / "images")
    bad = root / "train" / "a" / "bad\nname.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    line = one_error_line(
        workspace, *BASE, "dataset=folder", f"dataset.path={root}", "dataset.image_size=8", "dataset.normalize=null"
    )
    assert line.startswith(f"error: {str(bad)!r}: cannot decode image"), line


def _store_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "decoded").iterdir() if p.is_dir()]
    return entry


@pytest.mark.parametrize("damage", ["pixels", "labels", "labels-redigested"])
def test_the_decoded_store_is_verified_on_reuse_and_rebuilt(tmp_path: Path, caplog, damage):
    import logging

    import numpy as np
    import torch

    from kd_hydra.data import load_folder

    root = image_folder(tmp_path / "images")
    cache = tmp_path / "cache"
    first = load_folder(path=str(root), cache_dir=str(cache), image_size=8)
    x_train, y_train = first.x_train.clone(), first.y_train.clone()
    del first
    entry = _store_entry(cache)
    if damage == "pixels":  # same size, other bytes
        array = np.load(entry / "x_train.npy")
        np.save(entry / "x_train.npy", 255 - array)
    else:
        array = np.load(entry / "y_train.npy")
        np.save(entry / "y_train.npy", np.full_like(array, 99))
    if damage == "labels-redigested":  # a seal that matches: the label range check still catches it
        from kd_hydra.stores.cache_entry import SEAL_FILE, file_sha256

        seal = json.loads((entry / SEAL_FILE).read_text())
        seal["files"]["y_train.npy"] = file_sha256(entry / "y_train.npy")
        (entry / SEAL_FILE).write_text(json.dumps(seal))
    with caplog.at_level(logging.WARNING, logger="kd_hydra.data.decoded"):
        again = load_folder(path=str(root), cache_dir=str(cache), image_size=8)
    assert torch.equal(again.x_train, x_train) and torch.equal(again.y_train, y_train)
    reason = {
        "pixels": "x_train.npy does not match its seal",
        "labels": "y_train.npy does not match its seal",
        "labels-redigested": "y_train holds labels outside [0, 2)",
    }[damage]
    assert f"failed its check ({reason}); decoding again" in caplog.text


# ----------------------------------------------------------------------------- the dataset schema


def test_every_dataset_has_the_same_keys():
    from kd_hydra.config.compose import compose, hydra_session

    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "dataset").glob("*.yaml"))
    assert len(names) == 8
    with hydra_session() as hydra:
        keys = {name: set(compose(hydra, [f"dataset={name}"]).dataset) for name in names}
    assert all(found == keys["cifar10"] for found in keys.values()), keys
    assert {"image_size", "in_memory", "max_image_pixels", "val_fraction", "augment", "normalize"} <= keys["cifar10"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset.image_size=big"], "error: dataset.image_size: Value 'big' of type 'str' could not be converted"),
        (["dataset.foo=1"], "error: dataset.foo: unknown key"),
        (["dataset.augment.enabled=maybe"], "error: dataset.augment.enabled: Value 'maybe' is not a valid bool"),
        (["dataset.val_fraction=1.5"], "error: dataset.val_fraction: is 1.5; expected a fraction in [0, 1)"),
        (["dataset.augment.crop_padding=-1"], "error: dataset.augment.crop_padding: is -1; expected an integer >= 0"),
        (["dataset.normalize.mean=[0.5]"], "error: dataset.normalize.std: is null while the other is set"),
        (["dataset.in_memory=false"], "error: dataset.in_memory: is false, but dataset digits does not use it"),
        (["dataset=synthetic", "dataset.image_size=0"], "error: dataset.image_size: is 0; expected a positive"),
        (["dataset=folder"], "error: dataset.path: is required but not set (???)"),
    ],
)
def test_dataset_values_are_checked_when_composed(workspace, overrides, expected):
    line = one_error_line(workspace, *BASE, *overrides)
    assert line.startswith(expected), line


def test_synthetic_image_size_old_and_new_key(tmp_path: Path):
    from kd_hydra.config.compose import compose, hydra_session
    from kd_hydra.data import load_dataset

    with hydra_session() as hydra:
        new = compose(hydra, ["dataset=synthetic", "dataset.image_size=6"]).dataset
        old = compose(hydra, ["dataset=synthetic", "dataset.loader.image_size=6"]).dataset
    assert load_dataset(new).spec.image_size == load_dataset(old).spec.image_size == 6


def test_streamed_files_without_statistics_are_refused_before_decoding(workspace, tmp_path: Path):
    root = image_folder(tmp_path / "images")
    (root / "train" / "a" / "corrupt.png").write_bytes(b"not a png")  # decoding it first would fail differently
    folder = ["dataset=folder", f"dataset.path={root}", "dataset.image_size=8", "dataset.in_memory=false"]
    line = one_error_line(workspace, *BASE, *folder)
    assert line.startswith("error: dataset.normalize: is null (computed from the training split), which needs"), line
    line = one_error_line(workspace, *BASE, *folder[:3], "dataset.max_image_pixels=10")
    assert line == (
        f"error: {root / 'train' / 'a' / '0.png'}: declares 8x8 = 64 pixels, over dataset.max_image_pixels=10; "
        "refused before decoding (raise the budget if the image is real)"
    )


# ----------------------------------------------------------------------------- trackers


def test_an_unreachable_mlflow_server_falls_back_to_the_local_store_quickly(tmp_path: Path, caplog):
    import logging
    import socket
    import time

    pytest.importorskip("mlflow", reason="pip install '.[tracking]'")
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from kd_hydra.trackers import fanout as tracker_fanout
    from kd_hydra.trackers import mlflow as tracker_mlflow

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "logger" / "mlflow.yaml")
    node.mlflow.tracking_uri = f"http://127.0.0.1:{port}"
    node.mlflow.store_dir = str(tmp_path / "store")
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="kd_hydra.trackers"):
        run = tracker_fanout.build_loggers(node, "probe", "faults", tmp_path / "run")
    assert time.perf_counter() - started < 30
    run.log_summary({"final_test_acc": 50.0})
    run.close("completed")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"logger.mlflow: cannot reach http://127.0.0.1:{port} within 5 s"
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store' / tracker_mlflow.MLFLOW_DB_FILE}")
    (found,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert found.data.metrics["final_test_acc"] == 50.0


def test_tracker_timeout_must_be_positive(tmp_path: Path):
    pytest.importorskip("mlflow", reason="pip install '.[tracking]'")
    from omegaconf import OmegaConf

    from kd_hydra.errors import ConfigError
    from kd_hydra.trackers import fanout as tracker_fanout

    node = OmegaConf.create({"mlflow": {"_target_": "kd_hydra.trackers.mlflow.MLflowTracker", "timeout_s": 0}})
    with pytest.raises(ConfigError, match=r"^logger\.mlflow\.timeout_s: must be a finite number of seconds > 0"):
        tracker_fanout.check_loggers(node)


def test_a_plain_dataset_mapping_still_loads():
    from kd_hydra.data import load_dataset

    loader = {"_target_": "kd_hydra.data.load_synthetic", "num_train": 20, "num_test": 10, "num_classes": 2}
    assert load_dataset({"name": "mine", "loader": {**loader, "image_size": 4}}).spec.image_size == 4


# ----------------------------------------------------------------------- records: written only by their run

STUDENT = [*TINY, "mode=student", "trainer.epochs=1"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory but its log, by relative path."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "run.log"
    }


def write_arrays(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (96, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(96) % 4,
        x_test=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(32) % 4,
    )


def test_a_refused_rerun_changes_nothing_and_names_the_key(workspace: Workspace):
    run_dir, _ = workspace.single("done", *STUDENT)
    before = snapshot(run_dir)
    _, refused = workspace.single("done", *STUDENT, "optimizer.lr=0.05", expect=2)
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trainer.resume: ") and "optimizer.lr: 0.001 -> 0.05" in last
    assert snapshot(run_dir) == before, ".hydra/, metrics.json, history.csv and model.pt are untouched"
    _, again = workspace.single("done", *STUDENT)
    assert "already completed, left alone" in again.stdout


def test_a_rejected_value_destroys_nothing(workspace: Workspace):
    run_dir, _ = workspace.single("kept", *STUDENT)
    before = snapshot(run_dir)
    workspace.single("kept", *STUDENT, "trainer.resume=never", "optimizer.lr=-1", expect=2)
    assert snapshot(run_dir) == before


def test_replaced_data_is_not_completed_nor_resumed(workspace: Workspace, monkeypatch: pytest.MonkeyPatch):
    npz = workspace.root / "mine.npz"
    write_arrays(npz, seed=0)
    args = ["dataset=arrays", f"dataset.path={npz}", "teacher=deep_cnn", "student=light_cnn", "mode=student",
            "trainer.batch_size=32", "trainer.num_threads=1", "trainer.device=cpu"]  # fmt: skip
    run_dir, _ = workspace.single("arrays", *args, "trainer.epochs=1")
    write_arrays(npz, seed=1)
    _, refused = workspace.single("arrays", *args, "trainer.epochs=1", expect=2)
    assert "the dataset's content changed" in refused.stderr

    interrupted_run(workspace, monkeypatch, "interrupted", *args, "trainer.epochs=3")
    write_arrays(npz, seed=2)
    _, refused = workspace.single("interrupted", *args, "trainer.epochs=3", expect=2)
    assert "the dataset's content changed" in refused.stderr and "resume" in refused.stderr


def test_a_diverged_run_keeps_nothing_and_the_advised_rerun_works(workspace: Workspace):
    run_dir, failed = workspace.single("nan", *STUDENT, "optimizer.lr=1e30", "trainer.epochs=2", expect=2)
    assert "lower optimizer.lr" in failed.stderr
    record = json.loads((run_dir / schema.METRICS_FILE).read_text())
    assert record["status"] == schema.STATUS_FAILED
    assert not (run_dir / schema.TRAIN_STATE_FILE).exists() and not (run_dir / "model.pt").exists()
    workspace.single("nan", *STUDENT, "optimizer.lr=1e-3", "trainer.epochs=2")
    assert json.loads((run_dir / schema.METRICS_FILE).read_text())["status"] == schema.STATUS_COMPLETED


def interrupted_run(workspace: Workspace, monkeypatch: pytest.MonkeyPatch, name: str, *args: str) -> Path:
    """A run killed after epoch 2's history row, before its checkpoint: ``checkpoint.pt`` holds epoch 1."""
    from kd_hydra.train.trainer import Snapshots

    def interrupt(self, epoch, track):
        if epoch == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Snapshots, "after_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            workspace.single(name, *args)
    run_dir = workspace.root / "runs" / name
    assert (run_dir / schema.TRAIN_STATE_FILE).is_file()
    return run_dir


@pytest.mark.parametrize("damage", ["no optimizer", "wrong shape"])
def test_an_unusable_checkpoint_is_one_line(workspace: Workspace, monkeypatch: pytest.MonkeyPatch, damage: str):
    import torch

    args = [*STUDENT, "trainer.epochs=3"]
    run_dir = interrupted_run(workspace, monkeypatch, "state", *args)
    state = torch.load(run_dir / schema.TRAIN_STATE_FILE, weights_only=True)
    if damage == "no optimizer":
        del state["optimizer"]
    else:
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(1)
    torch.save(state, run_dir / schema.TRAIN_STATE_FILE)
    _, refused = workspace.single("state", *args, expect=2)
    last = refused.stderr.strip().splitlines()[-1]
    assert "cannot resume from it" in last and "trainer.resume=never" in last


def test_completed_run_is_left_alone_and_other_settings_are_refused(workspace: Workspace):
    run_dir, _ = workspace.single("done", *TINY, "mode=student")
    before = (run_dir / schema.METRICS_FILE).read_text()
    _, again = workspace.single("done", *TINY, "mode=student")
    assert "already completed, left alone" in again.stdout
    assert (run_dir / schema.METRICS_FILE).read_text() == before
    _, other = workspace.single("done", *TINY, "mode=student", "trainer.seed=3", expect=2)
    assert other.stderr.strip().splitlines()[-1].startswith("error: trainer.resume: ")
    assert (run_dir / schema.METRICS_FILE).read_text() == before, "nothing lost"
    _, forced = workspace.single("done", *TINY, "mode=student", "trainer.seed=3", "trainer.resume=never")
    assert json.loads((run_dir / schema.METRICS_FILE).read_text())["settings"]["trainer.seed"] == 3


def test_a_diverged_teacher_leaves_nothing_in_the_store(workspace: Workspace):
    args = [*TINY, "mode=teacher", "teacher_training.epochs=2"]
    _, failed = workspace.single("teacher-nan", *args, "teacher_training.optimizer.lr=1e30", expect=2)
    assert "lower teacher_training.optimizer.lr" in failed.stderr
    store = workspace.root / "cache" / "teachers"
    assert not store.is_dir() or not any(p.is_dir() for p in store.iterdir()), "no entry, no checkpoint"
    run_dir, _ = workspace.single("teacher-ok", *args)
    assert json.loads((run_dir / schema.METRICS_FILE).read_text())["teacher_source"] == "trained"
