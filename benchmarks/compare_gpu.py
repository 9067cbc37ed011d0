"""kd-hydra vs a tutorial-style KD loop on one CUDA GPU: training images/second, resnet32x4 -> resnet8x4.

Data: CIFAR-100-shaped synthetic images (``--num-train`` 32x32x3, ``--num-classes`` 100) from
``kd_hydra.data.load_synthetic``; the suite generates them itself (``dataset=synthetic``), the
reference reads the identical arrays from an ``.npz`` this script writes. Both sides use crop
padding 4 + flip, the per-channel statistics of the train split, batch ``--batch-size``, SGD + cosine.
The teacher is a randomly initialised resnet32x4 saved once (its accuracy is irrelevant to throughput);
the suite gets it as ``teacher.checkpoint``, the reference loads the same file.

- suite: ``run.py mode=distill`` with bf16 autocast and channels_last, run twice: the first fills the
  soft-label cache (cold), the second reads it (warm, the number that counts).
- reference: ``benchmarks/reference_kd.py`` on the same GPU: PIL + torchvision transforms in a
  ``DataLoader(num_workers=--workers)``, fp32, the teacher forward on every batch.

Prints the images/second of each and the warm-suite / reference ratio; writes JSON to ``--out``.
Exits with status 2 and a message when no CUDA device is present (``--device cpu`` exists only to
check the plumbing on a tiny problem; its numbers mean nothing).

    python benchmarks/compare_gpu.py                       # on a CUDA machine
    python benchmarks/compare_gpu.py --device cpu --num-train 256 --num-test 128 --batch-size 64 \\
        --epochs 1 --reference-epochs 1 --teacher resnet8x4   # plumbing check only
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    BENCHMARKS,
    CommandFailed,
    Workspace,
    add_workdir_arguments,
    clear_soft_labels,
    default_workdir_and_out,
    finish,
    machine_record,
    ratio,
    reference_result,
    save_untrained_teacher,
)

REFERENCE_SCRIPT = BENCHMARKS / "reference_kd.py"
EXIT_NO_CUDA = 2
SYNTHETIC_SEED = 0
CROP_PADDING = 4  # the reference's RandomCrop(32, padding=4); the synthetic config's default is 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--num-train", type=int, default=50000)
    parser.add_argument("--num-test", type=int, default=10000)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each suite run (default: %(default)s)")
    parser.add_argument("--reference-epochs", type=int, default=2, help="reference epochs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers (tutorial: 2)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu only for a plumbing check")
    parser.add_argument(
        "--devices", type=int, default=1, help="kd-hydra's data-parallel workers (trainer.devices; default: 1)"
    )
    add_workdir_arguments(parser)
    return parser.parse_args(argv)


def cuda_problem(device: str) -> str | None:
    """Why ``device`` cannot be used (None when it can); imports torch."""
    import torch

    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return (
            "no CUDA device is available: compare_gpu.py measures GPU throughput and needs a CUDA machine "
            "(compare_cpu.py is the CPU benchmark; --device cpu only checks this script's plumbing)"
        )
    return None


def write_inputs(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """The synthetic dataset as an NHWC ``.npz`` for the reference, and a random-init teacher checkpoint."""
    import numpy as np

    from kd_hydra.data import load_synthetic

    data = load_synthetic(
        num_train=args.num_train,
        num_test=args.num_test,
        num_classes=args.num_classes,
        image_size=args.image_size,
        seed=SYNTHETIC_SEED,
    )
    npz = workdir / "synthetic.npz"
    np.savez(
        npz,
        x_train=data.x_train.permute(0, 2, 3, 1).numpy(),
        y_train=data.y_train.numpy(),
        x_test=data.x_test.permute(0, 2, 3, 1).numpy(),
        y_test=data.y_test.numpy(),
    )
    checkpoint = workdir / "teacher.pt"
    save_untrained_teacher(checkpoint, args.teacher, args.num_classes, args.image_size, seed=0)
    return npz, checkpoint


def suite_overrides(args: argparse.Namespace, checkpoint: Path) -> list[str]:
    on_cuda = args.device.startswith("cuda")
    return [
        "mode=distill",
        "dataset=synthetic",
        f"dataset.loader.num_train={args.num_train}",
        f"dataset.loader.num_test={args.num_test}",
        f"dataset.loader.num_classes={args.num_classes}",
        f"dataset.image_size={args.image_size}",
        f"dataset.loader.seed={SYNTHETIC_SEED}",
        f"dataset.augment.crop_padding={CROP_PADDING}",
        f"teacher={args.teacher}",
        f"student={args.student}",
        f"teacher.checkpoint={checkpoint}",
        f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={args.device}",
        f"trainer.devices={args.devices}",
        f"trainer.precision={'bf16' if on_cuda else 'fp32'}",
        f"trainer.channels_last={str(on_cuda).lower()}",
        "trainer.progress=false",
        "trainer.save_checkpoint=false",
        "optimizer=sgd",
        f"optimizer.lr={args.lr}",
        "scheduler=cosine",
        "hydra.callbacks.analysis.enabled=false",
    ]


def suite_run(args: argparse.Namespace, checkpoint: Path, space: Workspace, name: str) -> dict[str, Any]:
    side = space.suite_single(name, suite_overrides(args, checkpoint))
    return {**side, "last_epoch_images_per_second": args.num_train / side["epoch_seconds"][-1]}


def reference_run(args: argparse.Namespace, npz: Path, checkpoint: Path, space: Workspace) -> dict[str, Any]:
    out = space.workdir / "reference.json"
    command = [
        sys.executable,
        str(REFERENCE_SCRIPT),
        "--teacher-checkpoint",
        str(checkpoint),
        "--npz",
        str(npz),
        "--teacher-arch",
        args.teacher,
        "--student-arch",
        args.student,
        "--epochs",
        str(args.reference_epochs),
        "--batch-size",
        str(args.batch_size),
        "--num-workers",
        str(args.workers),
        "--lr",
        str(args.lr),
        "--device",
        args.device,
        "--out",
        str(out),
    ]
    side = reference_result(out, space.run("reference", command))
    return {**side, "last_epoch_images_per_second": args.num_train / side["epoch_seconds"][-1]}


def format_report(results: Mapping[str, Any]) -> str:
    conf = results["config"]
    lines = [
        f"kd-hydra vs tutorial-style reference on {conf['device_name']}: {conf['teacher']} -> {conf['student']}, "
        f"{conf['num_train']} synthetic {conf['image_size']}x{conf['image_size']} images, "
        f"{conf['num_classes']} classes, batch {conf['batch_size']}",
        f"   {'':<34}{'loop img/s':>11}{'last-epoch img/s':>18}",
    ]
    suite = "suite bf16+channels_last" if str(conf["device"]).startswith("cuda") else "suite fp32"
    for label, key in (
        (f"{suite}, cold", "suite_cold"),
        (f"{suite}, warm", "suite_warm"),
        (f"reference fp32, {conf['workers']} workers", "reference"),
    ):
        side = results[key]
        lines.append(
            f"   {label:<34}{side['reported_images_per_second']:>11.0f}{side['last_epoch_images_per_second']:>18.0f}"
        )
    lines.append(f"   speed-up, warm suite vs reference (loop img/s): {results['speedup']:.1f}x")
    lines.append(
        "   loop img/s: training loop only (the cold run fills the cache before its loops); "
        "last-epoch img/s: train images / the last epoch's seconds, evaluation included"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = cuda_problem(args.device)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_NO_CUDA
    import torch

    default_workdir_and_out(args, "kd_hydra_compare_gpu_")
    space = Workspace(args.workdir)
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    print(f"workdir {space.workdir}; device {device_name}", flush=True)
    results: dict[str, Any] = {
        "config": {**vars(args), "device_name": device_name, "torch": torch.__version__, **machine_record()}
    }
    started = time.perf_counter()
    try:
        npz, checkpoint = write_inputs(args, space.workdir)
        clear_soft_labels(space.cache_dir)
        print("suite, soft-label cache cold ...", flush=True)
        results["suite_cold"] = suite_run(args, checkpoint, space, "suite_cold")
        print("suite, soft-label cache warm ...", flush=True)
        results["suite_warm"] = suite_run(args, checkpoint, space, "suite_warm")
        print("reference ...", flush=True)
        results["reference"] = reference_run(args, npz, checkpoint, space)
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    results["speedup"] = ratio(
        results["suite_warm"]["reported_images_per_second"], results["reference"]["reported_images_per_second"]
    )
    return finish(results, args.out, format_report, started)


if __name__ == "__main__":
    sys.exit(main())
