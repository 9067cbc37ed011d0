"""ImageNet training input per CPU core: kd-hydra's pipeline (plan-drawn random-resized crops decoded in DataLoader
workers) against torchvision's ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip in the same run, on
generated full-size JPEGs (500 x 375, quality 90); then PIL against torchvision.io decoding, the decoded validation
store's and the soft-label cache's bytes per sample.

    python benchmarks/imagenet_pipeline.py [--images 256] [--workers 1] [--batch 64]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_hydra.data import build_pipeline, load_imagenet  # noqa: E402
from kd_hydra.stores.sharded_logits import RecordLayout  # noqa: E402

WIDTH, HEIGHT, CLASSES = 500, 375, 8
STATS = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def write_tree(root: Path, images: int) -> None:
    from torchvision.io import encode_jpeg, write_file

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", images), ("val", CLASSES)):
        for index in range(count):
            folder = root / split / f"n{index % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = torch.randint(0, 256, (1, 3, HEIGHT // 16, WIDTH // 16), generator=generator).float()
            image = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bilinear")[0]
            noisy = image + 12 * torch.randn(image.shape, generator=generator)
            write_file(str(folder / f"{index}.JPEG"), encode_jpeg(noisy.clamp(0, 255).to(torch.uint8), quality=90))


def images_per_second(batches, count: int) -> float:
    started = time.perf_counter()
    seen = sum(len(batch[0]) for batch in batches)
    assert seen == count, (seen, count)
    return count / (time.perf_counter() - started)


def decode_rates(paths: list[str], rounds: int = 3) -> dict[str, float]:
    """Images/s of each decoder over the same JPEG bytes, best of ``rounds`` alternating rounds (shared cores)."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    blobs = [Path(p).read_bytes() for p in paths]
    decoders = {
        "torchvision.io.decode_jpeg": lambda blob: decode_jpeg(
            torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB
        ),
        "PIL Image.open().convert('RGB')": lambda blob: Image.open(io.BytesIO(blob)).convert("RGB").load(),
    }
    rates = dict.fromkeys(decoders, 0.0)
    for _ in range(rounds):
        for name, decode in decoders.items():
            started = time.perf_counter()
            for blob in blobs:
                decode(blob)
            rates[name] = max(rates[name], len(blobs) / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of both pipelines (cores used)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = max(1, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        write_tree(root, args.images)
        data = load_imagenet(path=str(root), image_size=224, eval_resize=256, cache_dir=str(Path(tmp) / "cache"))
        ours = build_pipeline(data, {"augment": {"crop_padding": 0}, "normalize": STATS}, args.batch, "cpu", 0,
                              num_workers=args.workers)  # fmt: skip
        from torchvision import datasets, transforms

        reference = torch.utils.data.DataLoader(
            datasets.ImageFolder(str(root / "train"), transforms.Compose([
                transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor(),
            ])),
            batch_size=args.batch, shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0,
        )  # fmt: skip
        for _ in ours.train_batches(0):  # warm the workers and the page cache
            pass
        for _ in reference:
            pass
        rates = {"kd-hydra (plan crops, torchvision.io decode)": [], "torchvision ImageFolder + RandomResizedCrop": []}
        for epoch in range(1, 3):
            rates["kd-hydra (plan crops, torchvision.io decode)"].append(
                images_per_second(ours.train_batches(epoch), args.images)
            )
            rates["torchvision ImageFolder + RandomResizedCrop"].append(images_per_second(reference, args.images))
        print(
            f"{args.images} generated {WIDTH}x{HEIGHT} JPEGs, batch {args.batch}, {args.workers} DataLoader "
            f"worker(s), {os.cpu_count()} cores on the machine; training images/s per core (best of 2 epochs):"
        )
        for name, values in rates.items():
            print(f"  {name:48s} {max(values) / cores:8.1f}")
        print("decoding alone, one thread (images/s, best of 3 alternating rounds):")
        for name, rate in decode_rates(data.train.paths()[:128]).items():
            print(f"  {name:48s} {rate:8.1f}")
        store = data.test_images
        print(
            f"decoded validation store: {store[0].numel()} bytes per image (3x224x224 uint8), "
            f"{store[0].numel() * 50_000 / 1e9:.2f} GB for ImageNet's 50,000"
        )
        for k in (5, 10, 20, 50, None):
            layout = RecordLayout(1000, k, torch.float16)
            print(
                f"soft-label cache, 1,000 classes, top-k {k or 'all'} float16: {layout.record_bytes} bytes per "
                f"sample, {layout.record_bytes * 1_281_167 / 1e6:.0f} MB per ImageNet epoch"
            )


if __name__ == "__main__":
    main()
