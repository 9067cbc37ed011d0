"""Decoded images: a folder dataset decoded once into uint8 arrays under the cache directory.

`<cache_dir>/decoded/<name>-<key>/` is a :class:`~kd_hydra.stores.cache_entry.CacheEntry` holding x_train.npy,
y_train.npy, x_test.npy, y_test.npy and its seal. The key digests every file's bytes, relative path and label
(and the decode settings), so any change of content gives a new entry. An entry is built under the entry's
lock and sealed last (the SHA-256 of each array file, and what the entry holds: its content key, the class names
and sizes); later loads verify the seal against the files and the key, and the labels' range, then memory-map
it. An entry that fails is decoded again, with a log line saying why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_hydra.data.images import RGB_CHANNELS, parallel_map, read_image
from kd_hydra.data.types import ArrayData, DatasetSpec, FolderData, ImageFileDataset
from kd_hydra.errors import ConfigError, KDHydraError
from kd_hydra.records.files import reserve_blocks, write_error, write_json
from kd_hydra.stores.cache_entry import CacheEntry, file_sha256

log = logging.getLogger(__name__)

#: Bump when the decoded bytes for the same files would change (decoder settings, layout). 2: sealed entries;
#: 3: the seal records what the entry holds (:func:`entry_description`).
FORMAT_VERSION = 3
FOLDER = "decoded"
KEY_BYTES = 12
CHECKED_SUFFIX = ".checked.json"
#: Default budget for a decoded store: this fraction of the physical memory.
DEFAULT_MEMORY_FRACTION = 0.5
BYTES_PER_GB = 1e9
_SPLITS = ("train", "test")
ARRAY_FILES = tuple(f"{kind}_{split}.npy" for kind in ("x", "y") for split in _SPLITS)


def physical_memory_bytes() -> int:
    """Installed RAM in bytes (0 when the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def memory_budget_bytes(max_memory_gb: float | None) -> float:
    """`max_memory_gb` in bytes; None: DEFAULT_MEMORY_FRACTION of the physical memory (no limit if unknown)."""
    if max_memory_gb is None:
        physical = physical_memory_bytes()
        return DEFAULT_MEMORY_FRACTION * physical if physical else float("inf")
    return float(max_memory_gb) * BYTES_PER_GB


def check_memory_budget(name: str, num_images: int, image_size: int, max_memory_gb: float | None) -> None:
    """Refuse (one line, suggesting dataset.in_memory=false) a decoded store larger than the budget."""
    needed = num_images * RGB_CHANNELS * image_size * image_size
    budget = memory_budget_bytes(max_memory_gb)
    if needed > budget:
        origin = (
            "dataset.max_memory_gb"
            if max_memory_gb is not None
            else f"{DEFAULT_MEMORY_FRACTION:g} of the physical memory, dataset.max_memory_gb=null"
        )
        raise ConfigError(
            "dataset.in_memory",
            f"decoding {name} in memory needs {needed / BYTES_PER_GB:.2f} GB ({num_images} images of "
            f"{RGB_CHANNELS}x{image_size}x{image_size}), over the budget of {budget / BYTES_PER_GB:.2f} GB "
            f"({origin}); set dataset.in_memory=false to stream the files, or raise dataset.max_memory_gb",
        )


def content_key(
    train: ImageFileDataset,
    test: ImageFileDataset,
    classes: tuple[str, ...],
    image_size: int,
    workers: int | None = None,
) -> str:
    """Digest of the decode settings, class names and every (relative path, label, file bytes), in item order."""
    hasher = hashlib.blake2b(digest_size=KEY_BYTES)
    hasher.update(f"kd-hydra/decoded/v{FORMAT_VERSION}/rgb/{image_size}\n".encode())
    hasher.update(("\t".join(classes) + "\n").encode())
    for split, dataset in zip(_SPLITS, (train, test)):
        dataset.content_digests(workers)
        hasher.update(f"[{split}]\n".encode())
        dataset.fingerprint_into(hasher)
    return hasher.hexdigest()


def entry_path(cache_dir: str | os.PathLike, name: str, key: str) -> Path:
    """Where the store entry of dataset `name` with content key `key` lives."""
    return Path(cache_dir).expanduser() / FOLDER / f"{name}-{key}"


def decode_split(
    dataset: ImageFileDataset, out: np.ndarray, image_size: int, workers: int | None, description: str | None
) -> None:
    """Decode every item of `dataset` into `out` (N, 3, S, S) uint8, in parallel; `out=None` only checks."""

    def one(index: int) -> None:
        image = read_image(dataset.path(index), image_size, dataset.max_pixels, dataset.eval_resize)
        if out is not None:
            out[index] = image.numpy()

    parallel_map(one, len(dataset), workers, description)


def _decode_into(
    entry: CacheEntry, train: ImageFileDataset, test: ImageFileDataset, spec: DatasetSpec, workers: int | None
) -> float:
    """Write the four array files into the entry's folder (fsynced); returns the decoding seconds."""
    started = time.perf_counter()
    size = spec.image_size
    for split, dataset in zip(_SPLITS, (train, test)):
        x = np.lib.format.open_memmap(
            entry.file(f"x_{split}.npy"), mode="w+", dtype=np.uint8, shape=(len(dataset), RGB_CHANNELS, size, size)
        )
        reserve_blocks(entry.file(f"x_{split}.npy"))
        decode_split(dataset, x, size, workers, f"decoding {spec.name} {split}")
        x.flush()
        del x
        np.save(entry.file(f"y_{split}.npy"), dataset.labels.astype(np.int64))
    for name in ARRAY_FILES:
        with open(entry.file(name), "rb") as handle:
            os.fsync(handle.fileno())
    return time.perf_counter() - started


def entry_description(key: str, spec: DatasetSpec) -> dict[str, Any]:
    """What a decoded entry holds, recorded in its seal and checked on every read: the content key it was decoded
    for, and the dataset's name, classes, image size and split sizes."""
    return {
        "content_key": key,
        "name": spec.name,
        "classes": list(spec.classes),
        "image_size": spec.image_size,
        "num_train": spec.num_train,
        "num_test": spec.num_test,
    }


def _write_entry(
    entry: CacheEntry,
    train: ImageFileDataset,
    test: ImageFileDataset,
    spec: DatasetSpec,
    workers: int | None,
    description: dict[str, Any],
) -> None:
    """Decode both splits into the (emptied) entry and seal it with ``description``; call under the entry's lock."""
    shutil.rmtree(entry.path, ignore_errors=True)
    entry.path.mkdir(parents=True)
    try:
        seconds = _decode_into(entry, train, test, spec, workers)
    except BaseException as error:  # a bad image, an interrupt or a full disk: no partial entry stays behind
        shutil.rmtree(entry.path, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, KDHydraError):
            raise write_error(Path(error.filename or entry.path), error) from None
        raise
    files = {name: file_sha256(entry.file(name)) for name in ARRAY_FILES}
    entry.seal(files, version=FORMAT_VERSION, description=description, decode_seconds=round(seconds, 3))
    log.info(
        "decoded %s once: %d images in %.1f s into %s", spec.name, spec.num_train + spec.num_test, seconds, entry.path
    )


def _read_entry(entry: CacheEntry, spec: DatasetSpec, description: dict[str, Any]) -> tuple[ArrayData | None, str]:
    """(the entry memory-mapped (copy-on-write, so tensors share the pages), "") or (None, why it cannot be used).

    The seal must hold and match every array file and record ``description`` (an entry placed under another key
    is never served), and the labels must lie in [0, number of classes).
    """
    seal, problem = entry.verified()
    if seal is None:
        return None, problem or "not sealed (an interrupted decoding, or an entry of an older kd-hydra)"
    if seal.get("version") != FORMAT_VERSION:
        return None, f"format version {seal.get('version')!r}, not {FORMAT_VERSION}"
    if not entry.describes(seal, description, quiet=True):
        return None, "it does not hold what its key names: its seal records another description"
    try:
        arrays = {
            name.removesuffix(".npy"): np.load(entry.file(name), mmap_mode="c" if name.startswith("x") else None)
            for name in ARRAY_FILES
        }
    except (OSError, ValueError) as error:
        return None, f"unreadable arrays ({type(error).__name__})"
    for split in _SPLITS:
        labels = arrays[f"y_{split}"]
        if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
            return None, f"y_{split} holds labels outside [0, {len(spec.classes)})"
    tensors = {key: torch.from_numpy(value) for key, value in arrays.items()}
    try:
        data = ArrayData(tensors["x_train"], tensors["y_train"], tensors["x_test"], tensors["y_test"], spec)
    except Exception as error:  # noqa: BLE001 - a damaged entry is decoded again
        return None, str(error).splitlines()[0] if str(error) else type(error).__name__
    return data, ""


def decoded_arrays(files: FolderData, cache_dir: str | os.PathLike | None, workers: int | None = None) -> ArrayData:
    """The splits of ``files`` as ArrayData, decoded once into the store (or only in memory when cache_dir is None)."""
    train, test, spec = files.train, files.test, files.spec
    if cache_dir is None:
        started = time.perf_counter()
        size = spec.image_size
        arrays = []
        for split, dataset in zip(_SPLITS, (train, test)):
            x = np.empty((len(dataset), RGB_CHANNELS, size, size), dtype=np.uint8)
            decode_split(dataset, x, size, workers, f"decoding {spec.name} {split}")
            arrays += [torch.from_numpy(x), torch.from_numpy(dataset.labels.astype(np.int64))]
        log.info(
            "decoded %s in memory (no cache_dir): %d images in %.1f s",
            spec.name,
            spec.num_train + spec.num_test,
            time.perf_counter() - started,
        )
        return ArrayData(*arrays, spec)
    key = content_key(train, test, spec.classes, spec.image_size, workers)
    entry = CacheEntry(entry_path(cache_dir, spec.name, key))
    description = entry_description(key, spec)
    data, problem = _read_entry(entry, spec, description) if entry.path.is_dir() else (None, "")
    if data is not None:
        log.info("dataset %s: decoded store %s reused", spec.name, entry.path)
        return data
    with entry.locked("decoding these images"):
        data, problem = (  # another job built it
            _read_entry(entry, spec, description) if entry.path.is_dir() else (None, "")
        )
        if data is None:
            if problem:
                log.warning(
                    "dataset %s: decoded store %s failed its check (%s); decoding again", spec.name, entry.path, problem
                )
            _write_entry(entry, train, test, spec, workers, description)
            data, problem = _read_entry(entry, spec, description)
    if data is None:
        raise OSError(f"{entry.path}: decoded store unusable right after writing it ({problem})")
    return data


def check_decodable(files: FolderData, cache_dir: str | os.PathLike | None, workers: int | None = None) -> str:
    """Decode every image of ``files`` once without keeping it (a DataError names the first bad file); returns the
    content key.

    With a cache_dir, a passed check is recorded per content key and not repeated.
    """
    train, test, spec = files.train, files.test, files.spec
    key = content_key(train, test, spec.classes, spec.image_size, workers)
    entry = None if cache_dir is None else entry_path(cache_dir, spec.name, key)
    marker = None if entry is None else entry.with_name(entry.name + CHECKED_SUFFIX)
    if marker is not None and marker.is_file():
        return key
    started = time.perf_counter()
    for split, dataset in zip(_SPLITS, (train, test)):
        decode_split(dataset, None, spec.image_size, workers, f"checking {spec.name} {split}")
    seconds = time.perf_counter() - started
    log.info("checked %s: %d images decode (%.1f s)", spec.name, spec.num_train + spec.num_test, seconds)
    if marker is not None:
        write_json(
            marker,
            {
                "version": FORMAT_VERSION,
                "name": spec.name,
                "num_train": spec.num_train,
                "num_test": spec.num_test,
                "check_seconds": round(seconds, 3),
            },
        )
    return key


EVAL_FILE = "x_eval.npy"


def decoded_eval_images(
    dataset: ImageFileDataset, name: str, cache_dir: str | os.PathLike | None, workers: int | None = None
) -> torch.Tensor:
    """One split decoded once for evaluation (``dataset.eval_resize`` then the central ``image_size``, ImageNet's
    Resize + CenterCrop) as uint8 (N, 3, S, S), memory-mapped from ``<cache_dir>/decoded/<name>-eval-<key>/``.

    The key digests the decode settings and every (relative path, label, file bytes); the entry is sealed and
    verified like the whole-dataset entries. Without a cache_dir the images are decoded in memory.
    """
    size = int(dataset.image_size)
    shape = (len(dataset), RGB_CHANNELS, size, size)
    if cache_dir is None:
        x = np.empty(shape, dtype=np.uint8)
        decode_split(dataset, x, size, workers, f"decoding {name} eval")
        return torch.from_numpy(x)
    hasher = hashlib.blake2b(digest_size=KEY_BYTES)
    hasher.update(f"kd-hydra/decoded-eval/v{FORMAT_VERSION}/rgb/{dataset.eval_resize}/{size}\n".encode())
    dataset.content_digests(workers)
    dataset.fingerprint_into(hasher)
    key = hasher.hexdigest()
    entry = CacheEntry(entry_path(cache_dir, f"{name}-eval", key))
    description = {"content_key": key, "name": name, "eval_resize": dataset.eval_resize, "image_size": size,
                   "num_images": len(dataset)}  # fmt: skip

    def read() -> torch.Tensor | None:
        seal, _ = entry.verified() if entry.path.is_dir() else (None, "")
        if seal is None or seal.get("version") != FORMAT_VERSION or not entry.describes(seal, description, quiet=True):
            return None
        x = np.load(entry.file(EVAL_FILE), mmap_mode="c")
        return torch.from_numpy(x) if x.shape == shape and x.dtype == np.uint8 else None

    images = read()
    if images is not None:
        return images
    with entry.locked("decoding these images"):
        images = read()
        if images is None:
            shutil.rmtree(entry.path, ignore_errors=True)
            entry.path.mkdir(parents=True)
            started = time.perf_counter()
            try:
                x = np.lib.format.open_memmap(entry.file(EVAL_FILE), mode="w+", dtype=np.uint8, shape=shape)
                reserve_blocks(entry.file(EVAL_FILE))
                decode_split(dataset, x, size, workers, f"decoding {name} eval")
                x.flush()
                del x
            except BaseException as error:
                shutil.rmtree(entry.path, ignore_errors=True)
                if isinstance(error, OSError) and not isinstance(error, KDHydraError):
                    raise write_error(Path(error.filename or entry.file(EVAL_FILE)), error) from None
                raise
            seconds = time.perf_counter() - started
            entry.seal({EVAL_FILE: file_sha256(entry.file(EVAL_FILE))}, version=FORMAT_VERSION,
                       description=description, decode_seconds=round(seconds, 3))  # fmt: skip
            log.info("decoded %s eval once: %d images in %.1f s into %s", name, len(dataset), seconds, entry.path)
            images = read()
    if images is None:
        raise OSError(f"{entry.path}: decoded store unusable right after writing it")
    return images
