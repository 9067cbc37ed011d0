"""Each distillation method's epoch time against ``kd`` on one teacher/student pair (issue 8).

Runs the method table as one sweep on the real CIFAR-10 prefix through ``dataset=arrays`` — the
command of issue 8's acceptance check, ``run.py -m loss=<every conf/loss option but ce> ...`` (teacher
stage, matched baseline, every method) — then ``kd`` twice more as single runs: with the soft-label cache
warm (its state in every sweep job after the first) and with the teacher live (what the feature
methods always do). Reported per method: where its teacher outputs came from, training images per
second (teacher work included, evaluation excluded), mean epoch seconds from history.csv, the ratio
to warm-cache ``kd``, and the test accuracy.

    python benchmarks/method_epoch_times.py --teacher wrn_40_2 --student wrn_16_2 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_cpu import (  # noqa: E402
    DEFAULT_NPZ,
    load_average,
    mean,
    ratio,
    read_epoch_seconds,
    read_metrics,
    run_timed,
)

#: Every distillation method of ``conf/loss`` (the group's YAML files; ``ce`` is the baseline), ``kd`` first.
METHODS = ("kd", *sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "loss").glob("*.yaml")
                         if p.stem not in ("kd", "ce")))  # fmt: skip
KD_WARM, KD_LIVE = "kd (cache warm)", "kd (teacher live)"


def summary(run_dir: Path) -> dict[str, Any]:
    metrics = read_metrics(run_dir)
    return {
        "images_per_second": metrics["train_images_per_second"],
        "epoch_seconds": mean(read_epoch_seconds(run_dir)),
        "test_acc": metrics["final_test_acc"],
        "soft_label_cache": metrics["soft_label_cache"],
        "teacher_outputs": metrics["teacher_outputs"],
        "run_dir": str(run_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="wrn_16_2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.npz.is_file():
        print(f"error: --npz: {args.npz} does not exist; pass the CIFAR-10 prefix .npz", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kd-hydra-methods-"))
    env = {**os.environ, "KD_HYDRA_CACHE_DIR": str(work / "cache"), "KD_HYDRA_OUTPUT_DIR": str(work / "outputs")}
    common = [
        "dataset=arrays",
        f"dataset.path={args.npz}",
        f"teacher={args.teacher}",
        f"student={args.student}",
        f"trainer.epochs={args.epochs}",
    ]
    load_before = load_average()
    sweep_dir = work / "sweep"
    sweep_seconds = run_timed(
        [sys.executable, "run.py", "-m", *common, f"loss={','.join(METHODS)}", f"hydra.sweep.dir={sweep_dir}"],
        env,
        work / "logs" / "sweep.log",
    )
    results: dict[str, Any] = {}
    for run_dir in sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()):
        metrics = read_metrics(run_dir)
        if metrics["mode"] == "distill":
            results[metrics["method"]] = summary(run_dir)
    for name, extra in ((KD_WARM, []), (KD_LIVE, ["soft_label_cache.enabled=false"])):
        run_dir = work / "runs" / name.split("(")[1].rstrip(")").replace(" ", "_")
        run_timed(
            [sys.executable, "run.py", *common, "loss=kd", *extra, f"hydra.run.dir={run_dir}"],
            env,
            work / "logs" / f"{run_dir.name}.log",
        )
        results[name] = summary(run_dir)
    reference = results[KD_WARM]["epoch_seconds"]
    print(
        f"{args.teacher} -> {args.student}, CIFAR-10 prefix ({args.npz.name}), {args.epochs} epoch(s); sweep of "
        f"{len(METHODS)} methods + teacher + baseline: {sweep_seconds:.0f} s wall; load average before "
        f"{load_before}, after {load_average()}"
    )
    print(f"{'method':<20} {'teacher outputs':<16} {'img/s':>8} {'epoch s':>9} {'x kd (warm)':>12} {'test acc':>9}")
    for method, row in results.items():
        source = f"{row['teacher_outputs']}/{row['soft_label_cache']}"
        print(
            f"{method:<20} {source:<16} {row['images_per_second']:>8.0f} {row['epoch_seconds']:>9.2f} "
            f"{ratio(row['epoch_seconds'], reference):>12.2f} {row['test_acc']:>9.2f}"
        )
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "sweep_seconds": sweep_seconds,
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
