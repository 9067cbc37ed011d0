"""kd-hydra vs a tutorial-style KD loop on Tiny ImageNet (64x64, 200 classes) on CPU.

One invocation, every step a subprocess started with cwd = the repo root, every file in the workdir:

a. teacher: ``run.py mode=teacher`` trains ``--teacher`` (default resnet56) for ``--teacher-epochs``
   into the teacher store. It is the first run with an empty cache directory, so it also decodes the
   JPEGs once into the decode store (``<cache>/decoded/``): the **one-time decode cost** is read from
   its log (``decoded tiny_imagenet once: N images in S s``). Not otherwise timed.
b. suite KD (``loss=kd``) of ``--student`` (default resnet20), soft-label cache cleared: first run
   ``cold`` (decode store warm, teacher logits computed), second run ``warm`` (both caches warm);
   their ``history.csv`` seconds and ``train_images_per_second``.
c. ``reference_tiny_imagenet.py``: ImageFolder + PIL transforms + ``DataLoader(num_workers=2)``,
   teacher forward on every batch, ``.item()`` per step, loading the same teacher ``model.pt``.
   Same batch size, epochs, SGD settings, cosine schedule, seed, T and alpha.

Target: warm-suite epoch >= 5x faster than the reference epoch (both: training + evaluation).
Prints a table with PASS/MISS and writes JSON to ``--out``. ``--classes C --train-limit N`` run on a
symlinked subset (the first C classes, N training images each) for smoke tests.

    python benchmarks/compare_tiny_imagenet.py                                   # full (long)
    python benchmarks/compare_tiny_imagenet.py --classes 10 --train-limit 20 --teacher-epochs 1
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_cpu import (
    REPO_ROOT,
    CommandFailed,
    clear_soft_labels,
    load_average,
    mean,
    number_text,
    ratio,
    read_epoch_seconds,
    read_metrics,
    run_timed,
    verdict,
)

DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "tiny-imagenet-subset").resolve()
REFERENCE_SCRIPT = REPO_ROOT / "benchmarks" / "reference_tiny_imagenet.py"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
IMAGE_SUFFIX = ".JPEG"
EPOCH_SPEEDUP_TARGET = 5.0  # issue 11
DECODE_LINE = re.compile(r"decoded (\S+) once: (\d+) images in ([0-9.]+) s")
REUSED_LINE = re.compile(r"decoded store \S+ reused")


def make_subset(source_root: Path, target_root: Path, classes: int | None, per_class: int | None) -> Path:
    """A Tiny ImageNet layout under ``target_root`` with the first ``classes`` wnids and ``per_class`` train images.

    Files are symlinks to ``source_root``'s; val keeps every image of the kept classes. Returns ``target_root``.
    """
    source, target = source_root / TINY_IMAGENET_FOLDER, target_root / TINY_IMAGENET_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    wnids = sorted(line.strip() for line in (source / "wnids.txt").read_text().splitlines() if line.strip())
    wnids = wnids[:classes] if classes is not None else wnids
    (target / "val" / "images").mkdir(parents=True)
    (target / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for wnid in wnids:
        if per_class is None:
            (target / "train").mkdir(exist_ok=True)
            (target / "train" / wnid).symlink_to(source / "train" / wnid)
            continue
        images = target / "train" / wnid / "images"
        images.mkdir(parents=True)
        names = sorted(p.name for p in (source / "train" / wnid / "images").iterdir() if p.name.endswith(IMAGE_SUFFIX))
        for name in names[:per_class]:
            (images / name).symlink_to(source / "train" / wnid / "images" / name)
    kept = set(wnids)
    lines = []
    for line in (source / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in kept:
            lines.append(line + "\n")
            (target / "val" / "images" / fields[0]).symlink_to(source / "val" / "images" / fields[0])
    (target / "val" / "val_annotations.txt").write_text("".join(lines))
    return target_root


def decode_seconds_from_log(log_path: Path) -> dict[str, Any]:
    """The decode step of a run's log: ``{"seconds", "images"}`` if it decoded, ``{"reused": True}`` if not."""
    text = log_path.read_text()
    match = DECODE_LINE.search(text)
    if match:
        return {"seconds": float(match.group(3)), "images": int(match.group(2)), "reused": False}
    return {"seconds": None, "images": None, "reused": bool(REUSED_LINE.search(text))}


class Benchmark:
    """Workdir, environment and the settings shared by every run of one comparison."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir).resolve()
        self.cache_dir = self.workdir / "cache"
        self.logs = self.workdir / "logs"
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KD_HYDRA_CACHE_DIR": str(self.cache_dir),
                    "KD_HYDRA_OUTPUT_DIR": str(self.workdir / "outputs")}

    def suite_overrides(self) -> list[str]:
        a = self.args
        return [
            "dataset=tiny_imagenet", f"paths.data_dir={a.data_root}", f"teacher={a.teacher}", f"student={a.student}",
            f"trainer.epochs={a.epochs}", f"trainer.batch_size={a.batch_size}", f"trainer.seed={a.seed}",
            "trainer.device=cpu", f"trainer.num_threads={a.threads}", "trainer.progress=false",
            "optimizer=sgd", f"optimizer.lr={a.lr}", "scheduler=cosine", f"teacher_training.epochs={a.teacher_epochs}",
            "hydra.callbacks.analysis.enabled=false", *a.suite_override,
        ]

    def suite(self, name: str, *overrides: str) -> tuple[Path, float]:
        run_dir = self.workdir / "runs" / name
        command = [sys.executable, "run.py", *self.suite_overrides(), *overrides, f"hydra.run.dir={run_dir}"]
        return run_dir, run_timed(command, self.env, self.logs / f"{name}.log")

    def train_teacher(self) -> dict[str, Any]:
        run_dir, seconds = self.suite("teacher", "mode=teacher")
        metrics = read_metrics(run_dir)
        return {"checkpoint": metrics["checkpoint"], "test_acc": metrics["final_test_acc"],
                "epochs": metrics["epochs"], "source": metrics["teacher_source"], "process_wall_seconds": seconds,
                "decode": decode_seconds_from_log(self.logs / "teacher.log")}

    def suite_kd(self, name: str) -> dict[str, Any]:
        a = self.args
        run_dir, seconds = self.suite(name, "mode=distill", "loss=kd", f"loss.temperature={number_text(a.temperature)}",
                                      f"loss.alpha={number_text(a.alpha)}")
        metrics = read_metrics(run_dir)
        epochs = read_epoch_seconds(run_dir)
        return {"process_wall_seconds": seconds, "run_wall_seconds": metrics["wall_seconds"],
                "reported_images_per_second": metrics["train_images_per_second"], "epoch_seconds": epochs,
                "mean_epoch_seconds": mean(epochs), "final_test_acc": metrics["final_test_acc"],
                "soft_label_cache": metrics.get("soft_label_cache"), "teacher_outputs": metrics.get("teacher_outputs"),
                "decode": decode_seconds_from_log(self.logs / f"{name}.log")}

    def reference(self, checkpoint: str) -> dict[str, Any]:
        import json

        a = self.args
        out = self.workdir / "reference" / "reference.json"
        command = [sys.executable, str(REFERENCE_SCRIPT), "--data-dir", str(a.data_root), "--teacher-checkpoint",
                   checkpoint, "--teacher-arch", a.teacher, "--student-arch", a.student,
                   "--temperature", number_text(a.temperature), "--alpha", number_text(a.alpha),
                   "--epochs", str(a.epochs), "--seed", str(a.seed), "--batch-size", str(a.batch_size),
                   "--num-workers", str(a.num_workers), "--lr", str(a.lr), "--threads", str(a.threads),
                   "--out", str(out)]
        seconds = run_timed(command, self.env, self.logs / "reference.log")
        result = json.loads(out.read_text())
        return {"process_wall_seconds": seconds, "run_wall_seconds": result["wall_seconds"],
                "reported_images_per_second": result["images_per_second"], "epoch_seconds": result["epoch_seconds"],
                "mean_epoch_seconds": mean(result["epoch_seconds"]), "final_test_acc": result["final_test_acc"],
                "num_train": result["num_train"], "num_test": result["num_test"]}


def format_report(results: Mapping[str, Any]) -> str:
    conf, teacher = results["config"], results["teacher"]
    lines = [(f"kd-hydra vs tutorial-style reference on Tiny ImageNet, CPU ({conf['threads']} threads): "
             f"{conf['teacher']} -> {conf['student']}, {conf['num_train']} train / {conf['num_test']} val images, "
             f"64x64, batch {conf['batch_size']}, {conf['epochs']} epoch(s), SGD lr {conf['lr']} + cosine, "
             f"T={number_text(conf['temperature'])} alpha={number_text(conf['alpha'])}, "
             f"reference num_workers={conf['num_workers']}")]
    if conf["suite_extra_overrides"]:
        lines.append(f"extra suite overrides: {' '.join(conf['suite_extra_overrides'])}")
    lines.append(f"load average before / after: {conf['load_before']} / {results.get('load_after')}  "
                 "(shared machine: wall-clock numbers are noisy)")
    decode = teacher["decode"]
    if decode["seconds"] is not None:
        decode_text = f"{decode['seconds']:.1f}s for {decode['images']} images ({decode['images'] / decode['seconds']:.0f} img/s)"
    else:
        decode_text = "n/a (no decode line in the teacher log: " + \
            ("the store was already warm)" if decode["reused"] else "is the decode-once store on this branch?)")
    lines.append(f"a. one-time decode into the decode store (first run): {decode_text}")
    lines.append(f"   teacher {conf['teacher']}: test acc {teacher['test_acc']:.2f}% after {teacher['epochs']} epoch(s), "
                 f"process {teacher['process_wall_seconds']:.1f}s (decode included; not compared)")
    lines.append("")
    lines.append(f"   {'':<22}{'loop img/s':>11}{'epoch img/s':>12}{'epoch s (mean)':>15}{'process s':>11}{'test acc':>10}")
    for label, key in (("b. suite, cache cold", "suite_cold"), ("b. suite, cache warm", "suite_warm"),
                       ("c. reference", "reference")):
        side = results[key]
        lines.append(f"   {label:<22}{side['reported_images_per_second']:>11.0f}{side['epoch_images_per_second']:>12.0f}"
                     f"{side['mean_epoch_seconds']:>15.2f}{side['process_wall_seconds']:>11.1f}"
                     f"{side['final_test_acc']:>9.2f}%")
    warm = results["suite_warm"]
    lines.append(f"   warm run's teacher outputs: {warm.get('teacher_outputs')}/{warm.get('soft_label_cache')} "
                 "(expected: cache/warm; live means the soft-label cache was not used)")
    speedup = results["epoch_speedup_warm_vs_reference"]
    lines.append(f"   epoch speed-up, warm suite vs reference: {speedup:.2f}x  (target >= {EPOCH_SPEEDUP_TARGET:g}x)  "
                 f"{verdict(speedup >= EPOCH_SPEEDUP_TARGET)}")
    lines.append(f"   epoch speed-up, cold suite vs reference: {results['epoch_speedup_cold_vs_reference']:.2f}x "
                 "(information only)")
    payback = results.get("decode_payback_epochs")
    if payback is not None:
        lines.append(f"   the one-time decode is paid back after {payback:.2f} warm epoch(s) "
                     "(decode s / (reference epoch s - warm suite epoch s))")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"folder holding {TINY_IMAGENET_FOLDER}/ (default: %(default)s)")
    parser.add_argument("--teacher", default="resnet56", help="zoo arch of the teacher (default: %(default)s)")
    parser.add_argument("--student", default="resnet20", help="zoo arch of the student (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="student epochs, both sides (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=int, default=1, help="teacher epochs, untimed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of both sides' main process (default: cores, %(default)s)")
    parser.add_argument("--num-workers", type=int, default=2, help="reference DataLoader workers (tutorial: 2)")
    parser.add_argument("--classes", type=int, default=None, help="keep only the first C classes (smoke tests)")
    parser.add_argument("--train-limit", type=int, default=None, metavar="N",
                        help="keep only N training images per class (smoke tests)")
    parser.add_argument("--workdir", default=None, help="runs, caches, logs (default: a new temp dir)")
    parser.add_argument("--out", default=None, help="results JSON (default: WORKDIR/results.json)")
    parser.add_argument("--suite-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra run.py override for every suite run (repeatable)")
    args = parser.parse_args(argv)
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="kd_hydra_compare_tiny_")
    if args.out is None:
        args.out = str(Path(args.workdir) / "results.json")
    args.data_dir = args.data_dir.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data_dir / TINY_IMAGENET_FOLDER / "wnids.txt").is_file():
        print(f"error: --data-dir: {args.data_dir} has no {TINY_IMAGENET_FOLDER}/wnids.txt; pass the folder that "
              f"holds {TINY_IMAGENET_FOLDER}", file=sys.stderr)
        return 2
    for key, value in (("--classes", args.classes), ("--train-limit", args.train_limit)):
        if value is not None and value < 1:
            print(f"error: {key}: must be a positive integer", file=sys.stderr)
            return 2
    args.data_root = args.data_dir
    if args.classes is not None or args.train_limit is not None:
        args.data_root = make_subset(args.data_dir, Path(args.workdir).resolve() / "data", args.classes,
                                     args.train_limit)
    bench = Benchmark(args)
    results: dict[str, Any] = {"config": {
        "data_dir": str(args.data_dir), "data_root": str(args.data_root), "classes": args.classes,
        "train_limit": args.train_limit, "teacher": args.teacher, "student": args.student, "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "temperature": args.temperature, "alpha": args.alpha, "threads": args.threads,
        "num_workers": args.num_workers, "workdir": str(bench.workdir), "python": sys.executable,
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "load_before": load_average(),
        "suite_common_overrides": bench.suite_overrides(), "suite_extra_overrides": args.suite_override}}
    started = time.perf_counter()
    print(f"workdir {bench.workdir} (logs in {bench.logs})", flush=True)
    try:
        print("a. teacher (run.py mode=teacher; first run: decodes the images once) ...", flush=True)
        results["teacher"] = bench.train_teacher()
        clear_soft_labels(bench.cache_dir)
        print("b. suite KD: soft-label cache cold, then warm ...", flush=True)
        results["suite_cold"] = bench.suite_kd("kd_cold")
        results["suite_warm"] = bench.suite_kd("kd_warm")
        print("c. reference (ImageFolder + PIL + DataLoader workers, teacher every step) ...", flush=True)
        results["reference"] = bench.reference(results["teacher"]["checkpoint"])
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    num_train = results["reference"]["num_train"]
    results["config"]["num_train"], results["config"]["num_test"] = num_train, results["reference"]["num_test"]
    for key in ("suite_cold", "suite_warm", "reference"):
        results[key]["epoch_images_per_second"] = ratio(num_train, results[key]["mean_epoch_seconds"])
    reference_epoch, warm_epoch = results["reference"]["mean_epoch_seconds"], results["suite_warm"]["mean_epoch_seconds"]
    speedup = ratio(reference_epoch, warm_epoch)
    results["epoch_speedup_warm_vs_reference"] = speedup
    results["epoch_speedup_cold_vs_reference"] = ratio(reference_epoch, results["suite_cold"]["mean_epoch_seconds"])
    decode_seconds = results["teacher"]["decode"]["seconds"]
    saved = reference_epoch - warm_epoch
    results["decode_payback_epochs"] = decode_seconds / saved if decode_seconds is not None and saved > 0 else None
    results["targets"] = {"epoch_speedup": {"value": speedup, "target": EPOCH_SPEEDUP_TARGET,
                                            "passed": speedup >= EPOCH_SPEEDUP_TARGET}}
    results["load_after"] = load_average()
    results["total_seconds"] = time.perf_counter() - started
    from kd_hydra.outputs import write_json

    write_json(Path(args.out), results)
    print()
    print(format_report(results))
    print(f"\ntotal {results['total_seconds']:.0f}s; results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
