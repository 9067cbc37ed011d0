"""Where a kd-hydra epoch spends its time on CPU: the pieces of a warm-cache epoch, and the cold-cache teacher pass.

Times, separately and with the suite's own code (``kd_hydra.data.build_pipeline``, ``kd_hydra.losses``,
``kd_hydra.models``): producing the epoch's augmented batches; student forward, loss, backward and
SGD step on pre-made batches; the per-batch ``sums`` bookkeeping of ``train_epoch``; evaluation; and
the teacher forward over the whole augmented epoch at several batch sizes (what filling the soft-label
cache costs; ``soft_label_cache.batch_size`` is 1024 by default). Each timing is the best of
``--repeats``: the machine may be shared. Prints one line per measurement and, with ``--out``, JSON.

    python benchmarks/profile_cpu_epoch.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _common import add_npz_arguments, prepare_npz, write_results

from kd_hydra.data import build_pipeline, load_arrays
from kd_hydra.losses import kd_loss
from kd_hydra.models import build_model

DATASET_NODE = {
    "augment": {"enabled": True, "crop_padding": 4, "horizontal_flip": True},
    "normalize": {"mean": None, "std": None},
}


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """Smallest wall seconds of ``repeats`` calls of ``work``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def profile(npz: Path, batch_size: int, teacher_batches: Sequence[int], repeats: int) -> dict[str, Any]:
    """Seconds per epoch of each piece (see the module doc), keyed by a short description."""
    data = load_arrays(path=str(npz))
    spec = data.spec
    pipeline = build_pipeline(data, DATASET_NODE, batch_size=batch_size, device="cpu", seed=0, eval_batch_size=1024)
    batches = list(pipeline.train_batches(0))
    num_train = spec.num_train
    torch.manual_seed(0)
    student = build_model("light_cnn", spec.num_classes, spec.channels, spec.image_size)
    teacher = build_model("deep_cnn", spec.num_classes, spec.channels, spec.image_size).eval()
    soft = torch.randn(num_train, spec.num_classes)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    results: dict[str, Any] = {"num_train": num_train, "threads": torch.get_num_threads()}

    results["pipeline: augmented batches of one epoch"] = best_of(repeats, lambda: list(pipeline.train_batches(0)))

    def student_steps(bookkeeping: bool) -> None:
        student.train()
        sums = torch.zeros(4, dtype=torch.float64)
        for images, targets, idx in batches:
            logits = student(images)
            parts = kd_loss(logits, soft[idx], targets, 4.0, ce_weight=0.1, kd_weight=0.9)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            if bookkeeping:
                with torch.no_grad():
                    correct = (logits.argmax(dim=1) == targets).sum()
                    n = targets.shape[0]
                    sums += torch.stack(
                        (parts.total.detach() * n, parts.ce.detach() * n, parts.kd.detach() * n, correct.to(sums.dtype))
                    )

    results["student fwd+loss+bwd+SGD step (no bookkeeping)"] = best_of(repeats, lambda: student_steps(False))
    results["student steps + train_epoch bookkeeping"] = best_of(repeats, lambda: student_steps(True))

    def student_forward_only() -> None:
        with torch.no_grad():
            for images, _, _ in batches:
                student(images)

    results["student forward only (no grad)"] = best_of(repeats, student_forward_only)

    def evaluate_student() -> None:
        student.eval()
        with torch.inference_mode():
            for images, _ in pipeline.test_batches():
                student(images)

    results["evaluation of the student on the test split"] = best_of(repeats, evaluate_student)

    for teacher_batch in teacher_batches:

        def teacher_pass(size: int = teacher_batch) -> None:
            with torch.no_grad():
                for images, _, _ in pipeline.augmented_train_batches(0, size):
                    teacher(images)

        results[f"teacher forward over the epoch, batch {teacher_batch}"] = best_of(repeats, teacher_pass)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the pieces of a kd-hydra CPU epoch (deep_cnn -> light_cnn).")
    add_npz_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher-batches", default="128,256,1024", help="comma list of teacher batch sizes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    problem = prepare_npz(args, Path(tempfile.mkdtemp(prefix="kd_hydra_profile_")))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    teacher_batches = [int(b) for b in args.teacher_batches.split(",") if b.strip()]
    results = profile(args.npz, args.batch_size, teacher_batches, args.repeats)
    for key, value in results.items():
        if isinstance(value, float):
            print(f"{key:<55}{value:8.3f} s  ({results['num_train'] / value:8.0f} img/s)")
        else:
            print(f"{key:<55}{value}")
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
