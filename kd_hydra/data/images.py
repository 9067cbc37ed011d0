"""Image files: content digests, decoding to uint8 RGB tensors, and parallel passes over many files.

Decoding and hashing release the GIL, so a thread pool scales over cores without copying data.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from kd_hydra.data.config import DEFAULT_MAX_IMAGE_PIXELS
from kd_hydra.data.image_header import declared_size
from kd_hydra.errors import DataError

#: Suffixes (lower case) taken as images; torchvision decodes JPEG, PNG, WebP and GIF.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
RGB_CHANNELS = 3
#: Digest size in bytes of one file's content digest.
FILE_DIGEST_BYTES = 16
#: Images (or files) per task handed to a worker thread: amortises scheduling, keeps progress smooth.
CHUNK = 256
MAX_DEFAULT_WORKERS = 8
_READ_BLOCK = 1 << 20


def default_workers() -> int:
    """Threads for decoding and hashing: one per core, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def is_image_name(name: str) -> bool:
    """Whether a file name has one of IMAGE_SUFFIXES (any case) and is not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def shown(path: str) -> str:
    """``path`` for a one-line message: as it is, or ``repr`` when it holds newlines or other unprintables."""
    return path if path.isprintable() else repr(path)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: str) -> int:
    """A read-only descriptor of ``path``; a DataError (never a hang) when it is not a regular file.

    Opened non-blocking, so a FIFO or a device named like an image is refused instead of waited on.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise DataError(f"{shown(path)}: cannot read ({error.strerror}); expected a readable image file") from error
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise DataError(f"{shown(path)}: is {_file_kind(mode)}; expected a regular image file")
    return descriptor


def read_bytes(path: str) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`)."""
    with os.fdopen(open_regular(path), "rb") as handle:
        try:
            return handle.read()
        except OSError as error:
            raise DataError(f"{shown(path)}: cannot read ({error.strerror}); expected a readable image file") from error


def file_digest(path: str) -> bytes:
    """blake2b digest of the regular file's bytes, read in streaming fashion."""
    hasher = hashlib.blake2b(digest_size=FILE_DIGEST_BYTES)
    with os.fdopen(open_regular(path), "rb") as handle:
        try:
            while block := handle.read(_READ_BLOCK):
                hasher.update(block)
        except OSError as error:
            raise DataError(f"{shown(path)}: cannot read ({error.strerror}); expected a readable image file") from error
    return hasher.digest()


def check_pixel_budget(path: str, data: bytes, max_pixels: int | None) -> None:
    """Refuse (one line naming the file and its declared size) an image declaring more than ``max_pixels``."""
    size = declared_size(data)
    if max_pixels is None or size is None:
        return
    width, height = size
    if width * height > max_pixels:
        raise DataError(
            f"{shown(path)}: declares {width}x{height} = {width * height:,} pixels, over "
            f"dataset.max_image_pixels={max_pixels:,}; refused before decoding (raise the budget if the image is real)"
        )


def read_image(
    path: str,
    image_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    eval_resize: int | None = None,
) -> torch.Tensor:
    """The file as uint8 RGB (3, H, W); resized (antialiased) to image_size x image_size unless None.

    With ``eval_resize`` R (and an image_size S) the shorter side is resized to R and the central S x S kept
    instead (torchvision's ``Resize(R)`` + ``CenterCrop(S)``, ImageNet's evaluation). Only regular files are read,
    and a header declaring more than ``max_pixels`` pixels is refused undecoded.
    """
    data = read_bytes(path)
    check_pixel_budget(path, data, max_pixels)
    image = decode_bytes(path, data)
    if eval_resize is not None and image_size is not None:
        from kd_hydra.data.resized_crop import resize_center_crop

        return resize_center_crop(image, eval_resize, image_size)
    if image_size is not None and tuple(image.shape[-2:]) != (image_size, image_size):
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, [image_size, image_size], antialias=True)
    return image


def decode_bytes(path: str, data: bytes) -> torch.Tensor:
    """uint8 RGB (3, H, W) of an image file's bytes (libjpeg-turbo through torchvision.io); a DataError naming
    ``path`` when they do not decode."""
    from torchvision.io import ImageReadMode, decode_image  # on use: slow to import

    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(
            f"{shown(path)}: cannot decode image ({reason}); expected a readable JPEG/PNG/WebP/GIF file"
        ) from error
    return image


def parallel_map(
    function: Callable[[int], None], count: int, workers: int | None = None, description: str | None = None
) -> None:
    """Call function(i) for i in range(count) on a thread pool; the first exception stops the rest and is raised.

    Shows a tqdm bar named `description` when stderr is a terminal.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    chunks = [range(start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]

    def run(chunk: range) -> int:
        for index in chunk:
            function(index)
        return len(chunk)

    bar = None
    if description is not None and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=count, desc=description, unit="img", file=sys.stderr)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kd-hydra-decode")
    try:
        for done in executor.map(run, chunks):
            if bar is not None:
                bar.update(done)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()


def file_digests(paths: Sequence[str], workers: int | None = None) -> list[bytes]:
    """file_digest of every path, in order, computed in parallel."""
    digests: list[bytes] = [b""] * len(paths)

    def one(index: int) -> None:
        digests[index] = file_digest(paths[index])

    parallel_map(one, len(paths), workers)
    return digests
