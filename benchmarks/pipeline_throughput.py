"""Images per second of ``InMemoryPipeline.train_batches``: the on-device crop + flip + normalise of an epoch.

Generated CIFAR-sized uint8 images (``--num`` of them, 3x32x32, seeded), batches of ``--batch-size``,
augmentation on (random crop with 4-pixel padding, horizontal flip), on the CPU. Measured with one torch
thread and with ``--threads`` (default: torch's default), after one warm-up epoch, over ``--epochs``
epochs; prints one line. No model runs: this is the data path alone, the upper bound of a training loop.

    python benchmarks/pipeline_throughput.py
    python benchmarks/pipeline_throughput.py --num 500 --epochs 1   # smoke test
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch

from kd_hydra.data import ArrayData, AugmentConfig, DatasetSpec, InMemoryPipeline

NUM_CLASSES = 10
CHANNELS = 3
IMAGE_SIZE = 32
TEST_IMAGES = 10  # the test split is not read; ArrayData needs one
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def generated_pipeline(num: int, batch_size: int) -> InMemoryPipeline:
    """A seeded in-memory pipeline over ``num`` random CIFAR-sized images, augmentation on."""
    generator = torch.Generator().manual_seed(0)
    shape = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    images = torch.randint(0, 256, (num, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.arange(num) % NUM_CLASSES
    spec = DatasetSpec("generated", NUM_CLASSES, CHANNELS, IMAGE_SIZE, tuple(map(str, range(NUM_CLASSES))), num, 10)
    data = ArrayData(images, labels, images[:TEST_IMAGES].clone(), labels[:TEST_IMAGES].clone(), spec)
    return InMemoryPipeline(data, AugmentConfig(), MEAN, STD, batch_size, torch.device("cpu"), seed=0)


def images_per_second(pipeline: InMemoryPipeline, epochs: int, threads: int) -> float:
    """Training images per second of ``epochs`` epochs of ``pipeline`` with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in pipeline.train_batches(0):  # warm-up
            pass
        started = time.perf_counter()
        images = 0
        for epoch in range(epochs):
            for batch, _, _ in pipeline.train_batches(epoch):
                images += batch.shape[0]
        return images / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--num", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="besides 1 (default: all)")
    args = parser.parse_args(argv)
    pipeline = generated_pipeline(args.num, args.batch_size)
    rates = {threads: images_per_second(pipeline, args.epochs, threads) for threads in sorted({1, args.threads})}
    measured = ", ".join(f"{threads} thread(s): {rate:,.0f} images/s" for threads, rate in rates.items())
    print(
        f"InMemoryPipeline.train_batches, {args.num}x{CHANNELS}x{IMAGE_SIZE}x{IMAGE_SIZE} uint8, "
        f"batch {args.batch_size}, crop+flip, CPU: {measured}"
    )


if __name__ == "__main__":
    main()
