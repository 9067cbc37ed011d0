"""CIFAR-10 / CIFAR-100 from the python-pickle layout; every file's published MD5 is checked before unpickling."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from kd_hydra.data.types import ArrayData, DatasetSpec
from kd_hydra.errors import ConfigError, DataError

CIFAR_CHANNELS = 3
CIFAR_SIZE = 32
_PIXELS_PER_IMAGE = CIFAR_CHANNELS * CIFAR_SIZE * CIFAR_SIZE


@dataclass(frozen=True)
class _Layout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    url: str


_LAYOUTS = {
    "cifar10": _Layout(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _Layout(
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def _where_to_put(layout: _Layout, folder: str) -> str:
    return (
        f"expected {os.path.join(folder, layout.train_files[0])} ... ; put the python version of the dataset "
        f"there ({layout.url} extracted)"
    )


def _published_md5(variant: str) -> dict[str, str]:
    """File name -> published MD5 of every batch and meta file (torchvision keeps the list)."""
    import torchvision.datasets  # on use: slow to import

    dataset_class = torchvision.datasets.CIFAR10 if variant == "cifar10" else torchvision.datasets.CIFAR100
    listed = {name: md5 for name, md5 in (*dataset_class.train_list, *dataset_class.test_list)}
    listed[dataset_class.meta["filename"]] = dataset_class.meta["md5"]
    return listed


def _verify_checksums(variant: str, layout: _Layout, folder: str, files: tuple[str, ...]) -> None:
    """Refuse (one line naming the file) any file whose MD5 differs from the published one; unpickles nothing."""
    from torchvision.datasets.utils import check_integrity

    published = _published_md5(variant)
    for file in files:
        path = os.path.join(folder, file)
        if not check_integrity(path, published[file]):
            raise DataError(
                f"{path}: MD5 differs from the published {layout.title} file (md5 {published[file]}); "
                f"expected the original file from {layout.url} (refused unread: pickle files can run "
                "code), or set dataset.loader.verify_checksums=false for a file you trust"
            )


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            content = pickle.load(handle, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        reason = type(error).__name__
        raise DataError(f"{path}: cannot unpickle ({reason}); expected a CIFAR python-version batch file") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: holds a {type(content).__name__}; expected a dict of a CIFAR python-version batch")
    return content


def _read_batch(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise DataError(f"{path}: no key {key!r}; expected keys b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS_PER_IMAGE:
        raise DataError(f"{path}: b'data' is {data.dtype} {data.shape}; expected uint8 (N, {_PIXELS_PER_IMAGE})")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {label_key!r} has {labels.shape} {labels.dtype}; expected {len(data)} integer labels")
    return data, labels


def _read_split(folder: str, files: tuple[str, ...], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [_read_batch(os.path.join(folder, name), label_key) for name in files]
    data = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    # Each row holds the R, G and B planes one after the other, each plane row-major: that is CHW.
    images = torch.from_numpy(data).view(-1, CIFAR_CHANNELS, CIFAR_SIZE, CIFAR_SIZE).contiguous()
    return images, torch.from_numpy(labels.astype(np.int64))


def _download(variant: str, root: str, layout: _Layout, folder: str) -> None:
    import torchvision.datasets

    dataset_class = torchvision.datasets.CIFAR10 if variant == "cifar10" else torchvision.datasets.CIFAR100
    try:
        dataset_class(root, train=True, download=True)
    except Exception as error:  # any failure (network, disk, checksum) gets the same remedy
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        remedy = _where_to_put(layout, folder)
        raise DataError(f"{layout.title} download into {root} failed ({reason}): {remedy}") from error


def load_cifar(
    name: str | None = None,
    *,
    root: str,
    variant: str = "cifar10",
    download: bool = False,
    verify_checksums: bool = True,
) -> ArrayData:
    """CIFAR-10 or CIFAR-100 (fine labels) from `<root>/cifar-10-batches-py` or `<root>/cifar-100-python`.

    Missing files are downloaded through torchvision when `download` is true. Unless `verify_checksums` is
    false, each file's MD5 must match the published one before anything is unpickled.
    """
    if variant not in _LAYOUTS:
        raise ConfigError("dataset.loader.variant", f"is {variant!r}; expected one of {sorted(_LAYOUTS)}")
    layout = _LAYOUTS[variant]
    root = os.path.expanduser(str(root))
    folder = os.path.join(root, layout.folder)
    needed = (*layout.train_files, layout.test_file, layout.meta_file)
    if not all(os.path.isfile(os.path.join(folder, file)) for file in needed):
        if not download:
            remedy = _where_to_put(layout, folder)
            raise DataError(f"{layout.title} not found: {remedy} or set dataset.loader.download=true")
        _download(variant, root, layout, folder)
    if not isinstance(verify_checksums, bool):
        raise ConfigError("dataset.loader.verify_checksums", f"is {verify_checksums!r}; expected true or false")
    if verify_checksums:
        _verify_checksums(variant, layout, folder, needed)

    x_train, y_train = _read_split(folder, layout.train_files, layout.label_key)
    x_test, y_test = _read_split(folder, (layout.test_file,), layout.label_key)
    meta_path = os.path.join(folder, layout.meta_file)
    meta = _unpickle(meta_path)
    if layout.names_key not in meta:
        raise DataError(f"{meta_path}: no key {layout.names_key!r}; expected the list of class names")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key])
    for split, labels in (("train", y_train), ("test", y_test)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise DataError(
                f"{folder}: {split} labels span [{int(labels.min())}, {int(labels.max())}]; "
                f"expected [0, {len(classes)}) as {meta_path} names {len(classes)} classes"
            )
    spec = DatasetSpec(
        name=variant if name is None else name,
        num_classes=len(classes),
        channels=CIFAR_CHANNELS,
        image_size=CIFAR_SIZE,
        classes=classes,
        num_train=len(y_train),
        num_test=len(y_test),
    )
    return ArrayData(x_train, y_train, x_test, y_test, spec)
