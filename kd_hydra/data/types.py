"""What a loader returns: a dataset's description plus its data, in memory or as image files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from kd_hydra.data.images import DEFAULT_MAX_IMAGE_PIXELS, FILE_DIGEST_BYTES, file_digests, read_image
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
    num_val: int = 0  # held out of the training split (dataset.val_fraction); num_train excludes them

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise DataError(
                f"dataset {self.name}: {len(self.classes)} class names for {self.num_classes} classes; "
                "expected one name per class"
            )
        for field, value in (
            ("num_classes", self.num_classes),
            ("channels", self.channels),
            ("image_size", self.image_size),
            ("num_train", self.num_train),
            ("num_test", self.num_test),
        ):
            if value < 1:
                raise DataError(f"dataset {self.name}: {field} is {value}; expected a positive integer")
        if self.num_val < 0:
            raise DataError(f"dataset {self.name}: num_val is {self.num_val}; expected an integer >= 0")


def _hash_tensor(hasher: hashlib.blake2b, name: str, tensor: torch.Tensor) -> None:
    array = tensor.detach().cpu().contiguous().numpy()
    hasher.update(f"{name}:{array.dtype.str}:{tuple(array.shape)};".encode())
    hasher.update(memoryview(array).cast("B"))


@dataclass
class ArrayData:
    """An array-sized dataset in memory (or memory-mapped): uint8 (N, C, H, W) images, int64 (N,) labels, CPU.

    `x_val`/`y_val` are the validation part held out of the training split (both None when there is none).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    spec: DatasetSpec
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self) -> None:
        name, spec = self.spec.name, self.spec
        expected_image = (spec.channels, spec.image_size, spec.image_size)
        if (self.x_val is None) != (self.y_val is None) or (self.x_val is None and spec.num_val):
            kinds = f"{type(self.x_val).__name__}/{type(self.y_val).__name__}"
            raise DataError(
                f"dataset {name}: spec says {spec.num_val} validation images but x_val/y_val are "
                f"{kinds}; expected both tensors or both None"
            )
        splits = [
            ("train", self.x_train, self.y_train, spec.num_train),
            ("test", self.x_test, self.y_test, spec.num_test),
        ]
        if self.x_val is not None:
            splits.append(("val", self.x_val, self.y_val, spec.num_val))
        for split, x, y, count in splits:
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
        if self.x_val is not None:
            self.x_val = self.x_val.contiguous()

    @property
    def has_val(self) -> bool:
        """Whether a validation part was held out."""
        return self.x_val is not None

    def fingerprint(self) -> str:
        """Content address of the tensors (bytes, dtypes and shapes; the val part when present): a cache key."""
        hasher = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
        names = ["x_train", "y_train", "x_test", "y_test"] + (["x_val", "y_val"] if self.has_val else [])
        for name in names:
            _hash_tensor(hasher, name, getattr(self, name))
        return hasher.hexdigest()


class ImageFileDataset(Dataset):
    """Image files under `root` with integer labels; item i is (uint8 RGB (3, S, S) tensor, label).

    Images of another size are resized (antialiased) to S = `image_size` on read; None keeps them as they are.
    With `eval_resize` R the shorter side is resized to R and the central S x S kept instead (ImageNet evaluation).
    A file declaring more than `max_pixels` pixels is refused before it is decoded.
    """

    def __init__(
        self,
        root: str,
        files: list[str],
        labels: list[int],
        image_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        eval_resize: int | None = None,
    ) -> None:
        if len(files) != len(labels):
            raise DataError(f"{root}: {len(files)} image files but {len(labels)} labels; expected one label per file")
        self.root = root
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.eval_resize = eval_resize
        # numpy arrays instead of lists of objects: forked DataLoader workers share them copy-free.
        self.files = np.asarray(files, dtype=np.str_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._digests: np.ndarray | None = None  # (N, FILE_DIGEST_BYTES) uint8, once computed

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """Absolute path of item `index`."""
        return os.path.join(self.root, str(self.files[index]))

    def paths(self) -> list[str]:
        """Absolute paths of every item, in order."""
        return [self.path(i) for i in range(len(self))]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_image(self.path(index), self.image_size, self.max_pixels, self.eval_resize)
        return image, int(self.labels[index])

    def content_digests(self, workers: int | None = None) -> np.ndarray:
        """(N, FILE_DIGEST_BYTES) uint8: row i digests file i's bytes (computed once, in parallel, then kept)."""
        if self._digests is None:
            digests = file_digests(self.paths(), workers)
            self._digests = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), FILE_DIGEST_BYTES)
        return self._digests

    def subset(self, indices: Sequence[int]) -> ImageFileDataset:
        """The items at `indices` (in that order), keeping already computed digests."""
        indices = [int(i) for i in indices]
        part = ImageFileDataset(
            self.root,
            [str(self.files[i]) for i in indices],
            [int(self.labels[i]) for i in indices],
            self.image_size,
            self.max_pixels,
            self.eval_resize,
        )
        if self._digests is not None:
            part._digests = self._digests[indices]
        return part

    def fingerprint_into(self, hasher: hashlib.blake2b) -> None:
        """Feed the (relative path, label, content digest) of every item, in item order, to `hasher`."""
        for relative, label, digest in zip(self.files, self.labels, self.content_digests()):
            hasher.update(f"{relative}\t{int(label)}\t{digest.tobytes().hex()}\n".encode())


@dataclass
class FolderData:
    """A dataset of image files read through a DataLoader; items are (uint8 (C, H, W) tensor, int label).

    `val` is the validation part held out of the training split (None when there is none). `test_images`, when
    set, is the test split decoded once (uint8 (N, C, S, S), memory-mapped from the decoded store, in item order):
    evaluation reads it instead of the files. `variable_size`: the training images keep their own sizes (the
    pipeline crops each one to S x S, ImageNet's random-resized crops).
    """

    train: ImageFileDataset
    test: ImageFileDataset
    spec: DatasetSpec
    val: ImageFileDataset | None = None
    test_images: torch.Tensor | None = None
    variable_size: bool = False

    @property
    def has_val(self) -> bool:
        """Whether a validation part was held out."""
        return self.val is not None

    def fingerprint(self) -> str:
        """Digest of each split's relative paths, labels and file contents (the val part when present)."""
        hasher = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
        splits = [("train", self.train), ("test", self.test)] + ([("val", self.val)] if self.has_val else [])
        for split, dataset in splits:
            hasher.update(f"[{split}]\n".encode())
            dataset.fingerprint_into(hasher)
        return hasher.hexdigest()
