"""Per-epoch time of one job on 1 and on 2 data-parallel workers (``trainer.devices``), one CIFAR pair, this machine.

    python benchmarks/distributed_workers.py [--epochs 3] [--student resnet8] [--workers 1 2] [--npz ...]

Each job trains the CIFAR student (``mode=student``: the labels-only baseline, no teacher to train first) for
``--epochs`` epochs on the real CIFAR-10 prefix (``dataset=arrays``), ``trainer.batch_size`` 64, SGD, 1 CPU thread per
worker. It prints the mean epoch seconds (training and evaluation, from history.csv; the first epoch is left out:
it includes the workers' warm-up) and the speed-up over 1 worker.

On a 2-core CPU with gloo this measures the overhead of the collectives (gradients averaged each step) against a
second core; the figure that matters, the scaling on GPUs with NCCL, is measured with ``benchmarks/compare_gpu.py``
(``--devices N``) when a GPU node is available.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from _common import (
    add_npz_arguments,
    add_workdir_arguments,
    finish,
    machine_record,
    mean,
    npz_workspace,
    ratio,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=3, help="student epochs per job (default: %(default)s)")
    parser.add_argument("--student", default="resnet8", help="student arch (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="world sizes (default: 1 2)")
    add_npz_arguments(parser)
    add_workdir_arguments(parser)
    return parser.parse_args(argv)


def report(results: Mapping[str, Any]) -> str:
    lines = [f"{'workers':>7} {'epoch s':>9} {'speed-up':>9} {'test acc':>9}"]
    base = results["runs"][0]["mean_epoch_seconds"]
    for run in results["runs"]:
        seconds, accuracy = run["mean_epoch_seconds"], run["final_test_acc"]
        lines.append(f"{run['workers']:>7} {seconds:>9.2f} {ratio(base, seconds):>8.2f}x {accuracy:>8.2f}%")
    lines.append(f"load before/after: {results['machine']['load_before']} / {results['load_after']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    space = npz_workspace(args, "kd_hydra_workers_")
    if space is None:
        return 2
    common = [
        "dataset=arrays",
        f"dataset.path={args.npz}",
        "mode=student",
        f"student={args.student}",
        f"trainer.epochs={args.epochs}",
        "trainer.batch_size=64",
        "trainer.num_threads=1",
        "trainer.device=cpu",
        "trainer.progress=false",
    ]
    results: dict[str, Any] = {"machine": machine_record(), "runs": []}
    for workers in args.workers:
        print(f"{workers} worker(s) ...", flush=True)
        run = space.suite_single(f"workers{workers}", [*common, f"trainer.devices={workers}"])
        epochs = run["epoch_seconds"][1:] or run["epoch_seconds"]
        results["runs"].append({**run, "workers": workers, "mean_epoch_seconds": mean(epochs)})
    return finish(results, args.out, report, started)


if __name__ == "__main__":
    sys.exit(main())
