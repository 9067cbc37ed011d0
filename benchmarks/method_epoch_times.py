"""Each distillation method's epoch time against ``kd`` on one teacher/student pair (issue 8).

Runs the method table as one sweep on the real CIFAR-10 prefix through ``dataset=arrays`` — the
command of issue 8's acceptance check, ``run.py -m loss=<every conf/loss option but ce> ...`` (teacher
stage, matched baseline, every method) — then ``kd`` twice more in a second sweep (after its baseline,
which warms the process up as the first sweep's earlier jobs do): with the soft-label cache warm (its
state in every sweep job after the first) and with the teacher live (what the feature methods always
do). Reported per method: where its teacher outputs came from, training images per
second (teacher work included, evaluation excluded), mean epoch seconds from history.csv, its epoch
time relative to ``kd`` with the teacher outputs it had (``x kd``: warm-cache ``kd`` for a method
that read the soft-label cache, live-teacher ``kd`` for one that ran the teacher), both ratios, and the
test accuracy. Every run shares one teacher (``--teacher-epochs``, trained once by the sweep's
teacher stage).

    python benchmarks/method_epoch_times.py --teacher wrn_40_2 --student wrn_16_2 --epochs 1
    python benchmarks/method_epoch_times.py --train-limit 64 --test-limit 64   # smoke test
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    REPO_ROOT,
    CommandFailed,
    add_npz_arguments,
    add_workdir_arguments,
    load_average,
    npz_workspace,
    ratio,
    read_metrics,
    suite_result,
    write_results,
)

#: Every distillation method of ``conf/loss`` (the group's YAML files; ``ce`` is the baseline), ``kd`` first.
METHODS = ("kd", *sorted(p.stem for p in (REPO_ROOT / "conf" / "loss").glob("*.yaml") if p.stem not in ("kd", "ce")))
KD_WARM, KD_LIVE = "kd (cache warm)", "kd (teacher live)"
JOB_ERROR = re.compile(r"^error: job [^(]*\((?P<overrides>[^)]*)\): (?P<reason>.*)$", re.MULTILINE)
LOSS_OVERRIDE = re.compile(r"\bloss=(\S+)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_npz_arguments(parser)
    parser.add_argument("--teacher", default="wrn_40_2")
    parser.add_argument("--student", default="wrn_16_2")
    parser.add_argument("--epochs", type=int, default=1, help="student epochs of every run (default: %(default)s)")
    parser.add_argument(
        "--teacher-epochs", type=int, default=1, help="epochs of the one shared teacher (default: %(default)s)"
    )
    add_workdir_arguments(parser)
    return parser.parse_args(argv)


def distill_runs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The completed distill jobs of a sweep (not its teacher stage or baseline), by run directory name."""
    results: dict[str, dict[str, Any]] = {}
    for run_dir in sorted(p for p in sweep_dir.glob("*") if (p / "metrics.json").is_file()):
        metrics = read_metrics(run_dir)
        if metrics.get("status") == "completed" and metrics["mode"] == "distill":
            results[run_dir.name] = {**suite_result(run_dir), "run_dir": str(run_dir)}
    return results


def job_failures(log_text: str) -> dict[str, str]:
    """Method -> one-line reason, from the sweep's ``error: job ... (overrides): reason`` lines.

    Covers the jobs that failed and those refused before any work (a method that cannot pair the networks).
    """
    failures: dict[str, str] = {}
    for match in JOB_ERROR.finditer(log_text):
        method = LOSS_OVERRIDE.search(match["overrides"])
        if method is not None:
            failures[method[1]] = match["reason"]
    return failures


def relative_to_kd(row: Mapping[str, Any], kd_warm: float, kd_live: float) -> dict[str, float]:
    """A run's epoch time over warm-cache kd's and live-teacher kd's; ``x kd`` picks the one of its teacher outputs."""
    warm, live = ratio(row["mean_epoch_seconds"], kd_warm), ratio(row["mean_epoch_seconds"], kd_live)
    return {"x_kd_warm": warm, "x_kd_live": live, "x_kd": warm if row["teacher_outputs"] == "cache" else live}


def format_table(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        f"{'method':<20} {'teacher outputs':<16} {'img/s':>8} {'epoch s':>9} {'x kd':>7} "
        f"{'x kd (warm)':>12} {'x kd (live)':>12} {'test acc':>9}"
    ]
    for method, row in results.items():
        source = f"{row['teacher_outputs']}/{row['soft_label_cache']}"
        lines.append(
            f"{method:<20} {source:<16} {row['reported_images_per_second']:>8.0f} {row['mean_epoch_seconds']:>9.2f} "
            f"{row['x_kd']:>7.2f} {row['x_kd_warm']:>12.2f} {row['x_kd_live']:>12.2f} {row['final_test_acc']:>9.2f}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    space = npz_workspace(args, "kd_hydra_methods_")
    if space is None:
        return 2
    common = [
        "dataset=arrays",
        f"dataset.path={args.npz}",
        f"teacher={args.teacher}",
        f"student={args.student}",
        f"trainer.epochs={args.epochs}",
        "trainer.progress=false",
        f"teacher_training.epochs={args.teacher_epochs}",
        "hydra.callbacks.analysis.enabled=false",
    ]
    load_before = load_average()
    sweep_dir = space.workdir / "sweep"
    print(f"workdir {space.workdir}: sweep of {len(METHODS)} methods + teacher + baseline ...", flush=True)
    sweep_failure = None
    try:
        sweep_seconds = space.run_suite(
            "sweep", [*common, f"loss={','.join(METHODS)}", f"hydra.sweep.dir={sweep_dir}"], multirun=True
        )
    except CommandFailed as error:  # some jobs failed: the others still get their rows
        sweep_failure, sweep_seconds = str(error), float("nan")
    results = {row["method"]: row for row in distill_runs(sweep_dir).values()}
    failures = job_failures((space.logs / "sweep.log").read_text())
    failed = [method for method in METHODS if method not in results]
    if sweep_failure is not None and not results:
        print(f"error: {sweep_failure}", file=sys.stderr)
        return 1
    print("kd again: soft-label cache warm, then teacher live (after the baseline, which warms the process) ...")
    kd_dir = space.workdir / "kd_sweep"
    try:
        space.run_suite(
            "kd_sweep", [*common, "loss=kd", "soft_label_cache.enabled=true,false", f"hydra.sweep.dir={kd_dir}"], True
        )
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kd_runs = {row["teacher_outputs"]: row for row in distill_runs(kd_dir).values()}
    results[KD_WARM], results[KD_LIVE] = kd_runs["cache"], kd_runs["live"]
    kd_warm, kd_live = results[KD_WARM]["mean_epoch_seconds"], results[KD_LIVE]["mean_epoch_seconds"]
    for row in results.values():
        row.update(relative_to_kd(row, kd_warm, kd_live))
    print(
        f"\n{args.teacher} -> {args.student}, {args.npz.name}, {args.epochs} epoch(s); sweep of "
        f"{len(METHODS)} methods + teacher + baseline: {sweep_seconds:.0f} s wall; load average before "
        f"{load_before}, after {load_average()} (shared machine: times are noisy)"
    )
    print("\n".join(format_table(results)))
    if failed:
        print(f"no result for {', '.join(failed)} (see {space.logs / 'sweep.log'}):")
        print("\n".join(f"  {method}: {failures.get(method, 'no reason in the log')}" for method in failed))
    args_record = {key: str(value) for key, value in vars(args).items()}
    record = {
        "args": args_record,
        "sweep_seconds": sweep_seconds,
        "results": results,
        "failed": {method: failures.get(method) for method in failed},
    }
    write_results(args.out, record)
    print(f"\nresults written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
