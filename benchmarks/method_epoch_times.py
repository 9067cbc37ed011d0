"""Each distillation method's epoch time against ``kd`` on one teacher/student pair (issue 8).

For every method one ``run.py`` distill run of ``--epochs`` epochs (teacher trained once into a
private store first, not timed), reading the real CIFAR-10 prefix through ``dataset=arrays``. ``kd`` is
measured twice: with the soft-label cache warm (its usual state in a sweep) and with the teacher
live, so the feature methods (which always run the teacher live) can be compared with both.
Reported per method: training images per second (teacher work included, evaluation excluded), the
mean epoch seconds of history.csv, and the ratio to ``kd`` (warm cache).

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
from compare_cpu import DEFAULT_NPZ, REPO_ROOT, load_average, mean, ratio, read_epoch_seconds, read_metrics, run_timed  # noqa: E402

METHODS = ("kd", "dkd", "dist", "fitnet", "at", "crd")
KD_LIVE = "kd (teacher live)"


def run_method(method: str, common: Sequence[str], work: Path, env: dict[str, str], extra: Sequence[str] = ()) -> dict:
    run_dir = work / "runs" / method.replace(" ", "_").replace("(", "").replace(")", "")
    seconds = run_timed([sys.executable, "run.py", *common, f"loss={method.split()[0]}", *extra,
                         f"hydra.run.dir={run_dir}"], env, work / "logs" / f"{run_dir.name}.log")
    metrics = read_metrics(run_dir)
    return {"wall_seconds": seconds, "images_per_second": metrics["train_images_per_second"],
            "epoch_seconds": mean(read_epoch_seconds(run_dir)), "test_acc": metrics["final_test_acc"],
            "soft_label_cache": metrics["soft_label_cache"], "teacher_outputs": metrics["teacher_outputs"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="wrn_16_2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.npz.is_file():
        print(f"error: --npz: {args.npz} does not exist; pass the CIFAR-10 prefix .npz", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kd-hydra-methods-"))
    env = {**os.environ, "KD_HYDRA_CACHE_DIR": str(work / "cache"), "KD_HYDRA_OUTPUT_DIR": str(work / "outputs")}
    common = ["dataset=arrays", f"dataset.path={args.npz}", f"teacher={args.teacher}", f"student={args.student}",
              f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}", "trainer.save_checkpoint=false",
              "optimizer=sgd"]
    load_before = load_average()
    run_timed([sys.executable, "run.py", *common, "mode=teacher", f"hydra.run.dir={work / 'runs' / 'teacher'}"], env,
              work / "logs" / "teacher.log")
    results: dict[str, Any] = {}
    run_method("kd", common, work, env)  # fills the soft-label cache (cold); not reported
    results["kd"] = run_method("kd", common, work, env, ["trainer.resume=never"])  # the same run, cache warm
    results[KD_LIVE] = run_method(KD_LIVE, common, work, env, ["soft_label_cache.enabled=false"])
    for method in METHODS[1:]:
        results[method] = run_method(method, common, work, env)
    reference = results["kd"]["epoch_seconds"]
    print(f"{args.teacher} -> {args.student}, CIFAR-10 prefix, batch {args.batch_size}, {args.epochs} epoch(s); "
          f"load average before {load_before}, after {load_average()}")
    print(f"{'method':<20} {'teacher':<16} {'img/s':>8} {'epoch s':>9} {'x kd epoch':>11} {'test acc':>9}")
    for method, row in results.items():
        source = f"{row['teacher_outputs']}/{row['soft_label_cache']}"
        print(f"{method:<20} {source:<16} {row['images_per_second']:>8.0f} {row['epoch_seconds']:>9.2f} "
              f"{ratio(row['epoch_seconds'], reference):>11.2f} {row['test_acc']:>9.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
