"""Hand-made run directories for the analysis tests (no training, no torch).

``write_run`` writes one run directory the way ``run.py`` + Hydra do; ``write_fake_sweep``
writes a small multirun with known accuracies (see ``DISTILL_ACC``) and every kind of status.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from kd_hydra.enums import Mode
from kd_hydra.records import schema

DATASET = "cifar10"
TEACHER = "resnet56"
STUDENT = "resnet8"
TEACHER_ACC = 93.0
TEACHER_PARAMS = 850_000
STUDENT_PARAMS = 78_000
EPOCHS = 3
SEEDS = (0, 1)
TEMPERATURES = (1.0, 4.0)
ALPHAS = (0.5, 0.9)

#: Final test accuracy of each distill run, keyed by (temperature, alpha, seed).
DISTILL_ACC = {
    (1.0, 0.5, 0): 80.0, (1.0, 0.5, 1): 82.0,
    (1.0, 0.9, 0): 81.0, (1.0, 0.9, 1): 81.5,
    (4.0, 0.5, 0): 83.0, (4.0, 0.5, 1): 84.0,
    (4.0, 0.9, 0): 85.0, (4.0, 0.9, 1): 86.5,
}  # fmt: skip
#: Final test accuracy of the baseline student of each seed.
BASELINE_ACC = {0: 79.0, 1: 80.0}
FAILED_REASON = "CUDA out of memory while training the student"
EXTRA_KEY = "trainer.grad_clip"
MISSING_KEY = "scheduler.warmup_epochs"
#: Loss parts (history columns train_<part>) of each method.
METHOD_PARTS = {
    "ce": ("ce",),
    "kd": ("ce", "kd"),
    "dkd": ("ce", "dkd"),
    "fitnet": ("ce", "hint"),
    "dist": ("ce", "dist"),
    "crd": ("ce", "crd"),
}
#: loss.* keys (besides name) of each method, with their defaults.
METHOD_KEYS = {
    "ce": {},
    "kd": {"temperature": 4.0, "alpha": 0.9},
    "dkd": {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup": 20},
    "fitnet": {"hint_weight": 100.0, "hint_point": "stage2"},
    "dist": {"temperature": 4.0, "beta": 2.0, "gamma": 2.0},
    "crd": {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "momentum": 0.5},
}


def make_config(mode: str, seed: int, temperature: float = 4.0, alpha: float = 0.9, method: str = "kd",
                **loss_keys: Any) -> dict[str, Any]:  # fmt: skip
    """A resolved config like run.py's, nested (as in .hydra/config.yaml).

    ``method`` (distill runs; others train with "ce") picks the loss keys of METHOD_KEYS; kd's
    temperature and alpha come from the arguments, any other loss key from ``loss_keys``.
    """
    method = method if mode == Mode.distill.value else "ce"
    loss = {"_target_": f"kd_hydra.methods.{method}.Method", "name": method, **METHOD_KEYS[method]}
    if "temperature" in loss:
        loss["temperature"] = temperature
    if "alpha" in loss and method == "kd":
        loss["alpha"] = alpha
    loss.update(loss_keys)
    return {
        "mode": mode,
        "dataset": {"name": DATASET, "root": "/data/cifar10", "num_classes": 10},
        "teacher": {"name": TEACHER, "checkpoint": None},
        "student": {"name": STUDENT},
        "loss": loss,
        "trainer": {"epochs": EPOCHS, "batch_size": 128, "seed": seed, "precision": "fp32", "milestones": [2, 3]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "scheduler": {"name": "cosine", "warmup_epochs": 0},
        "paths": {"output_dir": "/tmp/somewhere", "cache_dir": "${paths.output_dir}/cache"},
    }


def overrides_of(config: dict[str, Any]) -> list[str]:
    """The override strings a sweep over mode, seed, T and alpha would record."""
    items = [f"mode={config['mode']}", f"trainer.seed={config['trainer']['seed']}"]
    if config["mode"] == Mode.distill.value:
        items += [f"loss.temperature={config['loss']['temperature']:g}", f"loss.alpha={config['loss']['alpha']:g}"]
    return items


def make_metrics(config: dict[str, Any], final_test_acc: float | None, status: str = schema.STATUS_COMPLETED,
                 reason: str | None = None, final_val_acc: float | None = None,
                 top5: float | None = None, **values: Any) -> dict[str, Any]:  # fmt: skip
    """metrics.json content with exactly the keys of schema.METRICS_KEYS, in order (``values``: any of them)."""
    unknown = set(values) - set(schema.METRICS_KEYS)
    assert not unknown, f"not metrics.json keys: {sorted(unknown)}"
    mode = config["mode"]
    distill = mode == Mode.distill.value
    flat = _flatten(config)
    settings = {key: flat.get(key) for key in schema.SETTINGS_KEYS}
    settings |= {key: value for key, value in flat.items() if key.startswith("loss.")}
    if not distill:  # teachers and baselines train with CE: their loss settings are null
        settings |= {key: None for key in settings if key.startswith("loss.")}
    known = {
        "schema_version": 2,  # the record of schema 2: settings are a subset (complete_metrics writes today's)
        "status": status,
        "reason": reason,
        "mode": mode,
        "method": config["loss"]["name"],
        "dataset": config["dataset"]["name"],
        "model": TEACHER if mode == Mode.teacher.value else STUDENT,
        "teacher": TEACHER if distill else None,
        "final_test_acc": final_test_acc,
        "best_test_acc": final_test_acc,
        "best_epoch": EPOCHS if final_test_acc is not None else None,
        "final_test_acc_top5": top5,
        "final_val_acc": final_val_acc,
        "best_val_acc": final_val_acc,
        "best_val_epoch": EPOCHS if final_val_acc is not None else None,
        "teacher_test_acc": TEACHER_ACC if distill else None,
        "teacher_source": "store" if distill else None,
        "teacher_outputs": "cache" if distill else None,
        "model_params": TEACHER_PARAMS if mode == Mode.teacher.value else STUDENT_PARAMS,
        "teacher_params": TEACHER_PARAMS if distill else None,
        "epochs": EPOCHS if status == schema.STATUS_COMPLETED else 0,
        "wall_seconds": 12.5,
        "train_images_per_second": 5000.0,
        "soft_label_cache": "warm" if distill else None,
        "settings": settings,
    }
    known |= values
    return {key: known.get(key) for key in schema.METRICS_KEYS}  # keys the test does not know: None


def make_history(final_test_acc: float, epochs: int = EPOCHS, distill: bool = True,
                 method: str = "kd") -> list[dict[str, Any]]:  # fmt: skip
    """history.csv rows (schema.history_columns of the method's parts) climbing to ``final_test_acc``."""
    parts = METHOD_PARTS[method if distill else "ce"]
    rows = []
    for epoch in range(1, epochs + 1):
        acc = final_test_acc - 10.0 * (epochs - epoch)
        known = {
            "epoch": epoch, "lr": 0.1 / epoch, "train_loss": 2.0 / epoch, "train_ce": 1.5 / epoch,
            "train_acc": acc - 2.0, "test_acc": acc if epoch != 2 else None,  # epoch 2 not evaluated
            "test_loss": 1.0 / epoch, "seconds": 3.0,
        }  # fmt: skip
        known |= {f"train_{part}": 0.5 / epoch for part in parts if part != "ce"}
        rows.append({column: known.get(column) for column in schema.history_columns(parts)})
    return rows


def write_run(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any] | None = None,
              history: list[dict[str, Any]] | None = None, overrides: list[str] | None = None) -> Path:  # fmt: skip
    """Write one run directory: .hydra/{config,overrides}.yaml, then history.csv and metrics.json if given."""
    hydra_dir = run_dir / schema.HYDRA_DIR
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), hydra_dir / schema.CONFIG_FILE)
    (hydra_dir / schema.OVERRIDES_FILE).write_text(yaml.safe_dump(overrides or []))
    (hydra_dir / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    if history is not None:
        columns = list(history[0]) if history else list(schema.HISTORY_COLUMNS)
        lines = [",".join(columns)]
        for row in history:
            lines.append(",".join("" if row[c] is None else f"{row[c]}" for c in columns))
        (run_dir / schema.HISTORY_FILE).write_text("\n".join(lines) + "\n")
    if metrics is not None:
        (run_dir / schema.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return run_dir


@dataclass(frozen=True)
class FakeSweep:
    """Where the fake sweep lies and which run directory is which."""

    root: Path
    distill_dirs: dict[tuple[float, float, int], Path]
    baseline_dirs: dict[int, Path]
    teacher_dir: Path
    failed_dir: Path
    unfinished_dir: Path
    corrupt_dir: Path
    odd_schema_dir: Path

    @property
    def n_runs(self) -> int:
        """Number of run directories in the sweep."""
        return len(self.distill_dirs) + len(self.baseline_dirs) + 4


def write_fake_sweep(root: Path) -> FakeSweep:
    """A multirun at ``root``: 8 distill runs (2 seeds × T{1,4} × α{.5,.9}), one failed, one
    unfinished, one with a corrupt metrics.json, and nested sweeps of 2 baselines and 1 teacher.

    Run (T=4, α=0.9, seed 1) has an extra config key and lacks another (schema drift).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    distill_dirs = {}
    for index, (key, acc) in enumerate(sorted(DISTILL_ACC.items())):
        temperature, alpha, seed = key
        config = make_config(Mode.distill.value, seed, temperature, alpha)
        if key == (4.0, 0.9, 1):
            config["trainer"]["grad_clip"] = 1.0
            del config["scheduler"]["warmup_epochs"]
        distill_dirs[key] = write_run(root / str(index), config, make_metrics(config, acc),
                                      make_history(acc), overrides_of(config))  # fmt: skip
    failed_config = make_config(Mode.distill.value, 0, 8.0, 0.5)
    failed_dir = write_run(root / "8", failed_config,
                           make_metrics(failed_config, None, schema.STATUS_FAILED, FAILED_REASON),
                           None, overrides_of(failed_config))  # fmt: skip
    unfinished_config = make_config(Mode.distill.value, 1, 8.0, 0.5)
    unfinished_dir = write_run(root / "9", unfinished_config, None, make_history(70.0, epochs=2),
                               overrides_of(unfinished_config))  # fmt: skip
    corrupt_config = make_config(Mode.distill.value, 1, 8.0, 0.9)
    corrupt_dir = write_run(root / "10", corrupt_config, None, None, overrides_of(corrupt_config))
    (corrupt_dir / schema.METRICS_FILE).write_text('{"status": "completed", "final_te')
    baselines_root = root / "baselines"
    baselines_root.mkdir()
    (baselines_root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    baseline_dirs = {}
    for seed, acc in BASELINE_ACC.items():
        config = make_config(Mode.student.value, seed)
        baseline_dirs[seed] = write_run(baselines_root / str(seed), config, make_metrics(config, acc),
                                        make_history(acc, distill=False), overrides_of(config))  # fmt: skip
    teacher_config = make_config(Mode.teacher.value, 0)
    teacher_dir = write_run(root / "teachers" / "0", teacher_config, make_metrics(teacher_config, TEACHER_ACC),
                            make_history(TEACHER_ACC, distill=False), overrides_of(teacher_config))  # fmt: skip
    return FakeSweep(root, distill_dirs, baseline_dirs, teacher_dir, failed_dir, unfinished_dir, corrupt_dir,
                     distill_dirs[(4.0, 0.9, 1)])  # fmt: skip


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested dict (helper for metrics["settings"])."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = copy.deepcopy(value)
    return flat


#: Method sweep on a 100-class dataset with a validation split: (method, loss keys) -> per seed
#: (test accuracy, validation accuracy). Top-5 accuracy is test + TOP5_OFFSET.
METHOD_SWEEP_DATASET = "cifar100"
METHOD_SWEEP = {
    ("kd", (("temperature", 1.0),)): ((70.0, 69.0), (72.0, 71.0)),
    ("kd", (("temperature", 4.0),)): ((74.0, 73.0), (76.0, 75.0)),
    ("dkd", (("beta", 1.0), ("warmup", 5))): ((80.0, 70.0), (82.0, 70.0)),  # best on test
    ("dkd", (("beta", 8.0), ("warmup", 5))): ((78.0, 77.0), (78.0, 79.0)),  # best on validation
    ("dkd", (("beta", 1.0), ("warmup", 20))): ((76.0, 72.0), (76.0, 72.0)),
    ("dkd", (("beta", 8.0), ("warmup", 20))): ((77.0, 75.0), (79.0, 75.0)),
    ("fitnet", ()): ((73.0, 74.0), (75.0, 74.0)),
}  # fmt: skip
#: (test, validation) accuracy of the baseline student of each seed in the method sweep.
METHOD_SWEEP_BASELINE = {0: (70.0, 69.0), 1: (71.0, 70.0)}
TOP5_OFFSET = 10.0


def method_sweep_config(mode: str, seed: int, method: str = "kd", **loss_keys: Any) -> dict[str, Any]:
    """A config of the method sweep: cifar100 with a validation split, kd at alpha 0.9."""
    temperature = loss_keys.pop("temperature", 4.0)
    config = make_config(mode, seed, temperature, 0.9, method, **loss_keys)
    config["dataset"].update(name=METHOD_SWEEP_DATASET, num_classes=100, val_fraction=0.1)
    return config


def write_method_sweep(root: Path) -> Path:
    """Distill runs of kd (T 1, 4), dkd (beta × warmup grid) and fitnet, 2 seeds each, plus baselines;
    job directories named from their settings (not numbers)."""
    for (method, keys), per_seed in METHOD_SWEEP.items():
        for seed, (test, val) in enumerate(per_seed):
            config = method_sweep_config(Mode.distill.value, seed, method, **dict(keys))
            name = ",".join([f"loss={method}", *(f"loss.{k}={v:g}" for k, v in keys), f"trainer.seed={seed}"])
            write_run(root / name, config, make_metrics(config, test, final_val_acc=val, top5=test + TOP5_OFFSET),
                      make_history(test, method=method))  # fmt: skip
    for seed, (test, val) in METHOD_SWEEP_BASELINE.items():
        config = method_sweep_config(Mode.student.value, seed)
        write_run(root / f"mode=student,trainer.seed={seed}", config,
                  make_metrics(config, test, final_val_acc=val, top5=test + TOP5_OFFSET),
                  make_history(test, distill=False))  # fmt: skip
    return root


#: Two .npz datasets that share dataset.name: path -> (distill accuracy per seed, baseline accuracy per seed).
TWO_DATASETS = {"/data/a.npz": ((60.0, 62.0), (55.0, 56.0)), "/data/b.npz": ((90.0, 92.0), (85.0, 86.0))}


def write_two_dataset_sweep(root: Path) -> Path:
    """kd runs (T=4, α=0.9, seeds 0 and 1) and baselines on two ``arrays`` datasets of the same name."""
    for path, (distill, baseline) in TWO_DATASETS.items():
        for mode, accuracies in ((Mode.distill.value, distill), (Mode.student.value, baseline)):
            for seed, acc in enumerate(accuracies):
                config = make_config(mode, seed)
                config["dataset"] = {"name": "arrays", "path": path, "num_classes": 10,
                                     "loader": {"path": "${..path}"}}  # fmt: skip
                write_run(root / f"{Path(path).stem}_{mode}_{seed}", config, make_metrics(config, acc))
    return root


#: The teacher recipe of runs that predate ``teacher_training`` having its own values: it follows the student's.
FOLLOWING_TEACHER = {"epochs": "${trainer.epochs}", "optimizer": "${optimizer}", "scheduler": "${scheduler}"}
#: A pinned teacher recipe (its own values), as the teacher_training presets write it.
PINNED_TEACHER = {"epochs": 5, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9},
                  "scheduler": {"_target_": "torch.optim.lr_scheduler.MultiStepLR", "milestones": [3, 4]}}  # fmt: skip


def lr_sweep_accuracy(mode: str, lr: float, epochs: int, seed: int, temperature: float = 4.0) -> float:
    """A distinct, known test accuracy per run of :func:`write_lr_sweep`."""
    base = {Mode.teacher.value: 90.0, Mode.student.value: 60.0, Mode.distill.value: 62.0 + temperature}[mode]
    return base + 1000.0 * lr + epochs + 0.5 * seed


def lr_sweep_config(mode: str, seed: int, lr: float, epochs: int, temperature: float = 4.0,
                    teacher: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """A quickstart-like config: ``teacher_training`` follows the student's recipe unless ``teacher`` is given."""
    config = make_config(mode, seed, temperature, 0.9)
    config["optimizer"] = {"_target_": "torch.optim.Adam", "lr": lr, "weight_decay": 0.0}
    config["scheduler"] = {"_target_": "torch.optim.lr_scheduler.MultiStepLR", "milestones": [2, 3], "gamma": 0.1}
    config["trainer"]["epochs"] = epochs
    config["teacher_training"] = copy.deepcopy(teacher if teacher is not None else FOLLOWING_TEACHER)
    return config


def resolved(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its interpolations resolved (what run.py records)."""
    return OmegaConf.to_container(OmegaConf.create(config), resolve=True)


def complete_metrics(config: dict[str, Any], final_test_acc: float, teacher_id: str | None = None,
                     data_digest: str = "data-1", **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """metrics.json of the coming contract: ``settings`` the complete flat record of the resolved config
    (paths left out, dict values kept as dicts), plus ``teacher_id`` and ``data_digest``."""
    full = resolved(config)
    metrics = make_metrics(full, final_test_acc, **kwargs)
    settings = {key: value for key, value in _flatten(full).items() if not key.startswith("paths.")}
    if "optimizer" in full.get("teacher_training", {}):  # a dict value, as the complete record may hold
        settings = {k: v for k, v in settings.items() if not k.startswith("teacher_training.optimizer.")}
        settings["teacher_training.optimizer"] = full["teacher_training"]["optimizer"]
    metrics["settings"] = settings
    distill = config["mode"] == Mode.distill.value
    metrics["teacher_id"] = teacher_id if distill else None
    metrics["data_digest"] = data_digest
    return metrics


def write_lr_sweep(root: Path, lrs: tuple[float, ...] = (1e-3, 2e-3), epochs: int = 2, seeds: tuple[int, ...] = (0, 1),
                   temperatures: tuple[float, ...] = (1.0, 4.0), teacher: dict[str, Any] | None = None,
                   complete: bool = False) -> Path:  # fmt: skip
    """A quickstart-like sweep over ``optimizer.lr``: per lr a teacher, baselines and distill runs (T × seed).

    Old records by default (teacher_training following the student: one teacher per lr); ``complete``:
    records of the coming contract (complete settings, teacher_id from the teacher recipe).
    """
    for lr in lrs:
        recipe = resolved(lr_sweep_config(Mode.teacher.value, 0, lr, epochs, teacher=teacher))["teacher_training"]
        teacher_id = "t" + hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        jobs = [(Mode.teacher.value, 0, 4.0)] + [(Mode.student.value, s, 4.0) for s in seeds]
        jobs += [(Mode.distill.value, s, t) for t in temperatures for s in seeds]
        for mode, seed, temperature in jobs:
            config = lr_sweep_config(mode, seed, lr, epochs, temperature, teacher)
            acc = lr_sweep_accuracy(mode, lr, epochs, seed, temperature)
            metrics = complete_metrics(config, acc, teacher_id) if complete else make_metrics(resolved(config), acc)
            name = f"{mode},lr={lr:g},epochs={epochs},T={temperature:g},seed={seed}"
            write_run(root / name, config, metrics, make_history(acc, epochs=epochs, distill=mode == "distill"))
    return root


#: A paper-style method sweep (cifar10 with a validation split, 2 seeds): method -> per seed (final test, best test,
#: validation accuracy); the intervals of every pair overlap at n=2 (PAPER_APART: one method far ahead, spread small).
PAPER_METHODS = {
    "kd": ((80.0, 81.0, 79.0), (84.0, 84.5, 83.0)),
    "dkd": ((79.0, 80.0, 78.5), (83.5, 83.5, 82.0)),
    "crd": ((78.0, 79.5, 77.0), (80.0, 80.5, 78.0)),
}
PAPER_APART = {"kd": ((90.0, 90.5, 89.0), (90.2, 90.6, 89.2), (90.4, 90.7, 89.4)),
               "dkd": ((80.0, 80.5, 79.0), (80.2, 80.6, 79.2), (80.4, 80.7, 79.4))}  # fmt: skip
#: Per seed: (final test, best test, validation accuracy) of the baseline student.
PAPER_BASELINE = ((76.0, 77.0, 75.0), (77.0, 77.5, 76.0), (76.5, 77.0, 75.5))
#: What every paper-sweep run records beside its accuracies.
PAPER_SIZES = {"train_images": 45_000, "val_images": 5_000, "test_images": 10_000}
PAPER_TEACHER = {"final_test_acc": 93.0, "best_test_acc": 93.4, "final_val_acc": 92.5, "test_ece": 4.5,
                 "model_macs": 125_000_000}  # fmt: skip
PAPER_METHOD_PARTS = {"kd": (0, 0), "dkd": (0, 0), "crd": (65_536, 41_984)}  # method_params, method_macs
PAPER_STUDENT_MACS = 12_500_000
PAPER_TRAIN_SECONDS = 30.0  # epoch loop of 3 epochs, cache fill included
PAPER_FILL_SECONDS = 6.0  # paid by kd's seed-0 job (it found the cache empty)
TEACHER_ID_OF_PAPER = "t-paper"
#: The warning each dkd run of the paper sweep records: METHOD_KEYS' warm-up of 20 epochs in an EPOCHS-epoch run
#: (the line kd_hydra.methods.dkd.DKD.fit_warnings writes; tests/test_first_hour.py pins it there).
PAPER_DKD_WARNING = (
    "loss.warmup: 20 warm-up epochs in a 3-epoch run: the dkd term is weighted 0.05 to 0.15 of "
    "loss.dkd_weight and never reaches it"
)
#: Test logits of the paper sweep's teacher and baseline student (4 images, 3 classes): 3 of 4 agree.
PAPER_TEACHER_LOGITS = ((4.0, 1.0, 0.0), (0.0, 3.0, 1.0), (1.0, 0.0, 2.0), (2.0, 1.0, 0.0))
PAPER_BASELINE_LOGITS = ((3.0, 1.0, 0.0), (0.0, 2.0, 1.0), (2.0, 0.0, 1.0), (1.0, 0.5, 0.0))


def write_test_logits(run_dir: Path, logits: tuple[tuple[float, ...], ...]) -> None:
    """``schema.TEST_LOGITS_FILE`` as the runs keep it (float16 .npy)."""
    import numpy as np

    np.save(run_dir / schema.TEST_LOGITS_FILE, np.asarray(logits, dtype=np.float16))


def write_paper_sweep(root: Path, methods: dict[str, tuple[tuple[float, float, float], ...]] = PAPER_METHODS,
                      student: str = STUDENT) -> Path:  # fmt: skip
    """A method sweep with everything the paper table reads: a teacher run (validation and best accuracy, ECE,
    MACs, test logits), baselines (test logits) and distill runs of ``methods`` with agreement, KL, ECE, MACs,
    loop seconds, the cache fill (kd's seed 0 paid it) and dkd's warm-up warning; complete records (teacher_id,
    data_digest)."""
    seeds = max(len(per_seed) for per_seed in methods.values())

    def config_of(mode: str, seed: int, method: str = "kd") -> dict[str, Any]:
        config = method_sweep_config(mode, seed, method)
        config["dataset"].update(name=DATASET, num_classes=10)
        config["student"]["name"] = student
        return config

    teacher_config = config_of(Mode.teacher.value, 0)
    teacher = {key: value for key, value in PAPER_TEACHER.items() if key != "final_test_acc"}
    metrics = complete_metrics(teacher_config, PAPER_TEACHER["final_test_acc"], teacher_id=TEACHER_ID_OF_PAPER,
                               **PAPER_SIZES, **teacher)  # fmt: skip
    metrics["teacher_id"] = TEACHER_ID_OF_PAPER  # a teacher run's own identity
    run = write_run(root / "teacher", teacher_config, metrics, make_history(93.0, epochs=10, distill=False))
    write_test_logits(run, PAPER_TEACHER_LOGITS)
    for seed in range(seeds):
        last, best, val = PAPER_BASELINE[seed]
        config = config_of(Mode.student.value, seed)
        metrics = complete_metrics(config, last, final_val_acc=val, best_test_acc=best, test_ece=3.0 + seed,
                                   model_macs=PAPER_STUDENT_MACS, train_seconds=12.0, **PAPER_SIZES)  # fmt: skip
        run = write_run(root / f"baseline-{seed}", config, metrics, make_history(last, distill=False))
        write_test_logits(run, PAPER_BASELINE_LOGITS)
    for method, per_seed in methods.items():
        params, macs = PAPER_METHOD_PARTS[method]
        for seed, (last, best, val) in enumerate(per_seed):
            config = config_of(Mode.distill.value, seed, method)
            fill = PAPER_FILL_SECONDS if (method, seed) == ("kd", 0) else (0.0 if method != "crd" else None)
            metrics = complete_metrics(
                config, last, teacher_id=TEACHER_ID_OF_PAPER, final_val_acc=val, best_test_acc=best,
                teacher_val_acc=PAPER_TEACHER["final_val_acc"], teacher_test_ece=PAPER_TEACHER["test_ece"],
                teacher_macs=PAPER_TEACHER["model_macs"], model_macs=PAPER_STUDENT_MACS, method_params=params,
                method_macs=macs, teacher_agreement=85.0 + seed, teacher_kl=0.25 + 0.05 * seed, test_ece=2.0 + seed,
                train_seconds=PAPER_TRAIN_SECONDS, soft_label_cache_fill_seconds=fill, **PAPER_SIZES,
                warnings=[PAPER_DKD_WARNING] if method == "dkd" else [],
            )  # fmt: skip
            write_run(root / f"{method}-{seed}", config, metrics, make_history(last, method=method))
    return root
