"""Any image-classification dataset saved as one `.npz` of NHWC uint8 images and integer labels."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from kd_hydra.data.types import ArrayData, DatasetSpec
from kd_hydra.errors import ConfigError, DataError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
_KEYS_TEXT = "x_train, y_train, x_test, y_test (optional classes)"


def _check_images(path: str, key: str, x: np.ndarray) -> None:
    if x.ndim != 4:
        raise DataError(f"{path}: key '{key}' has shape {x.shape}; expected 4-D (N, H, W, C) NHWC images")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: key '{key}' has dtype {x.dtype}; expected uint8 pixels 0..255")
    if x.shape[0] == 0:
        raise DataError(f"{path}: key '{key}' holds no images; expected at least one")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{path}: key '{key}' has {x.shape[1]}x{x.shape[2]} images; expected square images (H == W)")


def _check_labels(path: str, key: str, y: np.ndarray, count: int) -> None:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: key '{key}' is {y.dtype} with shape {y.shape}; expected 1-D integer labels")
    if len(y) != count:
        raise DataError(f"{path}: key '{key}' has {len(y)} labels for {count} images; expected one label per image")


def _class_names(path: str, archive: np.lib.npyio.NpzFile, num_classes: int) -> tuple[str, ...]:
    if "classes" not in archive.files:
        return tuple(str(i) for i in range(num_classes))
    classes = archive["classes"]
    if classes.ndim != 1 or len(classes) != num_classes:
        raise DataError(f"{path}: key 'classes' has shape {classes.shape}; expected ({num_classes},) class names")
    return tuple(str(name) for name in classes)


def load_arrays(name: str = "arrays", *, path: str | None, num_classes: int | None = None) -> ArrayData:
    """A dataset from an `.npz` with x_train, y_train, x_test, y_test; num_classes defaults to max label + 1."""
    if path is None or not str(path).strip():
        raise ConfigError("dataset.path", f"is not set; expected the .npz file with keys {_KEYS_TEXT}")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; dataset.path must name an .npz with keys {_KEYS_TEXT}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes); expected an .npz with keys {_KEYS_TEXT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        reason = type(error).__name__
        raise DataError(f"{path}: cannot read as .npz ({reason}); expected an .npz with keys {_KEYS_TEXT}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):  # np.save output (one array) under an .npz name
        what = f"a single {getattr(archive, 'dtype', '')} array of shape {getattr(archive, 'shape', '?')}"
        raise DataError(f"{path}: holds {what} (np.save output); expected an .npz (np.savez) with keys {_KEYS_TEXT}")
    with archive:
        for key in REQUIRED_KEYS:
            if key not in archive.files:
                raise DataError(f"{path}: missing key '{key}'; expected keys {_KEYS_TEXT}")
        try:
            arrays = {key: archive[key] for key in REQUIRED_KEYS}
        except ValueError as error:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: holds object arrays ({error}); expected plain numeric arrays") from error

        for split in ("train", "test"):
            _check_images(path, f"x_{split}", arrays[f"x_{split}"])
            _check_labels(path, f"y_{split}", arrays[f"y_{split}"], len(arrays[f"x_{split}"]))
        if arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
            raise DataError(
                f"{path}: key 'x_test' has images of shape {arrays['x_test'].shape[1:]}; "
                f"expected the (H, W, C) of x_train, {arrays['x_train'].shape[1:]}"
            )

        highest = max(int(arrays["y_train"].max()), int(arrays["y_test"].max()))
        num_classes = highest + 1 if num_classes is None else int(num_classes)
        for key in ("y_train", "y_test"):
            y = arrays[key]
            if int(y.min()) < 0 or int(y.max()) >= num_classes:
                raise DataError(
                    f"{path}: key '{key}' has labels in [{int(y.min())}, {int(y.max())}]; "
                    f"expected labels in [0, {num_classes})"
                )
        classes = _class_names(path, archive, num_classes)

    x_train, x_test = (torch.from_numpy(arrays[k]).permute(0, 3, 1, 2).contiguous() for k in ("x_train", "x_test"))
    y_train, y_test = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("y_train", "y_test"))
    spec = DatasetSpec(
        name=name,
        num_classes=num_classes,
        channels=x_train.shape[1],
        image_size=x_train.shape[2],
        classes=classes,
        num_train=len(y_train),
        num_test=len(y_test),
    )
    return ArrayData(x_train, y_train, x_test, y_test, spec)
