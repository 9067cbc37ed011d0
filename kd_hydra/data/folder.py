"""Folder datasets: your own images in ImageFolder layout, and what every image-file dataset shares.

A listed folder dataset becomes ArrayData through the decode-once store (`dataset.in_memory=true`)
or stays FolderData for the DataLoader path, after every image was checked to decode.
"""

from __future__ import annotations

import os
from typing import Any

from kd_hydra.data.decoded import check_decodable, check_memory_budget, decoded_arrays
from kd_hydra.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_SUFFIXES,
    RGB_CHANNELS,
    is_image_name,
    read_image,
    shown,
)
from kd_hydra.data.split import files_subset
from kd_hydra.data.types import ArrayData, DatasetSpec, FolderData, ImageFileDataset
from kd_hydra.errors import ConfigError, DataError

TRAIN_FOLDER = "train"
#: Accepted names of the test split's folder, in order of preference.
TEST_FOLDERS = ("test", "val")
_LAYOUT = "<path>/train/<class>/*.jpg|png|... and <path>/test/<class>/... (or val/)"


def _first_image_size(train: ImageFileDataset) -> int:
    first = read_image(train.path(0), None, train.max_pixels)
    height, width = int(first.shape[1]), int(first.shape[2])
    if height != width:
        raise ConfigError(
            "dataset.image_size",
            f"is null and {shown(train.path(0))} is {width}x{height}; expected square "
            "images, or set dataset.image_size to resize every image to S x S",
        )
    return height


def folder_dataset(
    name: str,
    train: ImageFileDataset,
    test: ImageFileDataset,
    classes: tuple[str, ...],
    *,
    cache_dir: str | None = None,
    in_memory: bool = True,
    image_size: int | None = None,
    max_memory_gb: float | None = None,
    decode_workers: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    subset: int | None = None,
) -> ArrayData | FolderData:
    """Listed image files as ArrayData (decoded once into the cache) or, with in_memory false, checked FolderData.

    Images of another size are resized to `image_size` (None: the first training image's size); a file
    declaring more than `max_image_pixels` pixels is refused before it is decoded. `subset` (``dataset.subset``)
    keeps at most that many files of each split before anything is decoded. Its keyword parameters
    are the options of every image-file dataset (``load_folder``, ``load_tiny_imagenet`` pass them on); the
    dataset node's values among them are checked by ``validate`` (kd_hydra.data.config.check_dataset).
    """
    if decode_workers is not None and (
        isinstance(decode_workers, bool) or not isinstance(decode_workers, int) or decode_workers < 1
    ):
        raise ConfigError(
            "dataset.loader.decode_workers",
            f"is {decode_workers!r}; expected a positive integer or null (one per core)",
        )
    train, test = files_subset(train, subset), files_subset(test, subset)
    train.max_pixels = test.max_pixels = max_image_pixels
    size = _first_image_size(train) if image_size is None else int(image_size)
    train.image_size = test.image_size = size
    files = FolderData(train, test, DatasetSpec(name, len(classes), RGB_CHANNELS, size, classes, len(train), len(test)))
    cache_dir = None if cache_dir is None else os.path.expanduser(str(cache_dir))
    if in_memory:
        check_memory_budget(name, len(train) + len(test), size, max_memory_gb)
        return decoded_arrays(files, cache_dir, decode_workers)
    check_decodable(files, cache_dir, decode_workers)
    return files


def _class_folders(folder: str) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _images_under(folder: str, root: str) -> list[str]:
    """Relative (to root) paths of the image files anywhere below `folder`, sorted."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.relpath(os.path.join(parent, n), root) for n in names if is_image_name(n))
    return sorted(found)


def list_image_folder(
    root: str, split_folder: str, classes: list[str] | None
) -> tuple[list[str], list[int], list[str]]:
    """(files relative to root, labels, class names) of `<root>/<split_folder>/<class>/...`.

    With `classes` None the class folders define the classes (sorted); otherwise each folder must be one of them.
    """
    folder = os.path.join(root, split_folder)
    found = _class_folders(folder)
    if classes is None:
        if not found:
            raise DataError(f"{shown(folder)}: no class folders; expected {_LAYOUT}")
        classes = found
    index = {name: label for label, name in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for name in found:
        if name not in index:
            raise DataError(
                f"{shown(os.path.join(folder, name))}: class {name!r} has no folder in "
                f"{shown(os.path.join(root, TRAIN_FOLDER))}; expected the same class folders in every split"
            )
        images = _images_under(os.path.join(folder, name), root)
        if not images and split_folder == TRAIN_FOLDER:
            raise DataError(
                f"{shown(os.path.join(folder, name))}: no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "expected at least one training image per class folder"
            )
        files.extend(images)
        labels.extend([index[name]] * len(images))
    if not files:
        raise DataError(f"{shown(folder)}: no image files ({', '.join(IMAGE_SUFFIXES)}); expected {_LAYOUT}")
    return files, labels, classes


def load_folder(name: str = "folder", *, path: str | None, **options: Any) -> ArrayData | FolderData:
    """Your images in ImageFolder layout: `<path>/train/<class>/*` and `<path>/test/<class>/*` (or `val/`).

    Class index = position of the class folder name in sorted order. `options` are `folder_dataset`'s.
    """
    if path is None or not str(path).strip():
        raise ConfigError("dataset.path", f"is not set; expected a folder laid out as {_LAYOUT}")
    root = os.path.expanduser(str(path))
    if not os.path.isdir(os.path.join(root, TRAIN_FOLDER)):
        raise DataError(f"{shown(root)}: no '{TRAIN_FOLDER}' folder; expected {_LAYOUT}")
    test_folder = next((f for f in TEST_FOLDERS if os.path.isdir(os.path.join(root, f))), None)
    if test_folder is None:
        raise DataError(f"{shown(root)}: no '{TEST_FOLDERS[0]}' or '{TEST_FOLDERS[1]}' folder; expected {_LAYOUT}")
    train_files, train_labels, classes = list_image_folder(root, TRAIN_FOLDER, None)
    test_files, test_labels, _ = list_image_folder(root, test_folder, classes)
    train = ImageFileDataset(root, train_files, train_labels)
    test = ImageFileDataset(root, test_files, test_labels)
    return folder_dataset(name, train, test, tuple(classes), **options)
