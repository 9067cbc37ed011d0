"""What the benchmark scripts share: paths, subprocess timing, run results, workdir and suite settings.

Not a script. Every benchmark imports it (``python benchmarks/<script>.py`` puts ``benchmarks/`` on
``sys.path``); importing it also puts the repository root on ``sys.path`` so that ``kd_hydra`` is found.
Only the standard library is imported at module level (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so that `python benchmarks/<script>.py` imports this checkout's kd_hydra
    sys.path.insert(0, str(REPO_ROOT))

BENCHMARKS = REPO_ROOT / "benchmarks"
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
DEFAULT_NPZ = SHARED_DATA / "cifar10-prefix.npz"
LOG_TAIL_CHARS = 3000
RGB_CHANNELS = 3


class CommandFailed(RuntimeError):
    """A benchmark subprocess exited non-zero; the message holds the tail of its output."""


def run_timed(command: Sequence[str], env: Mapping[str, str], log_path: Path) -> float:
    """Run ``command`` with cwd = repo root, output to ``log_path``; return its wall seconds (start-up included)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        started = time.perf_counter()
        completed = subprocess.run(
            list(command), cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, check=False
        )
        seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log_path.read_text()[-LOG_TAIL_CHARS:]
        raise CommandFailed(f"exit status {completed.returncode}: {' '.join(command)}\n--- {log_path} ---\n{tail}")
    return seconds


# -- numbers and text ------------------------------------------------------------------------------


def number_text(value: float) -> str:
    """A float as Hydra and file names like it: 4.0 -> '4', 0.5 -> '0.5'."""
    return format(value, "g")


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def load_average() -> str:
    """The 1/5/15-minute load average as text (recorded before and after: the machine may be shared)."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


# -- workdir, environment, results -----------------------------------------------------------------


def add_workdir_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workdir`` and ``--out``, filled by :func:`default_workdir_and_out` after parsing."""
    parser.add_argument("--workdir", default=None, help="runs, caches and logs (default: a new temp dir)")
    parser.add_argument("--out", default=None, help="results JSON (default: WORKDIR/results.json)")


def default_workdir_and_out(args: argparse.Namespace, prefix: str) -> None:
    """Fill ``--workdir`` (a new temp dir named ``prefix*``) and ``--out`` (WORKDIR/results.json) when not given."""
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix=prefix)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.out is None:
        args.out = str(Path(args.workdir) / "results.json")


def machine_record() -> dict[str, Any]:
    """Where a benchmark ran: interpreter, platform, cores and the load average before it started."""
    import platform

    return {
        "python": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_before": load_average(),
    }


def finish(results: dict[str, Any], out: str, report: Callable[[Mapping[str, Any]], str], started: float) -> int:
    """Record the load average and total seconds, write ``results`` to ``out``, print ``report(results)``; 0."""
    results["load_after"] = load_average()
    results["total_seconds"] = time.perf_counter() - started
    write_results(out, results)
    print()
    print(report(results))
    print(f"\ntotal {results['total_seconds']:.0f}s; results written to {out}")
    return 0


def suite_env(workdir: Path) -> dict[str, str]:
    """The environment of every ``run.py`` subprocess: this checkout's code, caches and outputs in ``workdir``."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "KD_HYDRA_CACHE_DIR": str(workdir / "cache"),
        "KD_HYDRA_OUTPUT_DIR": str(workdir / "outputs"),
    }


def clear_soft_labels(cache_dir: Path) -> None:
    """Delete the soft-label cache (never the teacher store), so the next distill run starts cold."""
    shutil.rmtree(cache_dir / "soft_labels", ignore_errors=True)


def write_results(out: str | Path, results: Mapping[str, Any]) -> None:
    """``results`` as JSON at ``out`` (atomically; numbers that JSON lacks become null)."""
    from kd_hydra.records.files import write_json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(out), results)


# -- suite runs ------------------------------------------------------------------------------------


def add_recipe_arguments(parser: argparse.ArgumentParser, epochs: int, teacher_epochs: int) -> None:
    """The settings both sides of a CPU comparison share (read by :func:`cpu_suite_overrides` and
    :func:`reference_loop_args`), and ``--suite-override``."""
    parser.add_argument("--epochs", type=int, default=epochs, help="student epochs, both sides (default: %(default)s)")
    parser.add_argument(
        "--teacher-epochs",
        type=int,
        default=teacher_epochs,
        help="teacher epochs (teacher_training.epochs), trained once and untimed (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="both sides, teacher too (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD lr, both sides, teacher too (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of both sides' main process (default: cores, %(default)s)",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="reference DataLoader workers (tutorial: 2)")
    parser.add_argument(
        "--suite-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra run.py override for every suite run (repeatable), e.g. trainer.channels_last=false",
    )


def cpu_suite_overrides(args: argparse.Namespace) -> list[str]:
    """The student's and the teacher's recipe every CPU comparison uses: SGD + cosine at ``args.lr``.

    The teacher has its own recipe (``teacher_training.*``); it gets the same optimizer, lr and batch
    size as the student and ``args.teacher_epochs`` epochs.
    """
    return [
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.seed={args.seed}",
        "trainer.device=cpu",
        f"trainer.num_threads={args.threads}",
        "trainer.progress=false",
        "optimizer=sgd",
        f"optimizer.lr={args.lr}",
        "scheduler=cosine",
        f"teacher_training.epochs={args.teacher_epochs}",
        f"teacher_training.batch_size={args.batch_size}",
        "optimizer@teacher_training.optimizer=sgd",
        f"teacher_training.optimizer.lr={args.lr}",
        "scheduler@teacher_training.scheduler=cosine",
        "hydra.callbacks.analysis.enabled=false",
    ]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def read_epoch_seconds(run_dir: Path) -> list[float]:
    """The ``seconds`` column of a run's history.csv (training, cache work and evaluation of each epoch)."""
    with open(run_dir / "history.csv", newline="") as handle:
        return [float(row["seconds"]) for row in csv.DictReader(handle)]


def suite_result(run_dir: Path, process_seconds: float | None = None) -> dict[str, Any]:
    """One suite run's numbers from its metrics.json and history.csv (process seconds if timed)."""
    metrics = read_metrics(run_dir)
    epoch_seconds = read_epoch_seconds(run_dir)
    return {
        "process_wall_seconds": process_seconds,
        "run_wall_seconds": metrics["wall_seconds"],
        "reported_images_per_second": metrics["train_images_per_second"],
        "epoch_seconds": epoch_seconds,
        "mean_epoch_seconds": mean(epoch_seconds),
        "final_test_acc": metrics["final_test_acc"],
        "mode": metrics.get("mode"),
        "method": metrics.get("method"),
        "soft_label_cache": metrics.get("soft_label_cache"),
        "teacher_outputs": metrics.get("teacher_outputs"),
        "teacher_test_acc": metrics.get("teacher_test_acc"),
    }


# -- reference runs --------------------------------------------------------------------------------


def reference_loop_args(a: argparse.Namespace, out: Path) -> list[str]:
    """The command-line arguments every reference loop shares: schedule, seed, loader, threads, output file."""
    return [
        "--epochs",
        str(a.epochs),
        "--seed",
        str(a.seed),
        "--batch-size",
        str(a.batch_size),
        "--num-workers",
        str(a.num_workers),
        "--lr",
        str(a.lr),
        "--threads",
        str(a.threads),
        "--out",
        str(out),
    ]


def reference_result(out: Path, process_seconds: float) -> dict[str, Any]:
    """One reference run's numbers from the JSON it wrote to ``out``."""
    result = json.loads(out.read_text())
    return {
        "process_wall_seconds": process_seconds,
        "run_wall_seconds": result["wall_seconds"],
        "reported_images_per_second": result["images_per_second"],
        "epoch_seconds": result["epoch_seconds"],
        "mean_epoch_seconds": mean(result["epoch_seconds"]),
        "final_test_acc": result["final_test_acc"],
        **{key: result[key] for key in ("num_train", "num_test") if key in result},
    }


def print_json_result(result: Mapping[str, Any], out: str | None) -> None:
    """A reference loop's result: one JSON line on stdout, and the same line in ``out`` when given."""
    text = json.dumps(result)
    if out:
        from kd_hydra.records.files import atomic_write_text

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), text + "\n")
    print(text, flush=True)


# -- inputs ----------------------------------------------------------------------------------------


def save_untrained_teacher(path: Path, arch: str, num_classes: int, image_size: int, seed: int) -> str:
    """``arch`` built by kd-hydra's model builder (seeded, untrained), saved as a kd-hydra checkpoint.

    Returns the checkpoint's SHA-256. Its accuracy is meaningless; throughput does not depend on it.
    """
    import torch

    from kd_hydra.models import build_model
    from kd_hydra.models.checkpoints import ArchSignature, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(arch, num_classes, RGB_CHANNELS, image_size)
    signature = ArchSignature(
        name=arch, source="zoo", num_classes=num_classes, in_channels=RGB_CHANNELS, image_size=image_size
    )
    return save_checkpoint(path, model, signature)


def write_npz_subset(npz: Path, train_limit: int | None, test_limit: int | None, workdir: Path) -> Path:
    """First ``train_limit`` training and ``test_limit`` test images of ``npz`` (None: all), as WORKDIR/subset.npz."""
    import io

    import numpy as np  # here: keeps `--help` fast

    from kd_hydra.records.files import atomic_write_bytes

    with np.load(npz, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["x_train"], arrays["y_train"] = arrays["x_train"][:train_limit], arrays["y_train"][:train_limit]
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][:test_limit], arrays["y_test"][:test_limit]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = workdir / "subset.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def add_npz_arguments(parser: argparse.ArgumentParser) -> None:
    """``--npz``, ``--train-limit`` and ``--test-limit`` (resolved by :func:`prepare_npz`)."""
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="dataset .npz (default: %(default)s)")
    parser.add_argument(
        "--train-limit", type=int, default=None, metavar="N", help="use only the first N training images (smoke tests)"
    )
    parser.add_argument(
        "--test-limit", type=int, default=None, metavar="N", help="use only the first N test images (smoke tests)"
    )


def prepare_npz(args: argparse.Namespace, workdir: Path) -> str | None:
    """Check ``--npz`` and the limits; with a limit, point ``args.npz`` at a subset in ``workdir``.

    Returns a one-line error (None when the arguments are fine).
    """
    args.npz = Path(args.npz).resolve()
    if not args.npz.is_file():
        return (
            f"--npz: {args.npz}: no such file; pass a .npz with x_train, y_train, x_test, y_test (the benchmarks' "
            "file: python benchmarks/make_cifar10_prefix.py --archive cifar-10-python.tar.gz --out cifar10-prefix.npz)"
        )
    for key, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 1:
            return f"{key}: must be a positive number of images"
    if args.train_limit is not None or args.test_limit is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        args.npz = write_npz_subset(args.npz, args.train_limit, args.test_limit, workdir)
    return None


def npz_workspace(args: argparse.Namespace, prefix: str) -> Workspace | None:
    """The benchmark's :class:`Workspace` once ``--workdir``/``--out`` are filled and ``--npz`` is checked (see
    :func:`prepare_npz`); None after printing the one-line error (the caller exits 2)."""
    default_workdir_and_out(args, prefix)
    space = Workspace(args.workdir)
    problem = prepare_npz(args, space.workdir)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return None
    return space


def npz_sizes(npz: Path) -> tuple[int, int]:
    """Number of training and test images of an ``.npz``."""
    import numpy as np  # here: keeps `--help` fast

    with np.load(npz, allow_pickle=False) as archive:
        return len(archive["y_train"]), len(archive["y_test"])


class Workspace:
    """A benchmark's workdir (``runs/``, ``logs/``, ``cache/``, ``outputs/``) and how it starts subprocesses."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.cache_dir = self.workdir / "cache"
        self.logs = self.workdir / "logs"
        self.env = suite_env(self.workdir)

    def run(self, name: str, command: Sequence[str]) -> float:
        """Run ``command`` logging to ``logs/<name>.log``; its wall seconds (raises :class:`CommandFailed`)."""
        return run_timed(command, self.env, self.logs / f"{name}.log")

    def run_suite(self, name: str, overrides: Sequence[str], multirun: bool = False) -> float:
        """``run.py`` (``-m`` if ``multirun``) with ``overrides``, logging to ``logs/<name>.log``; its wall seconds."""
        return self.run(name, [sys.executable, "run.py", *(["-m"] if multirun else []), *overrides])

    def suite_single(self, name: str, overrides: Sequence[str]) -> dict[str, Any]:
        """One ``run.py`` run into ``runs/<name>``; its numbers (:func:`suite_result`)."""
        run_dir = self.workdir / "runs" / name
        seconds = self.run_suite(name, [*overrides, f"hydra.run.dir={run_dir}"])
        return {**suite_result(run_dir, seconds), "run_dir": str(run_dir)}

    def train_teacher(self, overrides: Sequence[str]) -> dict[str, Any]:
        """``run.py mode=teacher`` into ``runs/teacher``: the teacher in the store (trained unless already there)."""
        run_dir = self.workdir / "runs" / "teacher"
        seconds = self.run_suite("teacher", [*overrides, "mode=teacher", f"hydra.run.dir={run_dir}"])
        metrics = read_metrics(run_dir)
        return {
            "checkpoint": metrics["checkpoint"],
            "test_acc": metrics["final_test_acc"],
            "source": metrics["teacher_source"],
            "epochs": metrics["epochs"],
            "process_wall_seconds": seconds,
        }
