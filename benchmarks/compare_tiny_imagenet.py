"""kd-hydra vs a tutorial-style KD loop on Tiny ImageNet (64x64, 200 classes) on CPU.

One invocation, every step a subprocess started with cwd = the repo root, every file in the workdir:

a. teacher: ``run.py mode=teacher`` trains ``--teacher`` (default resnet56) for ``--teacher-epochs``
   into the teacher store. It is the first run with an empty cache directory, so it also decodes the
   JPEGs once into the decode store (``<cache>/decoded/``): the **one-time decode cost** is read from
   its log (``decoded tiny_imagenet once: N images in S s``). Not otherwise timed.
   ``--untrained-teacher`` instead builds the teacher arch with ``kd_hydra.models.build_model``
   (seeded, untrained) and saves it with ``kd_hydra.models.checkpoints.save_checkpoint`` into the workdir; every
   suite run gets ``teacher.checkpoint=<that file>`` and the decode cost is read from the cold KD run's
   log. Accuracies are then meaningless; the times are valid (they do not depend on the weights).
b. suite KD (``loss=kd``) of ``--student`` (default resnet20), soft-label cache cleared: first run
   ``cold`` (teacher logits computed), second run ``warm`` (both caches warm); their
   ``train_images_per_second`` and ``history.csv`` seconds.
c. ``reference_tiny_imagenet.py``: ImageFolder + PIL transforms + ``DataLoader(num_workers=2)``,
   teacher forward on every batch, ``.item()`` per step, loading the same teacher weights.
   Same batch size, epochs, SGD settings, cosine schedule, seed, T and alpha.

Compared: the **training loop** of an epoch, evaluation excluded, on both sides, as training images per
second (suite: ``train_images_per_second``, which includes filling the soft-label cache; reference:
``images_per_second``, which includes its DataLoader and teacher forward). Target: warm suite >= 5x the
reference. Whole epochs (evaluation included, history ``seconds``) are printed for information.
Prints a table with PASS/MISS and writes JSON to ``--out``. ``--classes C --train-limit N --val-limit V``
run on a symlinked subset (the first C classes, N training and V val images each).

    python benchmarks/compare_tiny_imagenet.py --untrained-teacher --teacher resnet32x4 --student resnet20
    python benchmarks/compare_tiny_imagenet.py --untrained-teacher --classes 5 --train-limit 20 --batch-size 16
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    BENCHMARKS,
    SHARED_DATA,
    CommandFailed,
    Workspace,
    add_recipe_arguments,
    add_workdir_arguments,
    clear_soft_labels,
    cpu_suite_overrides,
    default_workdir_and_out,
    finish,
    machine_record,
    number_text,
    ratio,
    reference_loop_args,
    reference_result,
    save_untrained_teacher,
    verdict,
)

DEFAULT_DATA_DIR = SHARED_DATA / "tiny-imagenet-subset"
REFERENCE_SCRIPT = BENCHMARKS / "reference_tiny_imagenet.py"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
IMAGE_SUFFIX = ".JPEG"
LOOP_SPEEDUP_TARGET = 5.0  # issue 11
UNTRAINED_TEACHER_FILE = "teacher_untrained.pt"
IMAGE_SIZE = 64  # conf/dataset/tiny_imagenet.yaml image_size
DECODE_LINE = re.compile(r"decoded (\S+) once: (\d+) images in ([0-9.]+) s")
REUSED_LINE = re.compile(r"decoded store \S+ reused")


def make_subset(
    source_root: Path, target_root: Path, classes: int | None, per_class: int | None, val_per_class: int | None = None
) -> Path:
    """A Tiny ImageNet layout under ``target_root``: the first ``classes`` wnids, ``per_class`` train images each.

    Files are symlinks to ``source_root``'s; val keeps the first ``val_per_class`` images of each kept class
    (None: all). Returns ``target_root``.
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
    val_counts = dict.fromkeys(wnids, 0)
    lines = []
    for line in (source / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if (
            len(fields) >= 2
            and fields[1] in val_counts
            and (val_per_class is None or val_counts[fields[1]] < val_per_class)
        ):
            val_counts[fields[1]] += 1
            lines.append(line + "\n")
            (target / "val" / "images" / fields[0]).symlink_to(source / "val" / "images" / fields[0])
    (target / "val" / "val_annotations.txt").write_text("".join(lines))
    return target_root


def count_classes(data_root: Path) -> int:
    """Number of classes of the Tiny ImageNet layout under ``data_root`` (non-empty lines of wnids.txt)."""
    return sum(1 for line in (data_root / TINY_IMAGENET_FOLDER / "wnids.txt").read_text().splitlines() if line.strip())


def decode_seconds_from_log(log_path: Path) -> dict[str, Any]:
    """The decode step of a run's log: ``{"seconds", "images"}`` if it decoded, ``{"reused": True}`` if not."""
    text = log_path.read_text()
    match = DECODE_LINE.search(text)
    if match:
        return {"seconds": float(match.group(3)), "images": int(match.group(2)), "reused": False}
    return {"seconds": None, "images": None, "reused": bool(REUSED_LINE.search(text))}


class Benchmark(Workspace):
    """Workdir, environment and the settings shared by every run of one comparison."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.workdir)
        self.args = args
        self.teacher_checkpoint: str | None = None  # set by untrained_teacher: every suite run loads it

    def suite_overrides(self) -> list[str]:
        a = self.args
        return [
            "dataset=tiny_imagenet",
            f"paths.data_dir={a.data_root}",
            f"teacher={a.teacher}",
            f"student={a.student}",
            *cpu_suite_overrides(a),
            *([f"teacher.checkpoint={self.teacher_checkpoint}"] if self.teacher_checkpoint else []),
            *a.suite_override,
        ]

    def teacher(self) -> dict[str, Any]:
        """Step a: the teacher in the store; its log holds the one-time decode of the images."""
        return {
            **self.train_teacher(self.suite_overrides()),
            "decode": decode_seconds_from_log(self.logs / "teacher.log"),
        }

    def untrained_teacher(self) -> dict[str, Any]:
        """Step a without training: a seeded, untrained teacher checkpoint in the workdir, used by every run."""
        a = self.args
        path = self.workdir / UNTRAINED_TEACHER_FILE
        started = time.perf_counter()
        sha256 = save_untrained_teacher(path, a.teacher, count_classes(a.data_root), IMAGE_SIZE, a.seed)
        self.teacher_checkpoint = str(path)
        return {
            "checkpoint": str(path),
            "sha256": sha256,
            "test_acc": None,
            "epochs": 0,
            "source": "untrained",
            "process_wall_seconds": time.perf_counter() - started,
            "decode": None,
        }

    def suite_kd(self, name: str) -> dict[str, Any]:
        a = self.args
        overrides = [
            *self.suite_overrides(),
            "mode=distill",
            "loss=kd",
            f"loss.temperature={number_text(a.temperature)}",
            f"loss.alpha={number_text(a.alpha)}",
        ]
        return {**self.suite_single(name, overrides), "decode": decode_seconds_from_log(self.logs / f"{name}.log")}

    def reference(self, checkpoint: str) -> dict[str, Any]:
        a = self.args
        out = self.workdir / "reference" / "reference.json"
        command = [
            sys.executable,
            str(REFERENCE_SCRIPT),
            "--data-dir",
            str(a.data_root),
            "--teacher-checkpoint",
            checkpoint,
            "--teacher-arch",
            a.teacher,
            "--student-arch",
            a.student,
            "--temperature",
            number_text(a.temperature),
            "--alpha",
            number_text(a.alpha),
            *reference_loop_args(a, out),
        ]
        return reference_result(out, self.run("reference", command))


def accuracy_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def decode_text(decode: Mapping[str, Any], source: str) -> str:
    if decode["seconds"] is not None:
        return (
            f"{decode['seconds']:.1f}s for {decode['images']} images "
            f"({decode['images'] / decode['seconds']:.0f} img/s), from the {source} log"
        )
    return f"n/a (no decode line in the {source} log: " + (
        "the store was already warm)" if decode["reused"] else "is the decode-once store on this branch?)"
    )


def format_report(results: Mapping[str, Any]) -> str:
    conf, teacher = results["config"], results["teacher"]
    lines = [
        (
            f"kd-hydra vs tutorial-style reference on Tiny ImageNet, CPU ({conf['threads']} threads): "
            f"{conf['teacher']} -> {conf['student']}, {conf['num_train']} train / {conf['num_test']} val images, "
            f"64x64, batch {conf['batch_size']}, {conf['epochs']} epoch(s), SGD lr {conf['lr']} + cosine, "
            f"T={number_text(conf['temperature'])} alpha={number_text(conf['alpha'])}, "
            f"reference num_workers={conf['num_workers']}"
        )
    ]
    if conf["suite_extra_overrides"]:
        lines.append(f"extra suite overrides: {' '.join(conf['suite_extra_overrides'])}")
    lines.append(
        f"load average before / after: {conf['load_before']} / {results.get('load_after')}  "
        "(shared machine: wall-clock numbers are noisy)"
    )
    lines.append(
        f"a. one-time decode into the decode store (first run): "
        f"{decode_text(results['decode'], results['decode_source'])}"
    )
    if conf["untrained_teacher"]:
        lines.append(
            f"   teacher {conf['teacher']}: UNTRAINED (seed {conf['seed']}, {teacher['checkpoint']}): "
            "accuracies below are meaningless, the times are valid (they do not depend on the weights)"
        )
    else:
        lines.append(
            f"   teacher {conf['teacher']}: test acc {accuracy_text(teacher['test_acc'])} after "
            f"{teacher['epochs']} epoch(s), process {teacher['process_wall_seconds']:.1f}s "
            "(decode included; not compared)"
        )
    lines.append("")
    lines.append(
        f"   {'':<22}{'loop img/s':>11}{'loop s/epoch':>13}{'epoch s (+eval)':>16}{'process s':>11}{'test acc':>10}"
    )
    for label, key in (
        ("b. suite, cache cold", "suite_cold"),
        ("b. suite, cache warm", "suite_warm"),
        ("c. reference", "reference"),
    ):
        side = results[key]
        lines.append(
            f"   {label:<22}{side['reported_images_per_second']:>11.0f}{side['loop_seconds_per_epoch']:>13.2f}"
            f"{side['mean_epoch_seconds']:>16.2f}{side['process_wall_seconds']:>11.1f}"
            f"{accuracy_text(side['final_test_acc']):>10}"
        )
    lines.append(
        "   compared: the training loop of one epoch, evaluation excluded, on both sides = loop img/s "
        "(suite: train_images_per_second, teacher logits / cache included; reference: images_per_second, "
        "DataLoader + teacher forward included); loop s/epoch = train images / loop img/s. "
        "'epoch s (+eval)' adds evaluation on the val images (information only)."
    )
    warm = results["suite_warm"]
    lines.append(
        f"   warm run's teacher outputs / soft-label cache: {warm.get('teacher_outputs')}/"
        f"{warm.get('soft_label_cache')}  {verdict(results['warm_cache_used'])} "
        "(expected: cache/warm; live means the soft-label cache was not used)"
    )
    speedup = results["loop_speedup_warm_vs_reference"]
    lines.append(
        f"   training-loop speed-up, warm suite vs reference: {speedup:.2f}x  "
        f"(target >= {LOOP_SPEEDUP_TARGET:g}x)  {verdict(speedup >= LOOP_SPEEDUP_TARGET)}"
    )
    lines.append(
        f"   training-loop speed-up, cold suite vs reference: {results['loop_speedup_cold_vs_reference']:.2f}x"
        f"; whole-epoch (+eval) warm vs reference: {results['epoch_speedup_warm_vs_reference']:.2f}x "
        "(information only)"
    )
    payback = results.get("decode_payback_epochs")
    if payback is not None:
        lines.append(
            f"   the one-time decode is paid back after {payback:.2f} warm epoch(s) "
            "(decode s / (reference loop s/epoch - warm suite loop s/epoch))"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"folder holding {TINY_IMAGENET_FOLDER}/ (default: %(default)s)",
    )
    parser.add_argument("--teacher", default="resnet56", help="zoo arch of the teacher (default: %(default)s)")
    parser.add_argument("--student", default="resnet20", help="zoo arch of the student (default: %(default)s)")
    parser.add_argument(
        "--untrained-teacher",
        action="store_true",
        help="do not train the teacher: a seeded, untrained checkpoint in the workdir "
        "(teacher.checkpoint of every suite run; accuracies meaningless, times valid)",
    )
    add_recipe_arguments(parser, epochs=1, teacher_epochs=1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--classes", type=int, default=None, help="keep only the first C classes (smoke tests)")
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        metavar="N",
        help="keep only N training images per class (the compared numbers are per image)",
    )
    parser.add_argument(
        "--val-limit",
        type=int,
        default=None,
        metavar="V",
        help="keep only V val images per class (evaluation is not compared; shortens the runs)",
    )
    add_workdir_arguments(parser)
    args = parser.parse_args(argv)
    default_workdir_and_out(args, "kd_hydra_compare_tiny_")
    args.data_dir = args.data_dir.resolve()
    return args


def add_loop_numbers(side: dict[str, Any], num_train: int) -> None:
    """Per-epoch training-loop seconds and whole-epoch img/s of one side, from its reported loop img/s."""
    side["loop_seconds_per_epoch"] = ratio(num_train, side["reported_images_per_second"])
    side["epoch_images_per_second"] = ratio(num_train, side["mean_epoch_seconds"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data_dir / TINY_IMAGENET_FOLDER / "wnids.txt").is_file():
        print(
            f"error: --data-dir: {args.data_dir} has no {TINY_IMAGENET_FOLDER}/wnids.txt; pass the folder that "
            f"holds {TINY_IMAGENET_FOLDER}",
            file=sys.stderr,
        )
        return 2
    for key, value in (
        ("--classes", args.classes),
        ("--train-limit", args.train_limit),
        ("--val-limit", args.val_limit),
    ):
        if value is not None and value < 1:
            print(f"error: {key}: must be a positive integer", file=sys.stderr)
            return 2
    args.data_root = args.data_dir
    if args.classes is not None or args.train_limit is not None or args.val_limit is not None:
        args.data_root = make_subset(
            args.data_dir, Path(args.workdir).resolve() / "data", args.classes, args.train_limit, args.val_limit
        )
    bench = Benchmark(args)
    results: dict[str, Any] = {
        "config": {
            "data_dir": str(args.data_dir),
            "data_root": str(args.data_root),
            "classes": args.classes,
            "train_limit": args.train_limit,
            "val_limit": args.val_limit,
            "teacher": args.teacher,
            "student": args.student,
            "untrained_teacher": args.untrained_teacher,
            "epochs": args.epochs,
            "teacher_epochs": 0 if args.untrained_teacher else args.teacher_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "temperature": args.temperature,
            "alpha": args.alpha,
            "threads": args.threads,
            "num_workers": args.num_workers,
            "workdir": str(bench.workdir),
            **machine_record(),
            "suite_extra_overrides": args.suite_override,
        }
    }
    started = time.perf_counter()
    print(f"workdir {bench.workdir} (logs in {bench.logs})", flush=True)
    try:
        if args.untrained_teacher:
            print(f"a. untrained {args.teacher} teacher checkpoint (no teacher training) ...", flush=True)
            results["teacher"] = bench.untrained_teacher()
        else:
            print("a. teacher (run.py mode=teacher; first run: decodes the images once) ...", flush=True)
            results["teacher"] = bench.teacher()
        results["config"]["suite_common_overrides"] = bench.suite_overrides()
        clear_soft_labels(bench.cache_dir)
        print("b. suite KD: soft-label cache cold, then warm ...", flush=True)
        results["suite_cold"] = bench.suite_kd("kd_cold")
        results["suite_warm"] = bench.suite_kd("kd_warm")
        print("c. reference (ImageFolder + PIL + DataLoader workers, teacher every step) ...", flush=True)
        results["reference"] = bench.reference(results["teacher"]["checkpoint"])
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # the first run with an empty cache dir decodes: the teacher run, or the cold KD run with --untrained-teacher
    decode_step = "suite_cold" if args.untrained_teacher else "teacher"
    results["decode_source"] = "cold KD run's" if args.untrained_teacher else "teacher run's"
    results["decode"] = results[decode_step]["decode"]
    num_train = results["reference"]["num_train"]
    results["config"]["num_train"], results["config"]["num_test"] = num_train, results["reference"]["num_test"]
    for key in ("suite_cold", "suite_warm", "reference"):
        add_loop_numbers(results[key], num_train)
    reference, warm, cold = results["reference"], results["suite_warm"], results["suite_cold"]
    speedup = ratio(warm["reported_images_per_second"], reference["reported_images_per_second"])
    results["loop_speedup_warm_vs_reference"] = speedup
    results["loop_speedup_cold_vs_reference"] = ratio(
        cold["reported_images_per_second"], reference["reported_images_per_second"]
    )
    results["epoch_speedup_warm_vs_reference"] = ratio(reference["mean_epoch_seconds"], warm["mean_epoch_seconds"])
    results["warm_cache_used"] = warm.get("teacher_outputs") == "cache" and warm.get("soft_label_cache") == "warm"
    decode_seconds = results["decode"]["seconds"]
    saved = reference["loop_seconds_per_epoch"] - warm["loop_seconds_per_epoch"]
    results["decode_payback_epochs"] = decode_seconds / saved if decode_seconds is not None and saved > 0 else None
    results["targets"] = {
        "loop_speedup": {"value": speedup, "target": LOOP_SPEEDUP_TARGET, "passed": speedup >= LOOP_SPEEDUP_TARGET},
        "warm_cache_used": {"passed": results["warm_cache_used"]},
    }
    return finish(results, args.out, format_report, started)


if __name__ == "__main__":
    sys.exit(main())
