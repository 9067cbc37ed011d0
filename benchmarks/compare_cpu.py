"""kd-hydra vs a tutorial-style KD loop on CPU: same data, archs, batch size, epochs, optimizer, schedule.

One invocation measures, in this order (every step a subprocess started with cwd = the repo root):

a. teacher: ``run.py mode=teacher`` trains deep_cnn once into the teacher store (not timed in any
   comparison); the suite finds it there, the reference loads its ``model.pt`` weights.
b. one KD run at (``--kd-temperature``, ``--kd-alpha``): the suite with the soft-label cache cold
   (cache cleared first), the identical run again (cache warm), and ``reference_kd.py``; images/second
   and per-epoch seconds (target: warm suite epoch >= 10x faster than the reference epoch).
c. the T x alpha grid: wall time of one ``run.py -m`` (teacher in store, soft-label cache cleared, so
   it starts cold) vs the nine reference runs, one ``reference_kd.py`` process each, run one after the
   other (target >= 6.5x). Both sides' wall times include process start-up.
d. mean test accuracy of the grid's students, suite vs reference (target within 1.5 points), per cell too.

Prints a table with PASS/MISS per target and writes everything as JSON to ``--out``.
Wall-clock numbers on a shared machine are noisy: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCHMARKS,
    CommandFailed,
    Workspace,
    add_npz_arguments,
    add_recipe_arguments,
    add_workdir_arguments,
    clear_soft_labels,
    cpu_suite_overrides,
    default_workdir_and_out,
    finish,
    machine_record,
    mean,
    npz_sizes,
    number_text,
    prepare_npz,
    ratio,
    reference_loop_args,
    reference_result,
    verdict,
)

REFERENCE_SCRIPT = BENCHMARKS / "reference_kd.py"

EPOCH_SPEEDUP_TARGET = 10.0
SWEEP_SPEEDUP_TARGET = 6.5  # issue 11
ACCURACY_GAP_TARGET = 1.5  # percentage points


@dataclass(frozen=True)
class Grid:
    """The temperatures and alphas of the sweep (their product is the set of cells)."""

    temperatures: tuple[float, ...]
    alphas: tuple[float, ...]

    @property
    def cells(self) -> list[tuple[float, float]]:
        return [(t, a) for t in self.temperatures for a in self.alphas]


def parse_numbers(text: str) -> tuple[float, ...]:
    """``"1,4,8"`` -> ``(1.0, 4.0, 8.0)``; raises ValueError on an empty or malformed list."""
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if not values:
        raise ValueError(f"no numbers in {text!r}")
    return values


def parse_grid(text: str) -> Grid:
    """``"1,4,8x0.1,0.5,0.9"`` -> temperatures (1, 4, 8) and alphas (0.1, 0.5, 0.9)."""
    temperatures, separator, alphas = text.partition("x")
    if not separator:
        raise ValueError(f"grid {text!r} has no 'x'; expected TEMPERATURESxALPHAS, e.g. 1,4,8x0.1,0.5,0.9")
    return Grid(parse_numbers(temperatures), parse_numbers(alphas))


def cell_key(temperature: float, alpha: float) -> str:
    return f"T={number_text(temperature)},alpha={number_text(alpha)}"


class Benchmark(Workspace):
    """The workdir, environment and common settings shared by every step of one comparison."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.workdir)
        self.args = args

    # -- command lines ---------------------------------------------------------------------------

    def suite_overrides(self) -> list[str]:
        """Overrides common to the teacher, the single KD runs and the sweep (so the teacher store key matches)."""
        a = self.args
        return [
            "dataset=arrays",
            f"dataset.path={a.npz}",
            "teacher=deep_cnn",
            "student=light_cnn",
            *cpu_suite_overrides(a),
            *a.suite_override,
        ]

    def reference_command(self, checkpoint: str, temperature: float, alpha: float, out: Path) -> list[str]:
        a = self.args
        return [
            sys.executable,
            str(REFERENCE_SCRIPT),
            "--teacher-checkpoint",
            checkpoint,
            "--npz",
            str(a.npz),
            "--temperature",
            number_text(temperature),
            "--alpha",
            number_text(alpha),
            *reference_loop_args(a, out),
        ]

    # -- steps -----------------------------------------------------------------------------------

    def teacher(self) -> dict[str, Any]:
        """Step a: the teacher in the store (trained now unless the workdir already holds it)."""
        return self.train_teacher(self.suite_overrides())

    def kd_single(self, name: str, temperature: float, alpha: float) -> dict[str, Any]:
        return self.suite_single(
            name,
            [
                *self.suite_overrides(),
                "mode=distill",
                f"loss.temperature={number_text(temperature)}",
                f"loss.alpha={number_text(alpha)}",
            ],
        )

    def reference_single(self, checkpoint: str, temperature: float, alpha: float, name: str) -> dict[str, Any]:
        out = self.workdir / "reference" / f"{name}.json"
        return reference_result(out, self.run(name, self.reference_command(checkpoint, temperature, alpha, out)))

    def single_kd(self, checkpoint: str, num_train: int) -> dict[str, Any]:
        """Step b: suite cold, suite warm, reference, at the same (T, alpha)."""
        t, alpha = self.args.kd_temperature, self.args.kd_alpha
        clear_soft_labels(self.cache_dir)
        cold = self.kd_single("kd_cold", t, alpha)
        warm = self.kd_single("kd_warm", t, alpha)
        reference = self.reference_single(checkpoint, t, alpha, "reference_single")
        for side in (cold, warm, reference):
            side["epoch_images_per_second"] = ratio(num_train, side["mean_epoch_seconds"])
        return {
            "temperature": t,
            "alpha": alpha,
            "suite_cold": cold,
            "suite_warm": warm,
            "reference": reference,
            "epoch_speedup_warm_vs_reference": ratio(reference["mean_epoch_seconds"], warm["mean_epoch_seconds"]),
            "epoch_speedup_cold_vs_reference": ratio(reference["mean_epoch_seconds"], cold["mean_epoch_seconds"]),
        }

    def sweep(self, checkpoint: str, grid: Grid) -> dict[str, Any]:
        """Steps c and d: one suite multirun (cache cleared first) vs one reference process per cell."""
        sweep_dir = self.workdir / "sweep"
        shutil.rmtree(sweep_dir, ignore_errors=True)
        clear_soft_labels(self.cache_dir)
        temperatures = ",".join(number_text(t) for t in grid.temperatures)
        alphas = ",".join(number_text(a) for a in grid.alphas)
        overrides = [
            *self.suite_overrides(),
            "mode=distill",
            f"loss.temperature={temperatures}",
            f"loss.alpha={alphas}",
            "hydra.sweeper.add_baselines=false",
            f"hydra.sweep.dir={sweep_dir}",
        ]
        suite_seconds = self.run_suite("sweep", overrides, multirun=True)
        suite_cells: dict[str, dict[str, Any]] = {}
        for metrics_path in sorted(sweep_dir.glob("*/metrics.json")):
            metrics = json.loads(metrics_path.read_text())
            settings = metrics["settings"]
            if settings.get("mode") != "distill":  # the sweep's teacher stage (found in the store)
                continue
            key = cell_key(float(settings["loss.temperature"]), float(settings["loss.alpha"]))
            suite_cells[key] = {
                "final_test_acc": metrics["final_test_acc"],
                "wall_seconds": metrics["wall_seconds"],
                "soft_label_cache": metrics["soft_label_cache"],
            }
        missing = [cell_key(t, a) for t, a in grid.cells if cell_key(t, a) not in suite_cells]
        if missing:
            raise CommandFailed(f"the sweep in {sweep_dir} has no metrics for {', '.join(missing)}")

        reference_cells: dict[str, dict[str, Any]] = {}
        reference_seconds = 0.0
        for t, alpha in grid.cells:
            name = f"reference_T{number_text(t)}_a{number_text(alpha)}"
            result = self.reference_single(checkpoint, t, alpha, name)
            reference_seconds += result["process_wall_seconds"]
            reference_cells[cell_key(t, alpha)] = {
                "final_test_acc": result["final_test_acc"],
                "wall_seconds": result["process_wall_seconds"],
            }

        keys = [cell_key(t, a) for t, a in grid.cells]
        suite_mean = mean([suite_cells[k]["final_test_acc"] for k in keys])
        reference_mean = mean([reference_cells[k]["final_test_acc"] for k in keys])
        return {
            "cells": keys,
            "suite_wall_seconds": suite_seconds,
            "reference_wall_seconds": reference_seconds,
            "sweep_speedup": ratio(reference_seconds, suite_seconds),
            "suite": suite_cells,
            "reference": reference_cells,
            "suite_mean_acc": suite_mean,
            "reference_mean_acc": reference_mean,
            "mean_acc_gap": suite_mean - reference_mean,
        }


def format_report(results: Mapping[str, Any]) -> str:
    """The human-readable table of one comparison (see benchmarks/README.md for how to read it)."""
    lines: list[str] = []
    conf = results["config"]
    lines.append(
        f"kd-hydra vs tutorial-style reference on CPU ({conf['threads']} threads, "
        f"{conf['num_train']} train / {conf['num_test']} test images, batch {conf['batch_size']}, "
        f"{conf['epochs']} epochs, SGD lr {conf['lr']} + cosine, reference num_workers={conf['num_workers']})"
    )
    if conf.get("suite_extra_overrides"):
        lines.append(f"extra suite overrides: {' '.join(conf['suite_extra_overrides'])}")
    lines.append(
        f"load average before / after: {conf['load_before']} / {results.get('load_after')}  "
        "(shared machine: wall-clock numbers are noisy)"
    )
    teacher = results["teacher"]
    lines.append(
        f"a. teacher deep_cnn: test acc {teacher['test_acc']:.2f}% after {teacher['epochs']} epochs "
        f"({teacher['source']}, {teacher['process_wall_seconds']:.1f}s, not part of any comparison)"
    )

    single = results["single_kd"]
    lines.append("")
    lines.append(
        f"b. one KD run deep_cnn -> light_cnn, T={number_text(single['temperature'])} "
        f"alpha={number_text(single['alpha'])}"
    )
    header = f"   {'':<22}{'loop img/s':>11}{'epoch img/s':>12}{'epoch s (mean)':>15}{'process s':>11}{'test acc':>10}"
    lines.append(header)
    for label, side in (
        ("suite, cache cold", single["suite_cold"]),
        ("suite, cache warm", single["suite_warm"]),
        ("reference", single["reference"]),
    ):
        lines.append(
            f"   {label:<22}{side['reported_images_per_second']:>11.0f}"
            f"{side['epoch_images_per_second']:>12.0f}"
            f"{side['mean_epoch_seconds']:>15.2f}{side['process_wall_seconds']:>11.1f}"
            f"{side['final_test_acc']:>9.2f}%"
        )
    lines.append(
        "   loop img/s: as each side reports it (training loop only; the suite's cold run computes the "
        "teacher logits before the loop, so they are not in it)"
    )
    lines.append(
        "   epoch img/s: train images / mean epoch seconds (everything in the epoch: teacher or cache, "
        "training, evaluation)"
    )
    speedup = single["epoch_speedup_warm_vs_reference"]
    lines.append(
        f"   epoch speed-up, warm suite vs reference: {speedup:.1f}x  (target >= {EPOCH_SPEEDUP_TARGET:g}x)"
        f"  {verdict(speedup >= EPOCH_SPEEDUP_TARGET)}"
    )
    lines.append(
        f"   epoch speed-up, cold suite vs reference: {single['epoch_speedup_cold_vs_reference']:.2f}x "
        "(information only)"
    )

    sweep = results.get("sweep")
    if sweep is None:
        lines.append("")
        lines.append("c./d. sweep skipped (--skip-sweep)")
        return "\n".join(lines)
    lines.append("")
    lines.append(
        f"c. {len(sweep['cells'])}-cell T x alpha sweep, wall time with process start-up "
        "(suite: one run.py -m, cache cold at start; reference: one process per cell, sequential)"
    )
    lines.append(
        f"   suite {sweep['suite_wall_seconds']:.1f}s   reference {sweep['reference_wall_seconds']:.1f}s   "
        f"speed-up {sweep['sweep_speedup']:.1f}x  (target >= {SWEEP_SPEEDUP_TARGET:g}x)  "
        f"{verdict(sweep['sweep_speedup'] >= SWEEP_SPEEDUP_TARGET)}"
    )
    lines.append("")
    lines.append("d. final test accuracy of the students (%)")
    lines.append(f"   {'cell':<20}{'suite':>8}{'reference':>11}{'diff':>8}")
    for key in sweep["cells"]:
        suite_acc, reference_acc = sweep["suite"][key]["final_test_acc"], sweep["reference"][key]["final_test_acc"]
        lines.append(f"   {key:<20}{suite_acc:>8.2f}{reference_acc:>11.2f}{suite_acc - reference_acc:>+8.2f}")
    gap = sweep["mean_acc_gap"]
    lines.append(
        f"   {'mean':<20}{sweep['suite_mean_acc']:>8.2f}{sweep['reference_mean_acc']:>11.2f}{gap:>+8.2f}"
        f"  (target |diff| <= {ACCURACY_GAP_TARGET:g})  {verdict(abs(gap) <= ACCURACY_GAP_TARGET)}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_npz_arguments(parser)
    add_recipe_arguments(parser, epochs=3, teacher_epochs=5)
    parser.add_argument("--grid", default="1,4,8x0.1,0.5,0.9", help="TEMPERATURESxALPHAS (default: %(default)s)")
    parser.add_argument("--temperatures", default=None, help="comma list; overrides the grid's temperatures")
    parser.add_argument("--alphas", default=None, help="comma list; overrides the grid's alphas")
    parser.add_argument("--kd-temperature", type=float, default=4.0, help="T of the single KD run (step b)")
    parser.add_argument("--kd-alpha", type=float, default=0.9, help="alpha of the single KD run (step b)")
    add_workdir_arguments(parser)
    parser.add_argument("--skip-sweep", action="store_true", help="steps a and b only")
    args = parser.parse_args(argv)
    default_workdir_and_out(args, "kd_hydra_compare_cpu_")
    grid = parse_grid(args.grid)
    args.grid_parsed = Grid(
        parse_numbers(args.temperatures) if args.temperatures else grid.temperatures,
        parse_numbers(args.alphas) if args.alphas else grid.alphas,
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = prepare_npz(args, Path(args.workdir))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    bench = Benchmark(args)
    num_train, num_test = npz_sizes(args.npz)
    grid: Grid = args.grid_parsed
    results: dict[str, Any] = {
        "config": {
            "npz": str(args.npz),
            "train_limit": args.train_limit,
            "test_limit": args.test_limit,
            "num_train": num_train,
            "num_test": num_test,
            "epochs": args.epochs,
            "teacher_epochs": args.teacher_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "num_workers": args.num_workers,
            "grid": {"temperatures": grid.temperatures, "alphas": grid.alphas},
            "workdir": str(bench.workdir),
            **machine_record(),
            "suite_common_overrides": bench.suite_overrides(),
            "suite_extra_overrides": args.suite_override,
        }
    }
    started = time.perf_counter()
    print(f"workdir {bench.workdir} (logs in {bench.logs})", flush=True)
    try:
        print("a. training the teacher (run.py mode=teacher) ...", flush=True)
        results["teacher"] = bench.teacher()
        checkpoint = results["teacher"]["checkpoint"]
        print("b. single KD run: suite cold, suite warm, reference ...", flush=True)
        results["single_kd"] = bench.single_kd(checkpoint, num_train)
        if not args.skip_sweep:
            print(f"c. {len(grid.cells)}-cell sweep: suite multirun, then the reference runs ...", flush=True)
            results["sweep"] = bench.sweep(checkpoint, grid)
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if "sweep" in results:
        epoch_speedup = results["single_kd"]["epoch_speedup_warm_vs_reference"]
        sweep_speedup, gap = results["sweep"]["sweep_speedup"], results["sweep"]["mean_acc_gap"]
        results["targets"] = {
            "epoch_speedup": {
                "value": epoch_speedup,
                "target": EPOCH_SPEEDUP_TARGET,
                "passed": epoch_speedup >= EPOCH_SPEEDUP_TARGET,
            },
            "sweep_speedup": {
                "value": sweep_speedup,
                "target": SWEEP_SPEEDUP_TARGET,
                "passed": sweep_speedup >= SWEEP_SPEEDUP_TARGET,
            },
            "mean_acc_gap": {"value": gap, "target": ACCURACY_GAP_TARGET, "passed": abs(gap) <= ACCURACY_GAP_TARGET},
        }
    return finish(results, args.out, format_report, started)


if __name__ == "__main__":
    sys.exit(main())
