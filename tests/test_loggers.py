"""Trackers (kd_hydra.trackers): what each logs, read back with the library's own reader."""

from __future__ import annotations

import json
import logging
import math
import struct
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kd_hydra.config.structured import register_configs
from kd_hydra.errors import ConfigError
from kd_hydra.trackers import base as tracker_base
from kd_hydra.trackers import mlflow as tracker_mlflow
from kd_hydra.trackers.base import flatten_config, tracker_run_name
from kd_hydra.trackers.fanout import RunLoggers, build_loggers, check_loggers

CONF = Path(__file__).resolve().parents[1] / "conf"
RUN_NAME = "loss.alpha=0.5,loss.temperature=4"
GROUP = "multiruns/sweep-a"
CONFIG = {
    "mode": "distill",
    "loss": {"name": "kd", "temperature": 4.0, "alpha": 0.5},
    "trainer": {"epochs": 3, "seed": 0, "channels_last": None},
    "scheduler": {"milestones": [0.5, 0.75]},
}
#: Three history rows; epoch 2 was not evaluated (test_* empty).
ROWS = [
    {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 30.0, "test_acc": 40.0, "test_loss": 1.5, "seconds": 1.0},
    {"epoch": 2, "lr": 0.05, "train_loss": 1.5, "train_acc": 50.0, "test_acc": None, "test_loss": None, "seconds": 1.0},
    {"epoch": 3, "lr": 0.01, "train_loss": 1.0, "train_acc": 70.0, "test_acc": 65.5, "test_loss": 0.9, "seconds": 1.0},
]
METRICS = {
    "schema_version": 2,
    "status": "completed",
    "final_test_acc": 65.5,
    "best_test_acc": 65.5,
    "best_epoch": 3,
    "teacher_test_acc": None,
    "wall_seconds": 3.5,
    "settings": {"loss.alpha": 0.5},
}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")
EVALUATED = {row["epoch"]: row["test_acc"] for row in ROWS if row["test_acc"] is not None}


def logger_node(*names: str, **options: dict) -> OmegaConf:
    """The ``logger`` group as conf/logger/<name>.yaml composes it, with ``options`` merged per tracker."""
    node = OmegaConf.create({})
    for name in names:
        node = OmegaConf.merge(node, OmegaConf.load(CONF / "logger" / f"{name}.yaml"))
    for name, values in options.items():
        node[name] = OmegaConf.merge(node[name], values)
    return node


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Path:
    """One MLflow store for the module (creating its database takes seconds); each test uses its own group."""
    return tmp_path_factory.mktemp("mlflow-store")


def feed(run: RunLoggers, status: str = "completed") -> None:
    run.log_hparams(CONFIG)
    for row in ROWS:
        run.log_epoch(row)
    run.log_summary(METRICS)
    run.close(status)


# ----------------------------------------------------------------------------- pure helpers


def test_flatten_config_gives_dotted_scalars():
    flat = flatten_config(CONFIG)
    assert flat == {
        "mode": "distill",
        "loss.name": "kd",
        "loss.temperature": 4.0,
        "loss.alpha": 0.5,
        "trainer.epochs": 3,
        "trainer.seed": 0,
        "trainer.channels_last": None,
        "scheduler.milestones": "[0.5, 0.75]",
    }
    assert flatten_config(OmegaConf.create({"a": {"b": "${c}"}, "c": 2})) == {"a.b": 2, "c": 2}


def test_safe_dir_name_keeps_long_override_lists_unique():
    assert tracker_base.safe_dir_name("dataset.path=/data/x.npz,seed=1") == "dataset.path=_data_x.npz,seed=1"
    assert tracker_base.safe_dir_name("") == tracker_base.DEFAULT_RUN_NAME
    long_a, long_b = "a=1," * 100 + "seed=1", "a=1," * 100 + "seed=2"
    short_a, short_b = tracker_base.safe_dir_name(long_a), tracker_base.safe_dir_name(long_b)
    assert len(short_a) == tracker_base.MAX_DIR_NAME_BYTES and short_a != short_b
    assert short_a.startswith("a=1,a=1,")


def test_tracker_run_name_from_hydra_node(tmp_path):
    sweep = tmp_path / "outputs" / "multiruns" / "day" / "time"
    hydra = OmegaConf.create(
        {
            "mode": "MULTIRUN",
            "sweep": {"dir": str(sweep)},
            "runtime": {"output_dir": str(sweep / "3")},
            "job": {"override_dirname": RUN_NAME},
        }
    )
    assert tracker_run_name(hydra, tmp_path / "outputs") == (RUN_NAME, "multiruns/day/time")
    assert tracker_run_name(hydra) == (RUN_NAME, "time")
    hydra.mode, hydra.job.override_dirname = "RUN", ""
    assert tracker_run_name(hydra, tmp_path / "outputs") == ("3", tracker_base.SINGLE_RUN_GROUP)


def test_default_is_csv_and_several_compose(tmp_path, mlflow_store):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose(config_name="config")
        both = compose(
            config_name="config", overrides=["logger=[tensorboard,mlflow]", f"paths.output_dir={mlflow_store}"]
        )
    assert OmegaConf.to_container(default.logger) == {"csv": None}
    assert list(both.logger) == ["tensorboard", "mlflow"]
    run = build_loggers(both.logger, RUN_NAME, "composed", tmp_path / "job")
    assert run.names == ("tensorboard", "mlflow")
    feed(run)
    assert (mlflow_store / tracker_mlflow.MLFLOW_DB_FILE).is_file()
    assert list((tmp_path / "job" / "tensorboard" / RUN_NAME).glob("events.out.tfevents.*"))


def test_no_tracker_is_a_no_op(tmp_path):
    for cfg in (None, logger_node("csv")):
        run = build_loggers(cfg, RUN_NAME, GROUP, tmp_path)
        assert run.names == ()
        feed(run)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_final_metrics_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    feed(build_loggers(logger_node("tensorboard"), RUN_NAME, GROUP, tmp_path))
    log_dir = tmp_path / "tensorboard" / RUN_NAME
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    test_acc = {event.step: event.value for event in events.Scalars("test_acc")}
    assert test_acc == pytest.approx(EVALUATED)
    assert [event.step for event in events.Scalars("lr")] == [1, 2, 3]
    assert [event.value for event in events.Scalars("lr")] == pytest.approx([row["lr"] for row in ROWS])
    assert "epoch" not in events.Tags()["scalars"]
    assert events.Scalars("final/final_test_acc")[-1].value == pytest.approx(65.5)
    assert events.Scalars("final/best_epoch")[-1].value == 3
    assert "final/teacher_test_acc" not in events.Tags()["scalars"]  # None is skipped

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["loss.temperature"].number_value == 4.0
    assert hparams["mode"].string_value == "distill"
    assert hparams["scheduler.milestones"].string_value == "[0.5, 0.75]"


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_metric_history_params_and_final_metrics(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    store = mlflow_store
    cfg = logger_node("mlflow", mlflow={"store_dir": str(store)})
    feed(build_loggers(cfg, RUN_NAME, GROUP, tmp_path / "job0"))
    feed(build_loggers(cfg, "loss.alpha=0.9", GROUP, tmp_path / "job1"), status="failed")

    client = MlflowClient(tracking_uri=f"sqlite:///{store / tracker_mlflow.MLFLOW_DB_FILE}")
    experiment = client.get_experiment_by_name(GROUP)
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {RUN_NAME, "loss.alpha=0.9"}
    assert runs["loss.alpha=0.9"].info.status == "FAILED"
    run = runs[RUN_NAME]
    assert run.info.status == "FINISHED"
    assert run.data.tags["kd_hydra.run_dir"] == str(tmp_path / "job0")
    history = client.get_metric_history(run.info.run_id, "test_acc")
    assert {metric.step: metric.value for metric in history} == pytest.approx(EVALUATED)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(ROWS)
    assert run.data.params["loss.temperature"] == "4.0"
    assert run.data.params["trainer.channels_last"] == "None"
    assert run.data.metrics["final_test_acc"] == pytest.approx(65.5)
    assert run.data.metrics["wall_seconds"] == pytest.approx(3.5)
    assert "schema_version" not in run.data.metrics and "teacher_test_acc" not in run.data.metrics
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()


def test_mlflow_experiment_option_overrides_the_group(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    cfg = logger_node("mlflow", mlflow={"store_dir": str(mlflow_store), "experiment": "tutorial"})
    feed(build_loggers(cfg, RUN_NAME, "unused-group", tmp_path / "job"))
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_store / tracker_mlflow.MLFLOW_DB_FILE}")
    assert client.get_experiment_by_name("unused-group") is None
    assert client.get_experiment_by_name("tutorial") is not None


# ----------------------------------------------------------------------------- Weights & Biases

_WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log of wandb_internal_pb2.Record
_WANDB_HEADER = 7  # b":W&B" + magic (2) + version (1); each chunk: crc32 (4) + length (2) + type (1)
_FULL, _LAST = 1, 4


def wandb_records(path: Path) -> list:
    """Every record of an offline run's ``.wandb`` file, parsed with wandb's own protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", _WANDB_HEADER
    while pos + _WANDB_HEADER <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < _WANDB_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _WANDB_HEADER])
        pos += _WANDB_HEADER
        if kind == 0 and length == 0:
            break
        pending += data[pos : pos + length]
        pos += length
        if kind in (_FULL, _LAST):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wait_for_exit_record(path: Path, timeout: float = 30.0) -> list:
    """The records once the run's ``exit`` record is on disk: wandb-core writes them after finish() returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tmp_path


def test_wandb_offline_run_records(wandb_home):
    out_dir = wandb_home / "job"
    feed(build_loggers(logger_node("wandb", wandb={"tags": ["kd"]}), RUN_NAME, GROUP, out_dir))
    (run_file,) = (out_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wait_for_exit_record(run_file)
    by_type: dict[str, list] = {}
    for record in records:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)

    run = by_type["run"][0].run
    assert (run.run_group, run.display_name, run.project, list(run.tags)) == (GROUP, RUN_NAME, "kd-hydra", ["kd"])
    config = {}
    for record in by_type["config"] + by_type["run"]:
        holder = record.config if record.HasField("config") else record.run.config
        config.update({_key(item): json.loads(item.value_json) for item in holder.update})
    assert config["loss.temperature"] == 4.0 and config["trainer.epochs"] == 3

    steps = {}
    for record in by_type["history"]:
        items = {_key(item): json.loads(item.value_json) for item in record.history.item}
        steps[items["_step"]] = items
    assert sorted(steps) == [1, 2, 3]
    assert {step: items["test_acc"] for step, items in steps.items() if "test_acc" in items} == EVALUATED
    assert "test_acc" not in steps[2] and "epoch" not in steps[1]

    summary = {}
    for record in by_type["summary"]:
        summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    assert summary["final_test_acc"] == 65.5 and summary["best_epoch"] == 3.0
    assert by_type["exit"][0].exit.exit_code == 0


def test_wandb_bad_mode_is_one_line_config_error():
    with pytest.raises(ConfigError) as error:
        check_loggers(logger_node("wandb", wandb={"mode": "sometimes"}))
    assert str(error.value) == "logger.wandb.mode: must be one of offline, online, disabled (got 'sometimes')"


# ----------------------------------------------------------------------------- errors and failures


@pytest.mark.parametrize(
    "name, module", [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow.tracking"), ("wandb", "wandb")]
)
def test_missing_package_names_the_extra(monkeypatch, tmp_path, name, module):
    real_import = tracker_base.importlib.import_module

    def failing_import(requested: str, *args):
        if requested == module:
            raise ModuleNotFoundError(f"No module named '{module}'")
        return real_import(requested, *args)

    monkeypatch.setattr(tracker_base.importlib, "import_module", failing_import)
    cfg = logger_node("csv", name)
    if name == "mlflow":
        cfg.mlflow.store_dir = str(tmp_path)
    expected = f"logger.{name}: needs the 'tracking' extra: pip install -e \".[tracking]\""
    with pytest.raises(ConfigError) as error:
        build_loggers(cfg, RUN_NAME, GROUP, tmp_path)
    assert str(error.value) == expected
    with pytest.raises(ConfigError, match="tracking"):
        check_loggers(cfg)


def test_unknown_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_loggers(logger_node("tensorboard", tensorboard={"colour": "red"}), RUN_NAME, GROUP, tmp_path)
    assert str(error.value).startswith(
        "logger.tensorboard: cannot build kd_hydra.trackers.tensorboard.TensorBoardTracker:"
    )
    assert "\n" not in str(error.value)


class RecordingTracker:
    """A tracker that records calls; ``fail_on`` names the method that raises (like a full disk)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.calls: list[tuple] = []

    def _record(self, method: str, *args) -> None:
        self.calls.append((method, *args))
        if method == self.fail_on:
            raise OSError(28, "No space left on device")

    def start(self, run_name, group, out_dir):
        self._record("start", run_name, group)

    def log_hparams(self, flat):
        self._record("log_hparams", flat)

    def log_epoch(self, epoch, values):
        self._record("log_epoch", epoch, values)

    def log_summary(self, values):
        self._record("log_summary", values)

    def close(self, status):
        self._record("close", status)


def test_fan_out_values_steps_and_skipped_nones():
    tracker = RecordingTracker()
    feed(RunLoggers({"rec": tracker}))
    epochs = [call for call in tracker.calls if call[0] == "log_epoch"]
    assert [call[1] for call in epochs] == [1, 2, 3]
    assert epochs[1][2] == {"lr": 0.05, "train_loss": 1.5, "train_acc": 50.0, "seconds": 1.0}
    (summary,) = [call[1] for call in tracker.calls if call[0] == "log_summary"]
    assert summary == {"final_test_acc": 65.5, "best_test_acc": 65.5, "best_epoch": 3.0, "wall_seconds": 3.5}
    assert tracker.calls[-1] == ("close", "completed")


def test_failing_tracker_warns_once_and_the_others_go_on(caplog):
    broken, healthy = RecordingTracker(fail_on="log_epoch"), RecordingTracker()
    run = RunLoggers({"broken": broken, "healthy": healthy})
    with caplog.at_level(logging.WARNING, logger="kd_hydra.trackers"):
        feed(run)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith("logger.broken: log_epoch failed (OSError:")
    assert [call[0] for call in broken.calls] == ["log_hparams", "log_epoch", "close"]  # off after the failure
    assert [call[0] for call in healthy.calls].count("log_epoch") == len(ROWS)
    assert healthy.calls[-1] == ("close", "completed")
    run.close("completed")  # a second close does nothing
    assert healthy.calls[-1] == ("close", "completed") and len(healthy.calls) == 6


def test_tracker_that_cannot_start_is_left_out(tmp_path, caplog):
    cfg = OmegaConf.create(
        {
            "bad": {"_target_": "test_loggers.RecordingTracker", "fail_on": "start"},
            "good": {"_target_": "test_loggers.RecordingTracker"},
        }
    )
    with caplog.at_level(logging.WARNING, logger="kd_hydra.trackers"):
        run = build_loggers(cfg, RUN_NAME, GROUP, tmp_path)
    assert run.names == ("good",)
    assert "logger.bad: could not start" in caplog.text


def test_summary_skips_non_finite_numbers():
    tracker = RecordingTracker()
    RunLoggers({"rec": tracker}).log_summary({"final_test_acc": math.nan, "best_test_acc": 50.0, "mode": "distill"})
    assert tracker.calls == [("log_summary", {"best_test_acc": 50.0})]


# ----------------------------------------------------------------------------- end to end


def test_a_sweep_logs_every_job_s_test_acc_to_all_three_trackers(workspace, wandb_home, mlflow_store):
    """``run.py -m ... logger=[tensorboard,mlflow,wandb]``: each job's per-epoch test_acc reads back from each."""
    import csv

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import TINY, read_metrics

    workspace.env.update({k: v for k, v in __import__("os").environ.items() if k.startswith("WANDB_")})
    sweep_dir, _ = workspace.sweep(
        "tracked",
        *TINY,
        "mode=student",
        "trainer.seed=0,1",
        "logger=[tensorboard,mlflow,wandb]",
        "hydra.sweeper.add_baselines=false",
        f"logger.mlflow.store_dir={mlflow_store}",
    )  # the module's store: created once
    jobs = [p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file() and read_metrics(p)["mode"] == "student"]
    assert len(jobs) == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_store / tracker_mlflow.MLFLOW_DB_FILE}")
    mlflow_runs = {
        run.data.tags["kd_hydra.run_dir"]: run
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()])
    }
    for job in jobs:
        with open(job / "history.csv") as handle:
            expected = {int(row["epoch"]): float(row["test_acc"]) for row in csv.DictReader(handle)}
        (log_dir,) = (job / "tensorboard").iterdir()
        events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
        events.Reload()
        assert {e.step: e.value for e in events.Scalars("test_acc")} == pytest.approx(expected, rel=1e-5)
        run = mlflow_runs[str(job)]
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "test_acc")
        assert {m.step: m.value for m in history} == pytest.approx(expected, rel=1e-5)
        (run_file,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
        records = wait_for_exit_record(run_file)
        logged = {}
        for record in records:
            if record.WhichOneof("record_type") == "history":
                items = {_key(item): json.loads(item.value_json) for item in record.history.item}
                if "test_acc" in items:
                    logged[items["_step"]] = items["test_acc"]
        assert logged == pytest.approx(expected, rel=1e-5)
