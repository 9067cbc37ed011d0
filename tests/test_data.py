"""Tests of the data layer (kd_hydra.data) and the dataset config group; generated data only."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
import torchvision.datasets
from omegaconf import OmegaConf
from scipy import stats
from torchvision.io import encode_jpeg, write_file, write_png
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from conftest import TINY, Workspace, one_line_error, write_npz
from kd_hydra.data import (
    ArrayData,
    AugmentConfig,
    FolderData,
    InMemoryPipeline,
    LoaderPipeline,
    build_pipeline,
    channel_mean_std,
    crop_flip,
    load_arrays,
    load_cifar,
    load_digits,
    load_synthetic,
    load_tiny_imagenet,
    normalization_constants,
    normalize,
    sample_crop_flip,
)
from kd_hydra.errors import ConfigError, DataError
from kd_hydra.train.batches import BatchSource

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
DATASET_CONFIGS = ("cifar10", "cifar100", "tiny_imagenet", "folder", "arrays", "digits", "synthetic")
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

CIFAR_PIXELS = 3 * 32 * 32
PER_BATCH = 3  # images in each fake CIFAR batch file
MEAN3 = (0.5, 0.4, 0.3)
STD3 = (0.25, 0.2, 0.3)
TOLERANCE = dict(rtol=0.0, atol=1e-5)

# Fake Tiny ImageNet: wnids deliberately not sorted in wnids.txt.
WNIDS = ("n03000002", "n01000001", "n02000003")
TINY_SIZE = 8
TRAIN_PER_CLASS = 2
VAL_ITEMS = (("val_0.JPEG", "n02000003"), ("val_1.JPEG", "n01000001"), ("val_2.JPEG", "n03000002"))
GRAY_VAL = "val_1.JPEG"
JPEG_TOLERANCE = 12  # pixel levels a flat JPEG may drift


# -- fake datasets ---------------------------------------------------------------------------


def _dump(path: Path, content: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle)


def write_fake_cifar(root: Path, variant: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The python-pickle layout of `variant` with PER_BATCH random images per file; returns them by file."""
    rng = np.random.default_rng(0)
    if variant == "cifar10":
        folder, label_key, num_classes = root / "cifar-10-batches-py", b"labels", 10
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta_name, meta = "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(num_classes)]}
    else:
        folder, label_key, num_classes = root / "cifar-100-python", b"fine_labels", 100
        files = ["train", "test"]
        meta_name, meta = (
            "meta",
            {
                b"fine_label_names": [f"f{i}".encode() for i in range(num_classes)],
                b"coarse_label_names": [f"k{i}".encode() for i in range(20)],
            },
        )
    folder.mkdir(parents=True)
    written = {}
    for name in files:
        data = rng.integers(0, 256, (PER_BATCH, CIFAR_PIXELS), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, PER_BATCH)]
        content = {
            b"batch_label": name.encode(),
            label_key: labels,
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(PER_BATCH)],
        }
        if variant == "cifar100":
            content[b"coarse_labels"] = [v // 5 for v in labels]
        _dump(folder / name, content)
        written[name] = (data, np.array(labels))
    _dump(folder / meta_name, meta)
    return written


def _flat_jpeg(path: Path, color: tuple[int, ...]) -> None:
    image = torch.tensor(color, dtype=torch.uint8).view(-1, 1, 1).expand(len(color), TINY_SIZE, TINY_SIZE).contiguous()
    write_file(str(path), encode_jpeg(image, quality=95))


def class_color(label: int) -> tuple[int, int, int]:
    return (40 + 80 * label, 200 - 60 * label, 120)


def write_fake_tiny_imagenet(root: Path) -> Path:
    """A tiny-imagenet-200 folder: 3 classes, TRAIN_PER_CLASS flat-colour JPEGs each, 3 val images (one gray)."""
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(TRAIN_PER_CLASS):
            _flat_jpeg(images / f"{wnid}_{i}.JPEG", class_color(sorted(WNIDS).index(wnid)))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for name, wnid in VAL_ITEMS:
        color = (128,) if name == GRAY_VAL else class_color(sorted(WNIDS).index(wnid))
        _flat_jpeg(folder / "val" / "images" / name, color)
        lines.append(f"{name}\t{wnid}\t0\t0\t{TINY_SIZE - 1}\t{TINY_SIZE - 1}")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def write_fake_folder(root: Path) -> Path:
    """An ImageFolder layout with 2 classes: 2 random-pixel PNGs each under train/, 1 under val/."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 2), ("val", 1)):
        for label in range(2):
            (root / split / f"class{label}").mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(0, 256, (3, TINY_SIZE, TINY_SIZE), dtype=torch.uint8, generator=generator)
                write_png(noise, str(root / split / f"class{label}" / f"{i}.png"))
    return root


def array_arrays(num_train: int = 20, num_test: int = 10, size: int = 8, channels: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x_train": rng.integers(0, 256, (num_train, size, size, channels), dtype=np.uint8),
        "y_train": np.arange(num_train) % 4,
        "x_test": rng.integers(0, 256, (num_test, size, size, channels), dtype=np.uint8),
        "y_test": np.arange(num_test) % 4,
    }


def small_data(num_train: int = 100, image_size: int = 12) -> ArrayData:
    return load_synthetic(num_train=num_train, num_test=30, num_classes=5, image_size=image_size, seed=3)


def reference_normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """torchvision's ToDtype(scale=True) + Normalize."""
    return v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(x))


def per_sample(batches) -> dict[int, torch.Tensor]:
    return {int(i): x for xb, _, idx in batches for x, i in zip(xb.cpu(), idx.cpu())}


# -- CIFAR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_reads_pickle_layout(tmp_path: Path, variant: str) -> None:
    written = write_fake_cifar(tmp_path, variant)
    data = load_cifar(root=str(tmp_path), variant=variant, verify_checksums=False)  # fake files: no published MD5
    train_files = [name for name in written if name not in ("test_batch", "test")]
    expected_x = np.concatenate([written[name][0] for name in train_files])
    expected_y = np.concatenate([written[name][1] for name in train_files])
    assert data.x_train.shape == (len(expected_x), 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.y_train.dtype == torch.int64 and data.y_train.tolist() == expected_y.tolist()
    # Pixel (row 2, column 5) of the green plane sits at 1024 + 2 * 32 + 5 of the flat row.
    assert int(data.x_train[-1, 1, 2, 5]) == int(expected_x[-1, 1024 + 2 * 32 + 5])
    assert torch.equal(data.x_train.reshape(len(expected_x), -1), torch.from_numpy(expected_x))
    test_name = "test_batch" if variant == "cifar10" else "test"
    assert torch.equal(data.x_test.reshape(PER_BATCH, -1), torch.from_numpy(written[test_name][0]))
    assert data.y_test.tolist() == written[test_name][1].tolist()
    assert data.spec.name == variant and data.spec.num_classes == (10 if variant == "cifar10" else 100)
    assert data.spec.classes[1] == ("c1" if variant == "cifar10" else "f1")
    assert (data.spec.num_train, data.spec.num_test, data.spec.image_size) == (len(expected_x), PER_BATCH, 32)


def test_cifar_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1.*download=true") as info:
        load_cifar(root=str(tmp_path), variant="cifar10", download=False)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_cifar_failed_download_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network\nat all")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="download .* failed .*cifar-100-python/train") as info:
        load_cifar(root=str(tmp_path), variant="cifar100", download=True)
    assert "\n" not in str(info.value)


class _Planted:
    """Unpickling this touches `marker`: stands for a pickle that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar_refuses_planted_file_unread(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar10")
    marker = tmp_path / "code_ran"
    planted = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    _dump(planted, _Planted(marker))
    with pytest.raises(DataError) as info:
        load_cifar(root=str(tmp_path), variant="cifar10")
    message = str(info.value)
    assert message.startswith(f"{planted}: MD5") and "verify_checksums=false" in message and "\n" not in message
    assert not marker.exists()
    # Control: the same file with checks off is unpickled, and runs its code.
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar(root=str(tmp_path), variant="cifar10", verify_checksums=False)
    assert marker.exists()


def test_cifar_checksums_accept_matching_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from kd_hydra.data import cifar

    written = write_fake_cifar(tmp_path, "cifar100")
    folder = tmp_path / "cifar-100-python"
    published = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    monkeypatch.setattr(cifar, "_published_md5", lambda variant: published)
    data = load_cifar(root=str(tmp_path), variant="cifar100")
    assert data.y_test.tolist() == written["test"][1].tolist()
    with open(folder / "meta", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError, match=r"cifar-100-python/meta: MD5"):
        load_cifar(root=str(tmp_path), variant="cifar100")


def test_cifar_bad_variant(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset.loader.variant"):
        load_cifar(root=str(tmp_path), variant="cifar1000")


# -- Tiny ImageNet ---------------------------------------------------------------------------


def test_tiny_imagenet_labels_and_gray(tmp_path: Path) -> None:
    data = load_tiny_imagenet(root=str(write_fake_tiny_imagenet(tmp_path)), in_memory=False)
    assert isinstance(data, FolderData)
    assert data.spec.classes == tuple(sorted(WNIDS))
    assert (data.spec.num_train, data.spec.num_test, data.spec.image_size, data.spec.channels) == (6, 3, TINY_SIZE, 3)
    for i in range(len(data.train)):
        image, label = data.train[i]
        assert Path(data.train.path(i)).parent.parent.name == sorted(WNIDS)[label]
        assert image.shape == (3, TINY_SIZE, TINY_SIZE) and image.dtype == torch.uint8
        color = torch.tensor(class_color(label)).view(3, 1, 1)
        assert (image.int() - color).abs().max() <= JPEG_TOLERANCE
    labels = [data.test[i][1] for i in range(len(data.test))]
    assert labels == [sorted(WNIDS).index(wnid) for _, wnid in VAL_ITEMS]
    gray, _ = data.test[[name for name, _ in VAL_ITEMS].index(GRAY_VAL)]
    assert gray.shape == (3, TINY_SIZE, TINY_SIZE) and torch.equal(gray[0], gray[1])


def test_tiny_imagenet_folder_fingerprint_reads_content(tmp_path: Path) -> None:
    root = write_fake_tiny_imagenet(tmp_path)
    before = load_tiny_imagenet(root=str(root), in_memory=False).fingerprint()
    assert before == load_tiny_imagenet(root=str(root), in_memory=False).fingerprint()
    image = root / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG"
    content = bytearray(image.read_bytes())
    content[-3] ^= 0xFF  # same size, other bytes (a stat-based fingerprint misses this)
    image.write_bytes(bytes(content))
    assert load_tiny_imagenet(root=str(root), in_memory=False).fingerprint() != before


def test_tiny_imagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tiny-imagenet-200/wnids.txt.*tiny-imagenet-200.zip"):
        load_tiny_imagenet(root=str(tmp_path))


# -- arrays ----------------------------------------------------------------------------------


def test_arrays_valid(tmp_path: Path) -> None:
    arrays = array_arrays()
    path = tmp_path / "ok.npz"
    np.savez(path, **arrays, classes=np.array(["a", "b", "c", "d"]))
    data = load_arrays(path=str(path))
    assert data.x_train.shape == (20, 3, 8, 8) and data.x_train.is_contiguous()
    assert torch.equal(data.x_train.permute(0, 2, 3, 1), torch.from_numpy(arrays["x_train"]))
    assert data.y_test.dtype == torch.int64 and data.y_test.tolist() == arrays["y_test"].tolist()
    assert data.spec.num_classes == 4 and data.spec.classes == ("a", "b", "c", "d")
    unnamed = tmp_path / "unnamed.npz"
    np.savez(unnamed, **arrays)
    assert load_arrays(path=str(unnamed), num_classes=6).spec.classes == tuple("012345")
    with pytest.raises(DataError, match="'classes'"):
        load_arrays(path=str(path), num_classes=6)
    assert data.fingerprint() == load_arrays(path=str(path)).fingerprint()


def _drop(key):
    return lambda a: {k: v for k, v in a.items() if k != key}


def _set(key, make):
    return lambda a: {**a, key: make(a)}


MALFORMED = {
    "missing key": (_drop("y_test"), "y_test"),
    "wrong dtype": (_set("x_train", lambda a: a["x_train"].astype(np.float32)), "x_train"),
    "wrong ndim": (_set("x_test", lambda a: a["x_test"][..., 0]), "x_test"),
    "not square": (_set("x_train", lambda a: a["x_train"][:, :, :5]), "x_train"),
    "split shape mismatch": (_set("x_test", lambda a: a["x_test"][:, :4, :4]), "x_test"),
    "label out of range": (_set("y_train", lambda a: np.where(np.arange(20) == 3, 7, a["y_train"])), "y_train"),
    "negative label": (_set("y_test", lambda a: a["y_test"] - 1), "y_test"),
    "length mismatch": (_set("y_train", lambda a: a["y_train"][:-1]), "y_train"),
    "float labels": (_set("y_test", lambda a: a["y_test"].astype(np.float32)), "y_test"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_arrays_malformed(tmp_path: Path, case: str) -> None:
    change, key = MALFORMED[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **change(array_arrays()))
    with pytest.raises(DataError) as info:
        load_arrays(path=str(path), num_classes=4 if case == "label out of range" else None)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and "\n" not in message


def test_arrays_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file.*expected an .npz") as info:
        load_arrays(path=str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_arrays_single_array_renamed(tmp_path: Path) -> None:
    saved = tmp_path / "one.npy"
    np.save(saved, array_arrays()["x_train"])
    path = tmp_path / "one.npz"
    saved.rename(path)
    with pytest.raises(DataError, match=r"single uint8 array of shape \(20, 8, 8, 3\).*np.savez") as info:
        load_arrays(path=str(path))
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_arrays_without_path(tmp_path: Path) -> None:
    for path in (None, ""):
        with pytest.raises(ConfigError, match=r"^dataset\.path: is not set; expected the .npz"):
            load_arrays(path=path)
    cfg = compose("arrays", tmp_path)
    from kd_hydra.config.checks import validate

    with pytest.raises(ConfigError, match=r"^dataset\.path: is required") as info:
        validate(cfg)  # before any data is read
    assert "\n" not in str(info.value)


def test_arrays_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.npz"
    with pytest.raises(DataError, match="file not found.*dataset.path") as info:
        load_arrays(path=str(path))
    assert str(path) in str(info.value)


# -- digits and synthetic --------------------------------------------------------------------


def test_digits() -> None:
    data = load_digits()
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert data.x_train.dtype == torch.uint8 and int(data.x_train.max()) == 255
    assert set(data.y_train.unique().tolist()) == set(range(10)) and data.spec.num_classes == 10
    assert int(data.y_test.min()) >= 0 and int(data.y_test.max()) <= 9
    test_counts = torch.bincount(data.y_test, minlength=10).double()
    all_counts = test_counts + torch.bincount(data.y_train, minlength=10)
    assert ((test_counts - 0.25 * all_counts).abs() <= 1).all()  # stratified
    again = load_digits()
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)
    assert not torch.equal(load_digits(split_seed=1).y_test, data.y_test)


def test_synthetic_deterministic_and_balanced() -> None:
    a, b = load_synthetic(seed=5), load_synthetic(seed=5)
    assert a.fingerprint() == b.fingerprint() and a.fingerprint() != load_synthetic(seed=6).fingerprint()
    assert a.x_train.shape == (512, 3, 16, 16)
    assert torch.bincount(a.y_train).tolist() == [512 // 10 + (i < 512 % 10) for i in range(10)]
    # Learnable: nearest class mean on train classifies test well.
    means = torch.stack([a.x_train[a.y_train == k].float().mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(a.x_test.float().flatten(1), means).argmin(1)
    assert (predicted == a.y_test).float().mean() > 0.9


# -- augmentation ----------------------------------------------------------------------------

COORD_SIZE = 16
COORD_PADDING = 3
NUM_DRAWS = 6000
CENTER = COORD_SIZE // 2


def coordinate_image() -> torch.Tensor:
    """Channel 0 = row + 1, channel 1 = column + 1 (0 is left for the zero padding)."""
    grid = torch.arange(1, COORD_SIZE + 1, dtype=torch.uint8)
    return torch.stack([grid.view(-1, 1).expand(-1, COORD_SIZE), grid.view(1, -1).expand(COORD_SIZE, -1)])


def recover_params(out: torch.Tensor) -> torch.Tensor:
    """(dy, dx, flip) of each (N, 2, H, W) crop of `coordinate_image`, as one cell index."""
    center = out[:, :, CENTER, CENTER].long() - 1
    flip = out[:, 1, CENTER, CENTER + 1].long() < out[:, 1, CENTER, CENTER].long()
    dy = center[:, 0] - CENTER + COORD_PADDING
    crop_column = torch.where(flip, COORD_SIZE - 1 - CENTER, CENTER)
    dx = center[:, 1] - crop_column + COORD_PADDING
    span = 2 * COORD_PADDING + 1
    assert dy.min() >= 0 and dy.max() < span and dx.min() >= 0 and dx.max() < span
    return (dy * span + dx) * 2 + flip.long()


def test_crop_flip_distribution_matches_torchvision() -> None:
    image = coordinate_image()
    cells = 2 * (2 * COORD_PADDING + 1) ** 2
    dy, dx, flip = sample_crop_flip(NUM_DRAWS, COORD_PADDING, True, torch.Generator().manual_seed(0))
    ours = crop_flip(image.expand(NUM_DRAWS, -1, -1, -1), dy, dx, flip, COORD_PADDING)
    ours_cells = recover_params(ours)
    assert torch.equal(ours_cells, ((dy * (2 * COORD_PADDING + 1) + dx) * 2 + flip.long()))

    transform = v2.Compose([v2.RandomCrop(COORD_SIZE, padding=COORD_PADDING), v2.RandomHorizontalFlip()])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = torch.stack([transform(image) for _ in range(NUM_DRAWS)])
    theirs_cells = recover_params(theirs)

    ours_counts = torch.bincount(ours_cells, minlength=cells).numpy()
    theirs_counts = torch.bincount(theirs_cells, minlength=cells).numpy()
    assert (ours_counts > 0).all() and (theirs_counts > 0).all()  # same support
    assert stats.chisquare(ours_counts).pvalue > 1e-3  # uniform over (dy, dx, flip)
    assert stats.chisquare(theirs_counts).pvalue > 1e-3
    assert stats.chi2_contingency(np.stack([ours_counts, theirs_counts])).pvalue > 1e-3
    total_variation = 0.5 * np.abs(ours_counts / NUM_DRAWS - theirs_counts / NUM_DRAWS).sum()
    assert total_variation < 0.12


@pytest.mark.parametrize("device", DEVICES)
def test_crop_flip_pixels_match_torchvision_functional(device: str) -> None:
    padding, size = 4, 10
    images = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    last = 2 * padding
    cases = [(0, 0, False), (0, 0, True), (last, last, False), (last, 1, True), (3, 7, True), (4, 4, False)]
    dy, dx, flip = (torch.tensor(column) for column in zip(*cases))
    ours = crop_flip(images.to(device), dy.to(device), dx.to(device), flip.to(device), padding).cpu()
    for i, (top, left, mirrored) in enumerate(cases):
        expected = TF.crop(TF.pad(images[i], [padding], fill=0), top, left, size, size)
        if mirrored:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(ours[i], expected), cases[i]


def test_sample_crop_flip_is_per_sample_and_flagged() -> None:
    a = sample_crop_flip(50, 2, True, torch.Generator().manual_seed(1))
    b = sample_crop_flip(50, 2, True, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].dtype == torch.int64 and a[2].dtype == torch.bool and int(a[0].max()) <= 4
    _, _, no_flip = sample_crop_flip(50, 0, False, torch.Generator().manual_seed(1))
    assert not no_flip.any()


@pytest.mark.parametrize("device", DEVICES)
def test_normalize_matches_torchvision(device: str) -> None:
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    scale, shift = normalization_constants(MEAN3, STD3, device)
    out = normalize(x.to(device), scale, shift, torch.float32, channels_last=True)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.cpu(), reference_normalize(x, MEAN3, STD3), **TOLERANCE)


def test_channel_mean_std() -> None:
    x = torch.randint(0, 256, (2100, 2, 3, 3), dtype=torch.uint8)
    mean, std = channel_mean_std(x)
    as_float = x.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), as_float.mean(dim=(0, 2, 3)))
    expected_std = as_float.transpose(0, 1).flatten(1).std(dim=1, unbiased=False)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), expected_std)


# -- in-memory pipeline ----------------------------------------------------------------------


SMALL_CROP = AugmentConfig(crop_padding=2)


def memory_pipeline(
    data: ArrayData, batch_size: int, augment: AugmentConfig = SMALL_CROP, seed: int = 0, **kwargs
) -> InMemoryPipeline:
    return InMemoryPipeline(data, augment, MEAN3, STD3, batch_size, torch.device("cpu"), seed, **kwargs)


def test_pipeline_without_augmentation_gives_plain_images() -> None:
    data = small_data()
    pipeline = memory_pipeline(data, 16, AugmentConfig(enabled=False))
    for x, y, idx in pipeline.train_batches(0):
        torch.testing.assert_close(x, reference_normalize(data.x_train[idx], MEAN3, STD3), **TOLERANCE)
        assert torch.equal(y, data.y_train[idx])


def test_pipeline_per_sample_inputs_do_not_depend_on_batch_size() -> None:
    data = small_data()
    small, large = memory_pipeline(data, 7), memory_pipeline(data, 64)
    a, b = per_sample(small.train_batches(3)), per_sample(large.train_batches(3))
    c = per_sample(small.augmented_train_batches(3, 100))
    assert a.keys() == b.keys() == c.keys() == set(range(data.spec.num_train))
    for i in a:
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(a[i], c[i], rtol=0, atol=1e-6)
    order_small = torch.cat([idx for _, _, idx in small.train_batches(3)])
    order_large = torch.cat([idx for _, _, idx in large.train_batches(3)])
    assert torch.equal(order_small, order_large)


def test_pipeline_epochs_differ_and_cover_every_sample_once() -> None:
    data = small_data()
    pipeline = memory_pipeline(data, 32)
    orders = [torch.cat([idx for _, _, idx in pipeline.train_batches(epoch)]) for epoch in range(3)]
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(data.spec.num_train))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    first, second = per_sample(pipeline.train_batches(0)), per_sample(pipeline.train_batches(1))
    assert sum(not torch.equal(first[i], second[i]) for i in first) > data.spec.num_train // 2
    assert torch.equal(pipeline.epoch_plan(1).order, memory_pipeline(data, 5).epoch_plan(1).order)
    assert not torch.equal(pipeline.epoch_plan(1).order, memory_pipeline(data, 32, seed=1).epoch_plan(1).order)


def test_pipeline_batches_follow_the_plan() -> None:
    data = small_data()
    pipeline = memory_pipeline(data, 32)
    plan = pipeline.epoch_plan(2)
    x, y, idx = next(iter(pipeline.train_batches(2)))
    assert torch.equal(idx, plan.order[:32])
    augmented = crop_flip(data.x_train[idx], plan.dy[idx], plan.dx[idx], plan.flip[idx], 2)
    torch.testing.assert_close(x, reference_normalize(augmented, MEAN3, STD3), **TOLERANCE)
    assert plan.dy.max() <= 4 and plan.flip.any() and not plan.flip.all()


def test_pipeline_drop_last_and_test_batches() -> None:
    data = small_data(num_train=100)
    pipeline = memory_pipeline(data, 32, drop_last=True, eval_batch_size=8, channels_last=True)
    sizes = [len(idx) for _, _, idx in pipeline.train_batches(0)]
    assert sizes == [32, 32, 32] and pipeline.num_train_batches == 3
    assert sum(len(i) for _, _, i in pipeline.augmented_train_batches(0, 32)) == 100  # never drops
    xs, ys = zip(*pipeline.test_batches())
    assert [len(y) for y in ys] == [8, 8, 8, 6] and torch.equal(torch.cat(ys), data.y_test)
    assert xs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(torch.cat(xs), reference_normalize(data.x_test, MEAN3, STD3), **TOLERANCE)
    assert memory_pipeline(data, 32).num_train_batches == 4


def test_build_pipeline_computes_missing_stats() -> None:
    data = small_data()
    cfg = OmegaConf.create(
        {
            "augment": {"enabled": False, "crop_padding": 4, "horizontal_flip": True},
            "normalize": {"mean": None, "std": None},
        }
    )
    pipeline = build_pipeline(data, cfg, batch_size=1000, device="cpu", seed=0)
    assert isinstance(pipeline, InMemoryPipeline) and pipeline.supports_logit_cache
    assert pipeline.mean == pytest.approx(channel_mean_std(data.x_train)[0])
    x, _, _ = next(iter(pipeline.train_batches(0)))
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "node, key",
    [
        ({"normalize": {"mean": [0.5], "std": [0.2]}}, "dataset.normalize.mean"),
        ({"normalize": {"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}}, "dataset.normalize.std"),
    ],
)
def test_build_pipeline_rejects_statistics_that_do_not_fit_the_data(node: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_pipeline(small_data(), OmegaConf.create(node), batch_size=8, device="cpu", seed=0)


@pytest.mark.parametrize(
    "node, key",
    [
        ({"augment": {"crop_padding": -1}}, "dataset.augment.crop_padding"),
        ({"normalize": {"mean": [0.5] * 3, "std": None}}, "dataset.normalize.std"),
        ({"num_classes": 0}, "dataset.num_classes"),
        ({"max_memory_gb": 0.0}, "dataset.max_memory_gb"),
    ],
)
def test_the_validator_rejects_bad_dataset_values_before_any_data(node: dict, key: str) -> None:
    """Checked once, in validate (check_dataset): the loaders and pipelines trust the validated node."""
    from kd_hydra.data.config import DatasetSchema, check_dataset

    loader = {"_target_": "kd_hydra.data.load_arrays", "path": "x.npz", "num_classes": "${..num_classes}",
              "max_memory_gb": "${..max_memory_gb}"}  # fmt: skip
    dataset = OmegaConf.merge(OmegaConf.structured(DatasetSchema), {"name": "arrays", "loader": loader}, node)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_dataset(dataset)


# -- folder pipeline -------------------------------------------------------------------------


def folder_as_arrays(data: FolderData) -> ArrayData:
    """The same images decoded into memory, to compare the two pipelines."""
    x_train, y_train = zip(*(data.train[i] for i in range(len(data.train))))
    x_test, y_test = zip(*(data.test[i] for i in range(len(data.test))))
    return ArrayData(torch.stack(x_train), torch.tensor(y_train), torch.stack(x_test), torch.tensor(y_test), data.spec)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_pipeline_matches_in_memory(tmp_path: Path, num_workers: int) -> None:
    data = load_tiny_imagenet(root=str(write_fake_tiny_imagenet(tmp_path)), in_memory=False)
    augment = AugmentConfig(crop_padding=2)
    loader = LoaderPipeline(data, augment, MEAN3, STD3, 4, "cpu", seed=7, eval_batch_size=2, num_workers=num_workers)
    memory = InMemoryPipeline(folder_as_arrays(data), augment, MEAN3, STD3, 4, torch.device("cpu"), seed=7)
    assert not loader.supports_logit_cache and loader.num_train_batches == 2
    assert isinstance(loader, BatchSource) and isinstance(memory, BatchSource)  # what the training loop reads
    batches = list(loader.train_batches(1))
    assert [tuple(x.shape) for x, _, _ in batches] == [(4, 3, TINY_SIZE, TINY_SIZE), (2, 3, TINY_SIZE, TINY_SIZE)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y, _ in batches)
    assert torch.equal(torch.cat([idx for _, _, idx in batches]), loader.epoch_plan(1).order)
    ours, reference = per_sample(batches), per_sample(memory.train_batches(1))
    for i in reference:
        torch.testing.assert_close(ours[i], reference[i], **TOLERANCE)
    again = per_sample(loader.augmented_train_batches(1, 6))
    assert all(torch.equal(again[i], ours[i]) for i in ours)
    test_x, test_y = zip(*loader.test_batches())
    assert torch.cat(test_y).tolist() == [sorted(WNIDS).index(wnid) for _, wnid in VAL_ITEMS]
    expected_test = reference_normalize(folder_as_arrays(data).x_test, MEAN3, STD3)
    torch.testing.assert_close(torch.cat(test_x), expected_test, **TOLERANCE)


def test_build_pipeline_for_folders_needs_stats(tmp_path: Path) -> None:
    data = load_tiny_imagenet(root=str(write_fake_tiny_imagenet(tmp_path)), in_memory=False)
    cfg = OmegaConf.load(CONF_DIR / "tiny_imagenet.yaml")
    assert isinstance(build_pipeline(data, cfg, batch_size=4, device="cpu", seed=0, num_workers=0), LoaderPipeline)
    cfg.normalize.mean = None
    cfg.normalize.std = None
    with pytest.raises(ConfigError, match=r"dataset\.normalize\.mean"):
        build_pipeline(data, cfg, batch_size=4, device="cpu", seed=0, num_workers=0)


# -- the dataset config group ----------------------------------------------------------------


def compose(name: str, data_dir: Path, **overrides) -> OmegaConf:
    """The composed config of ``dataset=<name>`` (the dataset schema applied), data and cache under ``data_dir``."""
    from kd_hydra.config.compose import compose as compose_config
    from kd_hydra.config.compose import hydra_session

    paths = [f"paths.data_dir={data_dir}", f"paths.cache_dir={data_dir / 'cache'}"]
    with hydra_session() as hydra:
        cfg = compose_config(hydra, [f"dataset={name}", *paths])
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"dataset.{key}", value)
    return cfg


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_config_shape(name: str, tmp_path: Path) -> None:
    node = compose(name, tmp_path).dataset
    assert node.name == name and node.loader._target_.startswith("kd_hydra.data.load_")
    assert set(node.augment) == {"enabled", "crop_padding", "horizontal_flip"}
    assert set(node.normalize) == {"mean", "std"}
    assert node.loader.name == name
    assert node.val_fraction == 0.0 and node.val_seed == 0


def test_dataset_configs_instantiate(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar10")
    write_fake_cifar(tmp_path, "cifar100")
    write_fake_tiny_imagenet(tmp_path)
    npz = tmp_path / "mine.npz"
    np.savez(npz, **array_arrays())
    images = write_fake_folder(tmp_path / "my_images")
    expected = {
        "cifar10": 10,
        "cifar100": 100,
        "tiny_imagenet": 3,
        "folder": 2,
        "arrays": 4,
        "digits": 10,
        "synthetic": 10,
    }
    overrides = {
        "arrays": {"path": str(npz)},
        "folder": {"path": str(images)},
        "cifar10": {"loader.verify_checksums": False},
        "cifar100": {"loader.verify_checksums": False},
    }
    for name in DATASET_CONFIGS:
        cfg = compose(name, tmp_path, **overrides.get(name, {}))
        data = hydra.utils.instantiate(cfg.dataset.loader)
        assert isinstance(data, ArrayData), name  # folder datasets too: decoded into the store
        assert data.spec.name == name and data.spec.num_classes == expected[name], name
        pipeline = build_pipeline(data, cfg.dataset, batch_size=2, device="cpu", seed=0, num_workers=0)
        x, y, idx = next(iter(pipeline.train_batches(0)))
        assert x.shape == (2, data.spec.channels, data.spec.image_size, data.spec.image_size), name
    with pytest.raises(Exception, match="path"):
        hydra.utils.instantiate(compose("arrays", tmp_path).dataset.loader)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y_test": None}, "y_test"),
        ({"x_train": np.zeros((32, 8, 8, 3), dtype=np.float32)}, "x_train"),
        ({"y_train": np.arange(5)}, "y_train"),
    ],
)
def test_malformed_npz_is_reported_with_file_and_key(workspace: Workspace, arrays, message):
    path = write_npz(workspace.root / "bad.npz", **arrays)
    base = [o for o in TINY if not o.startswith("dataset")]
    _, process = workspace.single("npz", *base, "dataset=arrays", f"dataset.path={path}", expect=2)
    line = one_line_error(process)
    assert "bad.npz" in line and message in line
