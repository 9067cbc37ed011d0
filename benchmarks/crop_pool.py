"""The crop pool (``soft_label_cache.crops_per_image=K``) on generated full-size JPEGs (500 x 375): the one-time fill
of the teacher's logits of N x K pool crops (seconds, bytes), then one training epoch's teacher outputs read from the
warm pool against the live teacher on the same pool crops (images/s; both decode and crop the same JPEGs).

    python benchmarks/crop_pool.py [--images 64] [--crops 4] [--arch resnet18] [--size 224] [--top-k 10]

The teacher is torchvision's architecture with random weights (1,000 classes: the records are ImageNet's size); its
speed, not its accuracy, is what the fill and the live epoch cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagenet_pipeline import STATS, write_tree  # noqa: E402

from kd_hydra.data import build_pipeline, load_imagenet  # noqa: E402
from kd_hydra.data.crop_pool import CropPool  # noqa: E402
from kd_hydra.stores.sharded_logits import PooledTeacher, crop_pool_description  # noqa: E402
from kd_hydra.stores.teacher_outputs import LiveTeacher  # noqa: E402
from kd_hydra.train.runtime import Runtime  # noqa: E402

CLASSES = 1000
IMAGENET_TRAIN = 1_281_167


def epoch_rate(pipeline, source, epoch: int) -> float:
    """Images/s of one epoch of training batches with their teacher outputs."""
    started = time.perf_counter()
    source.begin_epoch(epoch)
    seen = 0
    for images, _, indices in pipeline.train_batches(epoch):
        source(images, indices)
        seen += len(indices)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--crops", type=int, default=4, help="K, soft_label_cache.crops_per_image")
    parser.add_argument("--arch", default="resnet18", help="a torchvision classifier (random weights)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in the main process)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchvision

    torch.manual_seed(0)
    teacher = getattr(torchvision.models, args.arch)(num_classes=CLASSES).eval()
    runtime = Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False, compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        write_tree(root, args.images)
        data = load_imagenet(path=str(root), image_size=args.size, eval_resize=args.size * 8 // 7,
                             cache_dir=str(Path(tmp) / "cache"))  # fmt: skip
        node = {"augment": {"crop_padding": 0}, "normalize": STATS}
        pipeline = build_pipeline(data, node, args.batch, "cpu", 0, num_workers=args.workers,
                                  crop_pool=CropPool(args.crops))  # fmt: skip
        description = crop_pool_description("benchmark", data.fingerprint(), pipeline.pool_description(), STATS,
                                            torch.float16, args.top_k, None, False)  # fmt: skip

        def pooled() -> PooledTeacher:
            return PooledTeacher(Path(tmp) / "soft_labels", description, teacher, pipeline, runtime,
                                 num_classes=CLASSES, dtype=torch.float16, top_k=args.top_k,
                                 batch_size=args.batch, max_bytes=1 << 40)  # fmt: skip

        cold = pooled()
        started = time.perf_counter()
        cold.begin_epoch(0)
        fill = time.perf_counter() - started
        crops = args.images * args.crops
        stored = sum(path.stat().st_size for path in cold.entry.path.glob("pool.shard_*.bin"))
        warm, live = pooled(), LiveTeacher(teacher, runtime)
        rates: dict[str, list[float]] = {"warm pool (records read)": [], "live teacher (same pool crops)": []}
        for epoch in (1, 2):
            rates["warm pool (records read)"].append(epoch_rate(pipeline, warm, epoch))
            rates["live teacher (same pool crops)"].append(epoch_rate(pipeline, live, epoch))
        assert warm.epochs_computed == 0, "the second PooledTeacher must read the pool"
        print(
            f"{args.images} generated 500x375 JPEGs, K={args.crops} crops per image, {args.arch} teacher (random "
            f"weights, {CLASSES} classes) at {args.size}px, top-{args.top_k} float16, batch {args.batch}, "
            f"{args.workers} DataLoader worker(s), 1 torch thread, {os.cpu_count()} cores on the machine"
        )
        print(
            f"fill: {crops} pool crops in {fill:.2f} s ({crops / fill:.1f} crops/s: decode, crop, teacher, write, "
            f"seal); {stored} bytes = {stored / crops:.0f} bytes per crop; ImageNet at K={args.crops}: "
            f"{stored / crops * IMAGENET_TRAIN * args.crops / 1e6:.0f} MB"
        )
        print("one training epoch of teacher outputs (decode + crop + teacher outputs), images/s, best of 2 epochs:")
        for name, values in rates.items():
            print(f"  {name:34s} {max(values):8.1f}")


if __name__ == "__main__":
    main()
