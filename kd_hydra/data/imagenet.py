"""ImageNet (ILSVRC2012) as torchvision's ``ImageNet`` reads it, on the variable-size image-file path.

``<path>/train/<wnid>/*.JPEG`` (one folder per synset) and the validation images either sorted into the same
synset folders (``<path>/val/<wnid>/*``) or flat (``<path>/val/ILSVRC2012_val_*.JPEG``) with the devkit's
``ILSVRC2012_validation_ground_truth.txt`` and ``meta.mat`` (in ``<path>/ILSVRC2012_devkit_t12/data/`` or in
``<path>``), mapped as torchvision's ``parse_devkit_archive`` does. Class index = position of the wnid in
sorted order (torchvision's). The validation split is the test split. Nothing is downloaded: the files are
licensed, so every missing file is one line naming it and what to put there.

Training images keep their sizes (each sample's random-resized crop is drawn from the plan,
:mod:`kd_hydra.data.resized_crop`); the test split is decoded once (Resize + CenterCrop) into the decoded store.
"""

from __future__ import annotations

import os

from kd_hydra.data.decoded import check_memory_budget, decoded_eval_images
from kd_hydra.data.folder import TRAIN_FOLDER, list_image_folder
from kd_hydra.data.images import DEFAULT_MAX_IMAGE_PIXELS, RGB_CHANNELS, is_image_name, shown
from kd_hydra.data.split import files_subset
from kd_hydra.data.types import DatasetSpec, FolderData, ImageFileDataset
from kd_hydra.errors import ConfigError, DataError

VAL_FOLDER = "val"
DEVKIT_FOLDERS = (os.path.join("ILSVRC2012_devkit_t12", "data"), "")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
LICENSED = "the files are licensed: download them from https://image-net.org (ILSVRC2012) yourself"


def _missing(path: str, what: str) -> DataError:
    return DataError(f"ImageNet: {shown(path)} not found; expected {what} ({LICENSED})")


def devkit_file(root: str, name: str) -> str:
    """Path of devkit file ``name``: ``<root>/ILSVRC2012_devkit_t12/data/<name>`` or ``<root>/<name>``."""
    for folder in DEVKIT_FOLDERS:
        path = os.path.join(root, folder, name)
        if os.path.isfile(path):
            return path
    raise _missing(
        os.path.join(root, DEVKIT_FOLDERS[0], name),
        f"the devkit's {name} (extract ILSVRC2012_devkit_t12.tar.gz into {shown(root)}), "
        f"or {VAL_FOLDER}/ sorted into one folder per synset",
    )


def ilsvrc_id_to_wnid(meta_path: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id of the 1,000 leaf synsets (``num_children == 0``) of the devkit's meta.mat."""
    from scipy import io as scipy_io  # on use: only flat validation folders need it

    try:
        synsets = scipy_io.loadmat(meta_path, squeeze_me=True)["synsets"]
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{shown(meta_path)}: not the devkit's meta.mat ({type(error).__name__}: {error}); expected a 'synsets' "
            "struct with ILSVRC2012_ID, WNID and num_children"
        ) from None
    return {int(i): str(w) for i, w, c in zip(ids.ravel(), wnids.ravel(), children.ravel()) if int(c) == 0}


def _flat_val_files(root: str, classes: list[str]) -> tuple[list[str], list[int]]:
    folder = os.path.join(root, VAL_FOLDER)
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and is_image_name(entry.name))
    if not names:
        raise _missing(
            os.path.join(folder, "ILSVRC2012_val_00000001.JPEG"),
            f"the validation images (extract ILSVRC2012_img_val.tar into {shown(folder)}), or {VAL_FOLDER}/ sorted "
            "into one folder per synset",
        )
    truth_path = devkit_file(root, GROUND_TRUTH)
    id_to_wnid = ilsvrc_id_to_wnid(devkit_file(root, META))
    with open(truth_path, encoding="utf-8") as handle:
        ids = [line.strip() for line in handle if line.strip()]
    if len(ids) != len(names):
        raise DataError(
            f"{shown(truth_path)}: {len(ids)} labels for {len(names)} images in {shown(folder)}; expected one "
            "ILSVRC2012_ID per validation image, in file-name order"
        )
    index = {wnid: label for label, wnid in enumerate(classes)}
    labels: list[int] = []
    for number, value in enumerate(ids, start=1):
        wnid = id_to_wnid.get(int(value)) if value.isdigit() else None
        if wnid not in index:
            raise DataError(
                f"{shown(truth_path)}:{number}: {value!r} names no synset of {TRAIN_FOLDER}/ (through meta.mat); "
                "expected an ILSVRC2012_ID of a leaf synset whose folder is in train/"
            )
        labels.append(index[wnid])
    return [os.path.join(VAL_FOLDER, name) for name in names], labels


def imagenet_files(root: str) -> tuple[ImageFileDataset, ImageFileDataset, list[str]]:
    """(train, validation, sorted wnids) of the ILSVRC2012 tree at ``root``, every label checked."""
    train_folder, val_folder = os.path.join(root, TRAIN_FOLDER), os.path.join(root, VAL_FOLDER)
    if not os.path.isdir(train_folder):
        raise _missing(
            train_folder,
            "one folder per synset (train/n01440764/*.JPEG ...: extract ILSVRC2012_img_train.tar, then each class "
            "tar inside it into a folder of its name)",
        )
    if not os.path.isdir(val_folder):
        raise _missing(
            val_folder,
            "the validation images (extract ILSVRC2012_img_val.tar there, with the devkit beside it, or sort them "
            "into one folder per synset)",
        )
    train_files, train_labels, classes = list_image_folder(root, TRAIN_FOLDER, None)
    sorted_val = any(entry.is_dir() and not entry.name.startswith(".") for entry in os.scandir(val_folder))
    if sorted_val:
        val_files, val_labels, _ = list_image_folder(root, VAL_FOLDER, classes)
    else:
        val_files, val_labels = _flat_val_files(root, classes)
    return ImageFileDataset(root, train_files, train_labels), ImageFileDataset(root, val_files, val_labels), classes


def load_imagenet(
    name: str = "imagenet",
    *,
    path: str | None,
    image_size: int = 224,
    eval_resize: int = 256,
    cache_dir: str | None = None,
    in_memory: bool = True,
    max_memory_gb: float | None = None,
    decode_workers: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    subset: int | None = None,
) -> FolderData:
    """ILSVRC2012 at ``path`` (see the module): variable-size training images for the plan's random-resized crops
    to ``image_size``, and the validation split (the test split) resized to ``eval_resize`` and center-cropped,
    decoded once into ``<cache_dir>/decoded/`` and memory-mapped (``in_memory``; else read from the files).
    ``subset`` (``dataset.subset``) keeps at most that many files of each split before any is decoded."""
    if path is None or not str(path).strip():
        raise ConfigError("dataset.path", "is not set; expected the ILSVRC2012 folder holding train/ and val/")
    if eval_resize < image_size:
        raise ConfigError(
            "dataset.eval_resize", f"is {eval_resize}; expected >= dataset.image_size ({image_size}): the center crop"
        )
    root = os.path.expanduser(str(path))
    train, test, classes = imagenet_files(root)
    train, test = files_subset(train, subset), files_subset(test, subset)
    for split in (train, test):
        split.image_size, split.max_pixels = int(image_size), max_image_pixels
    test.eval_resize = int(eval_resize)
    spec = DatasetSpec(name, len(classes), RGB_CHANNELS, int(image_size), tuple(classes), len(train), len(test))
    cache_dir = None if cache_dir is None else os.path.expanduser(str(cache_dir))
    test_images = None
    if in_memory:  # only the validation split is decoded; the training images are read per batch
        check_memory_budget(name, len(test), int(image_size), max_memory_gb)
        test_images = decoded_eval_images(test, name, cache_dir, decode_workers)
    return FolderData(train, test, spec, test_images=test_images, variable_size=True)
