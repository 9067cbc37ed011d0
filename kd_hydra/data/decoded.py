"""Decoded images: a folder dataset decoded once into uint8 arrays under the cache directory.

`<cache_dir>/decoded/<name>-<key>/` holds x_train.npy, y_train.npy, x_test.npy, y_test.npy and
meta.json. The key digests every file's bytes, relative path and label (and the decode settings),
so any change of content gives a new entry. An entry is built in a temporary folder under a file
lock and renamed into place whole; later loads memory-map it. meta.json records a digest of each
array file: a load verifies them and the labels' range, and an entry that fails is decoded again
(with a log line saying why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from kd_hydra.data.images import RGB_CHANNELS, parallel_map, read_image
from kd_hydra.data.types import ArrayData, DatasetSpec, ImageFileDataset
from kd_hydra.errors import ConfigError
from kd_hydra.outputs import write_json

log = logging.getLogger(__name__)

#: Bump when the decoded bytes for the same files would change (decoder settings, layout).
FORMAT_VERSION = 1
FOLDER = "decoded"
KEY_BYTES = 12
META_FILE = "meta.json"
CHECKED_SUFFIX = ".checked.json"
#: Default budget for a decoded store: this fraction of the physical memory.
DEFAULT_MEMORY_FRACTION = 0.5
BYTES_PER_GB = 1e9
_SPLITS = ("train", "test")
ARRAY_FILES = tuple(f"{kind}_{split}.npy" for kind in ("x", "y") for split in _SPLITS)
ARRAY_DIGEST_BYTES = 16
_READ_BLOCK = 1 << 22


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
    if isinstance(max_memory_gb, bool) or not isinstance(max_memory_gb, (int, float)) or not max_memory_gb > 0:
        raise ConfigError(
            "dataset.max_memory_gb",
            f"is {max_memory_gb!r}; expected a positive number of GB or null "
            f"({DEFAULT_MEMORY_FRACTION:g} of the physical memory)",
        )
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


def array_digest(path: Path) -> str:
    """blake2b hex digest of a store file's bytes."""
    hasher = hashlib.blake2b(digest_size=ARRAY_DIGEST_BYTES)
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def entry_path(cache_dir: str | os.PathLike, name: str, key: str) -> Path:
    """Where the store entry of dataset `name` with content key `key` lives."""
    return Path(cache_dir).expanduser() / FOLDER / f"{name}-{key}"


def decode_split(
    dataset: ImageFileDataset, out: np.ndarray, image_size: int, workers: int | None, description: str | None
) -> None:
    """Decode every item of `dataset` into `out` (N, 3, S, S) uint8, in parallel; `out=None` only checks."""

    def one(index: int) -> None:
        image = read_image(dataset.path(index), image_size, dataset.max_pixels)
        if out is not None:
            out[index] = image.numpy()

    parallel_map(one, len(dataset), workers, description)


def _write_entry(
    final: Path, train: ImageFileDataset, test: ImageFileDataset, spec: DatasetSpec, workers: int | None
) -> None:
    temporary = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        started = time.perf_counter()
        size = spec.image_size
        for split, dataset in zip(_SPLITS, (train, test)):
            x = np.lib.format.open_memmap(
                temporary / f"x_{split}.npy", mode="w+", dtype=np.uint8, shape=(len(dataset), RGB_CHANNELS, size, size)
            )
            decode_split(dataset, x, size, workers, f"decoding {spec.name} {split}")
            x.flush()
            del x
            np.save(temporary / f"y_{split}.npy", dataset.labels.astype(np.int64))
        seconds = time.perf_counter() - started
        write_json(
            temporary / META_FILE,
            {
                "version": FORMAT_VERSION,
                "name": spec.name,
                "classes": list(spec.classes),
                "image_size": size,
                "num_train": spec.num_train,
                "num_test": spec.num_test,
                "decode_seconds": round(seconds, 3),
                "digests": {name: array_digest(temporary / name) for name in ARRAY_FILES},
            },
        )
        for file in temporary.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    log.info("decoded %s once: %d images in %.1f s into %s", spec.name, spec.num_train + spec.num_test, seconds, final)


def _read_entry(final: Path, spec: DatasetSpec) -> tuple[ArrayData | None, str]:
    """(the entry memory-mapped (copy-on-write, so tensors share the pages), "") or (None, why it cannot be used).

    The array files must match the digests meta.json recorded when the entry was built, and the labels
    must lie in [0, number of classes).
    """
    try:
        meta = json.loads((final / META_FILE).read_text())
    except (OSError, ValueError) as error:
        return None, f"unreadable {META_FILE} ({type(error).__name__})"
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        return None, f"format version {meta.get('version') if isinstance(meta, dict) else None!r}, not {FORMAT_VERSION}"
    if tuple(meta.get("classes", ())) != spec.classes:
        return None, "other class names"
    digests = meta.get("digests")
    if not isinstance(digests, dict):
        return None, "no digests recorded (built by an older version)"
    try:
        for name in ARRAY_FILES:
            if array_digest(final / name) != digests.get(name):
                return None, f"{name} does not match its recorded digest"
        arrays = {
            name.removesuffix(".npy"): np.load(final / name, mmap_mode="c" if name.startswith("x") else None)
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


def decoded_arrays(
    train: ImageFileDataset,
    test: ImageFileDataset,
    spec: DatasetSpec,
    cache_dir: str | os.PathLike | None,
    workers: int | None = None,
) -> ArrayData:
    """The splits as ArrayData, decoded once into the store (or only in memory when cache_dir is None)."""
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
    final = entry_path(cache_dir, spec.name, key)
    data, problem = _read_entry(final, spec) if final.is_dir() else (None, "")
    if data is not None:
        log.info("dataset %s: decoded store %s reused", spec.name, final)
        return data
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        data, problem = _read_entry(final, spec) if final.is_dir() else (None, "")  # another job may have built it
        if data is None:
            if problem:
                log.warning("dataset %s: decoded store %s failed its check (%s); decoding again", spec.name, final,
                            problem)  # fmt: skip
            shutil.rmtree(final, ignore_errors=True)
            _write_entry(final, train, test, spec, workers)
            data, problem = _read_entry(final, spec)
    if data is None:
        raise OSError(f"{final}: decoded store unusable right after writing it ({problem})")
    return data


def check_decodable(
    train: ImageFileDataset,
    test: ImageFileDataset,
    spec: DatasetSpec,
    cache_dir: str | os.PathLike | None,
    workers: int | None = None,
) -> str:
    """Decode every image once without keeping it (a DataError names the first bad file); returns the content key.

    With a cache_dir, a passed check is recorded per content key and not repeated.
    """
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
