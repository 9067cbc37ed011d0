"""A generated ILSVRC2012-layout tree: train/<wnid>/*.JPEG of variable sizes, flat val/ with the devkit's ground
truth and meta.mat (as torchvision's parse_devkit_archive reads them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg, write_file

WNIDS = tuple(f"n{1440764 + 7 * i:08d}" for i in range(10))
TRAIN_PER_CLASS = 3
VAL_PER_CLASS = 1


def write_meta(path: Path, wnids: tuple[str, ...]) -> None:
    """meta.mat with the leaf synsets (ILSVRC2012_ID 1..n, in wnid order) and one parent synset (num_children 2)."""
    from scipy import io as scipy_io

    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    synsets = np.zeros((len(wnids) + 1,), dtype=[(name, object) for name in fields])
    for row, wnid in enumerate(wnids):
        synsets[row] = (row + 1, wnid, f"class {row}", "", 0, np.zeros(0), 0, TRAIN_PER_CLASS)
    synsets[len(wnids)] = (len(wnids) + 1, "n00000001", "entity", "", 2, np.array([1, 2]), 1, 0)
    scipy_io.savemat(str(path), {"synsets": synsets})


def write_imagenet_tree(root: Path, seed: int = 0, sorted_val: bool = False) -> dict[str, list[int]]:
    """The tree under ``root`` (images 40-80 px a side, random aspect); returns each split's labels in file order."""
    generator = torch.Generator().manual_seed(seed)

    def image() -> bytes:
        height, width = (int(v) for v in torch.randint(40, 81, (2,), generator=generator))
        pixels = torch.randint(0, 256, (3, height // 8, width // 8), dtype=torch.uint8, generator=generator)
        smooth = torch.nn.functional.interpolate(pixels[None].float(), size=(height, width), mode="bilinear")
        return encode_jpeg(smooth[0].clamp(0, 255).to(torch.uint8), quality=90)

    labels: dict[str, list[int]] = {"train": [], "val": []}
    for label, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(TRAIN_PER_CLASS):
            write_file(str(root / "train" / wnid / f"{wnid}_{i}.JPEG"), image())
            labels["train"].append(label)
    (root / "val").mkdir()
    order = torch.randperm(len(WNIDS) * VAL_PER_CLASS, generator=generator).tolist()
    truth = []
    for number, slot in enumerate(order, start=1):
        label = slot % len(WNIDS)
        name = f"ILSVRC2012_val_{number:08d}.JPEG"
        if sorted_val:
            (root / "val" / WNIDS[label]).mkdir(exist_ok=True)
            write_file(str(root / "val" / WNIDS[label] / name), image())
        else:
            write_file(str(root / "val" / name), image())
        truth.append(label + 1)
        labels["val"].append(label)
    if not sorted_val:
        devkit = root / "ILSVRC2012_devkit_t12" / "data"
        devkit.mkdir(parents=True)
        (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))
        write_meta(devkit / "meta.mat", WNIDS)
    return labels
