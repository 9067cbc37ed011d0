"""What a loader returns: a dataset's description plus its data, in memory or as image files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from kd_hydra.errors import DataError

#: Digest size in bytes of every fingerprint (hex string of twice this length).
FINGERPRINT_BYTES = 16


@dataclass(frozen=True)
class DatasetSpec:
    """What models and the trainer need to know about a dataset; images are square."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    classes: tuple[str, ...]
    num_train: int
    num_test: int

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise DataError(
                f"dataset {self.name}: {len(self.classes)} class names for {self.num_classes} classes; "
                "expected one name per class"
            )
        for field, value in (("num_classes", self.num_classes), ("channels", self.channels),
                             ("image_size", self.image_size), ("num_train", self.num_train),
                             ("num_test", self.num_test)):
            if value < 1:
                raise DataError(f"dataset {self.name}: {field} is {value}; expected a positive integer")


def _hash_tensor(hasher: "hashlib.blake2b", name: str, tensor: torch.Tensor) -> None:
    array = tensor.detach().cpu().contiguous().numpy()
    hasher.update(f"{name}:{array.dtype.str}:{tuple(array.shape)};".encode())
    hasher.update(memoryview(array).cast("B"))


@dataclass
class ArrayData:
    """An array-sized dataset fully in memory: uint8 (N, C, H, W) images and int64 (N,) labels on CPU."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    spec: DatasetSpec

    def __post_init__(self) -> None:
        name, spec = self.spec.name, self.spec
        expected_image = (spec.channels, spec.image_size, spec.image_size)
        for split, x, y, count in (("train", self.x_train, self.y_train, spec.num_train),
                                   ("test", self.x_test, self.y_test, spec.num_test)):
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != expected_image:
                raise DataError(
                    f"dataset {name}: x_{split} is {x.dtype} {tuple(x.shape)}; "
                    f"expected torch.uint8 (N, {', '.join(map(str, expected_image))})"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x) or len(x) != count:
                raise DataError(
                    f"dataset {name}: y_{split} is {y.dtype} {tuple(y.shape)} for {len(x)} images "
                    f"(spec says {count}); expected torch.int64 ({count},)"
                )
        self.x_train, self.x_test = self.x_train.contiguous(), self.x_test.contiguous()

    def fingerprint(self) -> str:
        """Content address of the four tensors (bytes, dtypes and shapes): a cache key."""
        hasher = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
        for name in ("x_train", "y_train", "x_test", "y_test"):
            _hash_tensor(hasher, name, getattr(self, name))
        return hasher.hexdigest()


class ImageFileDataset(Dataset):
    """Image files under `root` with integer labels; item i is (uint8 RGB (3, H, W) tensor, label)."""

    def __init__(self, root: str, files: list[str], labels: list[int]) -> None:
        if len(files) != len(labels):
            raise DataError(f"{root}: {len(files)} image files but {len(labels)} labels; expected one label per file")
        self.root = root
        # numpy arrays instead of lists of objects: forked DataLoader workers share them copy-free.
        self.files = np.asarray(files, dtype=np.str_)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """Absolute path of item `index`."""
        return os.path.join(self.root, str(self.files[index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.io import ImageReadMode, decode_image, read_file  # on use: slow to import

        path = self.path(index)
        try:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except (OSError, RuntimeError) as error:
            reason = " ".join(str(error).split())
            raise DataError(f"{path}: cannot read image ({reason}); expected a readable JPEG/PNG file") from error
        return image, int(self.labels[index])

    def fingerprint_into(self, hasher: "hashlib.blake2b") -> None:
        """Feed the sorted (relative path, size, label) triples to `hasher`; reads no pixels."""
        for index in np.argsort(self.files, kind="stable"):
            relative = str(self.files[index])
            path = os.path.join(self.root, relative)
            try:
                size = os.stat(path).st_size
            except OSError as error:
                raise DataError(f"{path}: cannot stat ({error.strerror}); expected a readable image file") from error
            hasher.update(f"{relative}\t{size}\t{int(self.labels[index])}\n".encode())


@dataclass
class FolderData:
    """A dataset of image files read through a DataLoader; items are (uint8 (C, H, W) tensor, int label)."""

    train: ImageFileDataset
    test: ImageFileDataset
    spec: DatasetSpec

    def fingerprint(self) -> str:
        """Digest of each split's sorted relative file list, file sizes and labels (no pixel reading)."""
        hasher = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
        for split, dataset in (("train", self.train), ("test", self.test)):
            hasher.update(f"[{split}]\n".encode())
            dataset.fingerprint_into(hasher)
        return hasher.hexdigest()
