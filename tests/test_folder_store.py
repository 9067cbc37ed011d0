"""The decode-once store, the ImageFolder-style `folder` dataset and the validation split; generated data only."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.io import decode_image, encode_jpeg, write_file, write_png
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from kd_hydra.data import (
    ArrayData,
    AugmentConfig,
    FolderData,
    InMemoryPipeline,
    LoaderPipeline,
    build_pipeline,
    channel_mean_std,
    decoded,
    load_dataset,
    load_folder,
    load_synthetic,
    stratified_split,
    with_validation,
)
from kd_hydra.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
SIZE = 8
CLASSES = ("cat", "dog", "emu")
TRAIN_PER_CLASS = 3
TEST_PER_CLASS = 1
MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
TOLERANCE = dict(rtol=0.0, atol=1e-5)


def write_folder(root: Path, test_name: str = "test", size: int = SIZE, seed: int = 0) -> dict[str, list]:
    """<root>/train|<test_name>/<class>/*.png of random pixels (PNG: lossless, stored uncompressed).

    Returns {split: [(relative path, label, image)]} in the loader's order (sorted class, then sorted file).
    """
    generator = torch.Generator().manual_seed(seed)
    written: dict[str, list] = {"train": [], "test": []}
    for split, folder, count in (("train", "train", TRAIN_PER_CLASS), ("test", test_name, TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
                relative = f"{folder}/{name}/{i}.png"
                write_png(image, str(root / relative), compression_level=0)
                written[split].append((relative, label, image))
    return written


def stacked(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([image for _, _, image in items]), torch.tensor([label for _, label, _ in items])


class CountingDecoder:
    """Wraps decoded.read_image, counting calls (thread-safe)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._real = decoded.read_image
        monkeypatch.setattr(decoded, "read_image", self)

    def __call__(self, path: str, *args: object) -> torch.Tensor:
        with self._lock:
            self.calls += 1
        return self._real(path, *args)


def mapped_files() -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's file-backed memory mappings."""
    rows = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            start, end = (int(v, 16) for v in fields[0].split("-"))
            rows.append((start, end, fields[5]))
    return rows


def entries(cache: Path) -> list[Path]:
    folder = cache / decoded.FOLDER
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


# -- the decode-once store --------------------------------------------------------------------


def test_decodes_once_then_memory_maps_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_folder(tmp_path / "images")
    cache = tmp_path / "cache"
    decoder = CountingDecoder(monkeypatch)
    data = load_folder(path=str(tmp_path / "images"), cache_dir=str(cache), image_size=SIZE)
    assert isinstance(data, ArrayData) and data.spec.classes == CLASSES
    assert decoder.calls == len(CLASSES) * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    for split in ("train", "test"):
        x, y = stacked(written[split])
        assert torch.equal(getattr(data, f"x_{split}"), x) and torch.equal(getattr(data, f"y_{split}"), y)
    (entry,) = entries(cache)
    assert entry.name.startswith("folder-") and (entry / "x_train.npy").is_file()

    again = load_folder(path=str(tmp_path / "images"), cache_dir=str(cache), image_size=SIZE)
    assert decoder.calls == len(CLASSES) * (TRAIN_PER_CLASS + TEST_PER_CLASS)  # nothing decoded the second time
    assert torch.equal(again.x_train, data.x_train) and again.fingerprint() == data.fingerprint()
    pointer = again.x_train.data_ptr()
    assert any(start <= pointer < end and path == str(entry / "x_train.npy") for start, end, path in mapped_files())


def test_parallel_loads_decode_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "images")
    decoder = CountingDecoder(monkeypatch)
    results: list = []

    def job() -> None:
        results.append(load_folder(path=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"), image_size=SIZE))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(torch.equal(r.x_train, results[0].x_train) for r in results)
    assert decoder.calls == len(CLASSES) * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    assert len(entries(tmp_path / "cache")) == 1
    assert not [p for p in (tmp_path / "cache" / decoded.FOLDER).iterdir() if p.name.startswith(".tmp")]


def test_store_key_follows_content_not_size(tmp_path: Path) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    write_folder(root)
    first = load_folder(path=str(root), cache_dir=str(cache), image_size=SIZE)
    target = root / "train" / "dog" / "1.png"
    size = target.stat().st_size
    changed = torch.full((3, SIZE, SIZE), 7, dtype=torch.uint8)
    write_png(changed, str(target), compression_level=0)
    assert target.stat().st_size == size  # same file size, other pixels
    second = load_folder(path=str(root), cache_dir=str(cache), image_size=SIZE)
    assert len(entries(cache)) == 2
    position = TRAIN_PER_CLASS + 1  # dog is class 1, file 1
    assert torch.equal(second.x_train[position], changed) and not torch.equal(first.x_train[position], changed)
    assert second.fingerprint() != first.fingerprint()


def test_other_sizes_are_resized_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_folder(root)
    big = torch.randint(0, 256, (3, 20, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    write_png(big, str(root / "train" / "cat" / "0.png"))
    write_file(str(root / "test" / "emu" / "1.jpg"), encode_jpeg(big[:, :10, :10], quality=90))
    data = load_folder(path=str(root), cache_dir=str(tmp_path / "cache"), image_size=SIZE)
    assert data.x_train.shape[1:] == (3, SIZE, SIZE) and data.spec.image_size == SIZE
    assert torch.equal(data.x_train[0], TF.resize(big, [SIZE, SIZE], antialias=True))
    jpeg = decode_image(str(root / "test" / "emu" / "1.jpg"))
    assert torch.equal(data.x_test[-1], TF.resize(jpeg, [SIZE, SIZE], antialias=True))
    with pytest.raises(ConfigError, match=r"^dataset\.image_size: is null and .*cat/0\.png is 12x20"):
        load_folder(path=str(root), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_image_is_one_line_naming_the_file(tmp_path: Path, in_memory: bool) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    write_folder(root)
    bad = root / "train" / "emu" / "2.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as info:
        load_folder(path=str(root), cache_dir=str(cache), image_size=SIZE, in_memory=in_memory)
    message = str(info.value)
    assert message.startswith(f"{bad}: cannot decode image") and "\n" not in message
    assert entries(cache) == [] and not list((cache / decoded.FOLDER).glob("*.checked.json"))


def test_streaming_path_checks_then_reads_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    written = write_folder(root, test_name="val")  # val/ accepted as the test split
    decoder = CountingDecoder(monkeypatch)
    data = load_folder(path=str(root), cache_dir=str(cache), image_size=SIZE, in_memory=False)
    assert isinstance(data, FolderData) and decoder.calls == len(CLASSES) * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    again = load_folder(path=str(root), cache_dir=str(cache), image_size=SIZE, in_memory=False)
    assert decoder.calls == len(CLASSES) * (TRAIN_PER_CLASS + TEST_PER_CLASS)  # the passed check is recorded
    assert entries(cache) == [] and again.fingerprint() == data.fingerprint()
    pipeline = LoaderPipeline(data, AugmentConfig(enabled=False), MEAN3, STD3, 4, "cpu", seed=0, num_workers=0)
    x_test, _ = stacked(written["test"])
    expected = v2.Normalize(list(MEAN3), list(STD3))(x_test.float() / 255)
    torch.testing.assert_close(torch.cat([x for x, _ in pipeline.test_batches()]), expected, **TOLERANCE)


def test_memory_budget_suggests_streaming(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_folder(root)
    with pytest.raises(ConfigError) as info:
        load_folder(path=str(root), cache_dir=str(tmp_path / "cache"), image_size=SIZE, max_memory_gb=1e-6)
    message = str(info.value)
    assert "dataset.in_memory=false" in message and "\n" not in message
    assert f"{12 * 3 * SIZE * SIZE / 1e9:.2f} GB" in message
    data = load_folder(
        path=str(root), cache_dir=str(tmp_path / "cache"), image_size=SIZE, max_memory_gb=1e-6, in_memory=False
    )
    assert isinstance(data, FolderData)
    assert decoded.memory_budget_bytes(None) == pytest.approx(0.5 * decoded.physical_memory_bytes())


@pytest.mark.parametrize(
    "case,message",
    [
        ("no train", "no 'train' folder"),
        ("no test", "no 'test' or 'val' folder"),
        ("foreign test class", "class 'yak' has no folder in"),
        ("empty class", "no image files"),
    ],
)
def test_folder_layout_errors(tmp_path: Path, case: str, message: str) -> None:
    root = tmp_path / "images"
    write_folder(root)
    if case == "no train":
        (root / "train").rename(root / "training")
    elif case == "no test":
        (root / "test").rename(root / "testing")
    elif case == "foreign test class":
        (root / "test" / "yak").mkdir()
    else:
        for file in (root / "train" / "dog").iterdir():
            file.rename(file.with_suffix(".txt"))
    with pytest.raises(DataError, match=message) as info:
        load_folder(path=str(root), image_size=SIZE)
    assert "\n" not in str(info.value)


# -- the validation split ---------------------------------------------------------------------


def test_stratified_split_counts_and_determinism() -> None:
    labels = np.repeat([0, 1, 2], [10, 20, 30])[np.random.default_rng(0).permutation(60)]
    train, val = stratified_split(labels, 0.2, seed=4)
    assert np.bincount(labels[val]).tolist() == [2, 4, 6]
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(60))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again_train, again_val = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(again_val, val) and np.array_equal(again_train, train)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=5)[1], val)
    too_few = r"^dataset\.val_fraction: is 0\.01; class 'a' has 10 training images, which gives 0 for validation"
    with pytest.raises(ConfigError, match=too_few):
        stratified_split(labels, 0.01, seed=0, classes=("a", "b", "c"))


@pytest.mark.parametrize("fraction", [1.0, -0.1, "half", True, float("nan")])
def test_bad_val_fraction(fraction) -> None:
    with pytest.raises(ConfigError, match=r"^dataset\.val_fraction: .*\[0, 1\)"):
        with_validation(load_synthetic(num_train=20, num_test=5, num_classes=2, image_size=4), fraction, 0)


def dataset_cfg(name: str, tmp_path: Path, **overrides):
    """The composed ``dataset`` node of ``dataset=<name>`` (the dataset schema applied), cache under ``tmp_path``."""
    from kd_hydra.config.compose import compose, hydra_session

    paths = [f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with hydra_session() as hydra:
        cfg = compose(hydra, [f"dataset={name}", *paths])
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"dataset.{key}", value)
    return cfg.dataset


def test_load_dataset_holds_out_a_stratified_part(tmp_path: Path) -> None:
    cfg = dataset_cfg(
        "synthetic",
        tmp_path,
        **{
            "loader.num_train": 100,
            "loader.num_classes": 5,
            "loader.image_size": 6,
            "val_fraction": 0.2,
            "val_seed": 3,
        },
    )
    full = load_dataset(
        dataset_cfg("synthetic", tmp_path, **{"loader.num_train": 100, "loader.num_classes": 5, "loader.image_size": 6})
    )
    data = load_dataset(cfg)
    assert not full.has_val and data.has_val and (data.spec.num_train, data.spec.num_val) == (80, 20)
    train_idx, val_idx = stratified_split(full.y_train.numpy(), 0.2, 3)
    assert torch.equal(data.x_val, full.x_train[val_idx]) and torch.equal(data.x_train, full.x_train[train_idx])
    assert torch.bincount(data.y_val, minlength=5).tolist() == (torch.bincount(full.y_train, minlength=5) // 5).tolist()
    assert torch.equal(data.x_test, full.x_test)
    assert data.fingerprint() == load_dataset(cfg).fingerprint() != full.fingerprint()
    cfg.val_seed = 4
    assert load_dataset(cfg).fingerprint() != data.fingerprint()


def test_val_batches_and_stats_from_the_remaining_part(tmp_path: Path) -> None:
    cfg = dataset_cfg(
        "synthetic",
        tmp_path,
        **{"loader.num_train": 60, "loader.num_classes": 3, "loader.image_size": 6, "val_fraction": 0.25},
    )
    data = load_dataset(cfg)
    pipeline = build_pipeline(data, cfg, batch_size=8, device="cpu", seed=0, eval_batch_size=4)
    assert isinstance(pipeline, InMemoryPipeline) and pipeline.has_val and pipeline.num_val == 15
    mean, std = channel_mean_std(data.x_train)
    assert pipeline.mean == pytest.approx(mean) and pipeline.std == pytest.approx(std)
    assert pipeline.mean != pytest.approx(channel_mean_std(torch.cat([data.x_train, data.x_val]))[0])
    xs, ys = zip(*pipeline.val_batches())
    expected = v2.Normalize(list(mean), list(std))(data.x_val.float() / 255)
    torch.testing.assert_close(torch.cat(xs), expected, rtol=0, atol=1e-4)
    assert torch.equal(torch.cat(ys), data.y_val) and [len(y) for y in ys] == [4, 4, 4, 3]
    plain = build_pipeline(load_dataset(dataset_cfg("synthetic", tmp_path)), cfg, batch_size=8, device="cpu", seed=0)
    assert not plain.has_val
    with pytest.raises(ConfigError, match=r"^dataset\.val_fraction: is 0"):
        next(iter(plain.val_batches()))


def test_folder_config_with_validation_in_both_modes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_folder(root)
    common = {"path": str(root), "image_size": SIZE, "val_fraction": 1 / 3, "loader.decode_workers": 2}
    stats = {"normalize.mean": list(MEAN3), "normalize.std": list(STD3)}  # streamed files need given statistics
    memory = load_dataset(dataset_cfg("folder", tmp_path, **common))
    files = load_dataset(dataset_cfg("folder", tmp_path, **common, **stats, in_memory=False))
    assert isinstance(memory, ArrayData) and isinstance(files, FolderData)
    assert memory.spec == files.spec and memory.spec.num_val == len(CLASSES)
    assert [files.val[i][1] for i in range(len(files.val))] == memory.y_val.tolist() == [0, 1, 2]
    assert torch.equal(torch.stack([files.val[i][0] for i in range(len(files.val))]), memory.x_val)
    cfg = dataset_cfg("folder", tmp_path, **common, in_memory=False, **stats)
    pipeline = build_pipeline(files, cfg, batch_size=2, device="cpu", seed=0, num_workers=0)
    assert pipeline.has_val
    expected = v2.Normalize(list(MEAN3), list(STD3))(memory.x_val.float() / 255)
    torch.testing.assert_close(torch.cat([x for x, _ in pipeline.val_batches()]), expected, **TOLERANCE)
    assert (
        files.fingerprint()
        != load_dataset(
            dataset_cfg("folder", tmp_path, path=str(root), image_size=SIZE, in_memory=False, **stats)
        ).fingerprint()
    )
    with pytest.raises(ConfigError, match=r"^dataset\.val_fraction: is 0\.1; class 'cat' has 3"):
        load_dataset(dataset_cfg("folder", tmp_path, **{**common, "val_fraction": 0.1}))


def test_folder_config_needs_a_path(tmp_path: Path) -> None:
    """Checked by the validator (its dataset part, as validate runs it) before any data is read."""
    from kd_hydra.data import check_required
    from kd_hydra.data.config import check_dataset

    node = dataset_cfg("folder", tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset\.path: is required"):
        check_required(node, "dataset")
        check_dataset(node)


def test_a_subset_of_image_files_is_taken_before_anything_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """debug=smoke on image files: only the kept files are decoded (a Tiny ImageNet smoke test decodes 2 x 128
    images, not 110,000), each class in turn, and the validation part is held out of the kept files."""
    write_folder(tmp_path / "images")
    counter = CountingDecoder(monkeypatch)
    node = {
        "name": "folder",
        "loader": {"_target_": "kd_hydra.data.load_folder", "path": str(tmp_path / "images"), "image_size": SIZE,
                   "cache_dir": str(tmp_path / "cache"), "subset": 6},
        "subset": 6,
        "val_fraction": 0.5,
    }  # fmt: skip
    data = load_dataset(OmegaConf.create(node))
    assert counter.calls == 6 + 3  # the kept training files (6 of 9) and the 3 test files, nothing else
    assert (data.spec.num_train, data.spec.num_val, data.spec.num_test) == (3, 3, 3)
    assert sorted(data.y_train.tolist()) == sorted(data.y_val.tolist()) == [0, 1, 2]  # every class in turn
