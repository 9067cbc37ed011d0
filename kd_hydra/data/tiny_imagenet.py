"""Tiny ImageNet from the standard `tiny-imagenet-200` folder; the val split is the test split."""

from __future__ import annotations

import os
from typing import Any

from kd_hydra.data.folder import folder_dataset
from kd_hydra.data.types import ArrayData, FolderData, ImageFileDataset
from kd_hydra.errors import DataError

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_SUFFIX = ".JPEG"


def _require(path: str, root: str) -> str:
    if not os.path.exists(path):
        raise DataError(
            f"Tiny ImageNet not found: expected {path}; download {TINY_IMAGENET_URL} and unzip it into {root}"
        )
    return path


def _read_wnids(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        wnids = [line.strip() for line in handle if line.strip()]
    if not wnids:
        raise DataError(f"{path}: no class ids; expected one WordNet id (like n01443537) per line")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: repeated class ids; expected each WordNet id once")
    return sorted(wnids)


def _train_files(folder: str, wnids: list[str], root: str) -> tuple[list[str], list[int]]:
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = _require(os.path.join(folder, "train", wnid, "images"), root)
        names = sorted(entry.name for entry in os.scandir(images) if entry.name.endswith(IMAGE_SUFFIX))
        if not names:
            raise DataError(f"{images}: no *{IMAGE_SUFFIX} files; expected the training images of class {wnid}")
        files.extend(os.path.join("train", wnid, "images", name) for name in names)
        labels.extend([label] * len(names))
    return files, labels


def _val_files(folder: str, index: dict[str, int], root: str) -> tuple[list[str], list[int]]:
    annotations = _require(os.path.join(folder, "val", "val_annotations.txt"), root)
    files: list[str] = []
    labels: list[int] = []
    with open(annotations, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(
                    f"{annotations}:{number}: expected 'filename<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' "
                    f"with a wnid listed in wnids.txt, got {line.strip()!r}"
                )
            files.append(os.path.join("val", "images", fields[0]))
            labels.append(index[fields[1]])
    if not files:
        raise DataError(f"{annotations}: no annotations; expected one line per validation image")
    return files, labels


def load_tiny_imagenet(name: str = "tiny_imagenet", *, root: str, **options: Any) -> ArrayData | FolderData:
    """Tiny ImageNet under `<root>/tiny-imagenet-200`; class index = position in sorted(wnids).

    Decoded once into the cache under `cache_dir` (ArrayData) or, with in_memory false, FolderData;
    `options` are :func:`kd_hydra.data.folder.folder_dataset`'s.
    """
    root = os.path.expanduser(str(root))
    folder = os.path.join(root, TINY_IMAGENET_FOLDER)
    wnids = _read_wnids(_require(os.path.join(folder, "wnids.txt"), root))
    train = ImageFileDataset(folder, *_train_files(folder, wnids, root))
    test = ImageFileDataset(folder, *_val_files(folder, {wnid: i for i, wnid in enumerate(wnids)}, root))
    _require(test.path(0), root)
    return folder_dataset(name, train, test, tuple(wnids), **options)
