"""The crop pool (soft_label_cache.crops_per_image=K): K random-resized crops per image drawn from the pool's own seed,
one of them picked per sample by each epoch's plan, the teacher's logits of all N x K crops stored once in one
sharded entry and read by every epoch, seed and logit method (a generated ILSVRC tree at 32 px)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from imagenet_tree import write_imagenet_tree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import Workspace, read_metrics
from kd_hydra.data import build_pipeline, load_imagenet
from kd_hydra.data.crop_pool import CropPool, make_pool_plan, pool_keys
from kd_hydra.data.resized_crop import DEFAULT_RATIO, DEFAULT_SCALE, crop_box
from kd_hydra.train.runtime import Runtime

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

STATS = {"mean": [0.5] * 3, "std": [0.25] * 3}
NODE = {"augment": {"crop_padding": 0}, "normalize": STATS}
K = 3
CLASSES = 10
RUN = [
    "dataset=imagenet", "dataset.image_size=32", "dataset.eval_resize=36", "teacher=deep_cnn", "student=light_cnn",
    "trainer.epochs=1", "teacher_training.epochs=1", "trainer.batch_size=8", "teacher_training.batch_size=8",
    "trainer.num_workers=0", "trainer.num_threads=1", "trainer.device=cpu", "optimizer=adamw",
    "soft_label_cache.dtype=float32", "soft_label_cache.batch_size=8", f"soft_label_cache.crops_per_image={K}",
]  # fmt: skip
RUNTIME = Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False, compile=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ilsvrc") / "imagenet"
    write_imagenet_tree(root)
    return root


@pytest.fixture(scope="module")
def data(tree: Path):
    return load_imagenet(path=str(tree), image_size=32, eval_resize=36, cache_dir=str(tree.parent / "cache"))


def pooled(data, seed: int, crops: int = K, pool_seed: int = 0, batch_size: int = 8):
    return build_pipeline(data, NODE, batch_size, "cpu", seed, num_workers=0, crop_pool=CropPool(crops, pool_seed))


def test_pool_crops_lie_in_the_image_and_follow_torchvision_random_resized_crop() -> None:
    from scipy import stats
    from torchvision.transforms import RandomResizedCrop

    images, crops = np.repeat(np.arange(600), 5), np.tile(np.arange(5), 600)
    seeds, flips = pool_keys(0, images, crops, flip=True)
    assert len(set(seeds.tolist())) == len(seeds) and abs(flips.mean() - 0.5) < 0.05  # 3000 draws: 5.5 sigma
    assert not pool_keys(0, images, crops, flip=False)[1].any()
    for width, height in [(500, 375), (40, 80), (300, 20), (1, 1)]:
        for seed in seeds[:300]:
            top, left, h, w = crop_box(width, height, int(seed), DEFAULT_SCALE, DEFAULT_RATIO)
            assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= height and left + w <= width
    torch.manual_seed(0)
    image = torch.zeros(1, 375, 500)
    theirs = np.array([RandomResizedCrop.get_params(image, list(DEFAULT_SCALE), list(DEFAULT_RATIO)) for _ in seeds])
    ours = np.array([crop_box(500, 375, int(seed), DEFAULT_SCALE, DEFAULT_RATIO) for seed in seeds])
    for column in range(4):  # top, left, height, width
        assert stats.ks_2samp(ours[:, column], theirs[:, column]).pvalue > 1e-3, column
    assert stats.ks_2samp(ours[:, 0] + ours[:, 2], theirs[:, 0] + theirs[:, 2]).pvalue > 1e-3  # position given size
    assert stats.ks_2samp(ours[:, 2] / ours[:, 3], theirs[:, 2] / theirs[:, 3]).pvalue > 1e-3
    # crop j of image i is a function of (pool seed, i, j) alone: not of K, and another pool seed is another pool
    assert np.array_equal(pool_keys(0, images[:9], crops[:9], True)[0], seeds[:9])
    assert not np.array_equal(pool_keys(1, images, crops, True)[0], seeds)


def test_every_seed_and_epoch_reads_the_same_pool_and_the_plan_picks_each_samples_crop(data) -> None:
    first, other_seed = pooled(data, seed=0), pooled(data, seed=1, batch_size=5)
    num = data.spec.num_train
    pool = torch.cat([x for x, _, _ in first.pool_range(8, 0, num * K)])
    positions = torch.cat([p for _, _, p in first.pool_range(16, 0, num * K)])
    assert pool.shape == (num * K, 3, 32, 32) and torch.equal(positions, torch.arange(num * K))
    assert torch.equal(pool[20:50], torch.cat([x for x, _, _ in other_seed.pool_range(7, 20, 50)]))
    choices = []
    for pipeline, epoch in ((first, 1), (first, 2), (other_seed, 1)):
        plan = pipeline.epoch_plan(epoch)
        assert torch.equal(plan.choice, make_pool_plan(num, CropPool(K), True, pipeline.seed, epoch).choice)
        assert 0 <= int(plan.choice.min()) and int(plan.choice.max()) < K
        xs, indices = zip(*((x, i) for x, _, i in pipeline.train_batches(epoch)))
        x, indices = torch.cat(xs), torch.cat(indices)
        assert torch.equal(indices, plan.order)  # the plan's order, as without a pool
        assert torch.equal(x, pool[indices * K + plan.choice[indices]])  # each sample's picked pool crop
        choices.append(plan.choice)
        if (pipeline, epoch) == (first, 1):
            plain = build_pipeline(data, NODE, 8, "cpu", 0, num_workers=0)  # no pool: fresh crops, the same order
            fresh, fresh_indices = zip(*((x, i) for x, _, i in plain.train_batches(epoch)))
            assert torch.equal(torch.cat(fresh_indices), indices) and not torch.equal(torch.cat(fresh), x)
    assert not torch.equal(choices[0], choices[1]) and not torch.equal(choices[0], choices[2])


class CountingTeacher(nn.Module):
    """A tiny teacher that counts the images it has seen."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, CLASSES))
        self.seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return self.net(images)


class _DenseFloats(TorchDispatchMode):
    """Records the shape of any float tensor of (rows, C) for rows in `rows` that an op produced."""

    def __init__(self, rows: set[int]) -> None:
        super().__init__()
        self.rows, self.dense = rows, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() == 2:
                if tensor.shape[0] in self.rows and tensor.shape[1] == CLASSES:
                    self.dense.append(tuple(tensor.shape))
        return out


def test_the_pool_is_filled_once_read_by_other_seeds_and_rebuilt_when_changed_or_foreign(data, tmp_path, caplog):
    from kd_hydra.stores.sharded_logits import PooledTeacher, RecordLayout
    from kd_hydra.stores.teacher_outputs import (
        LiveTeacher,
        SoftLabelCacheSettings,
        TeacherNeeds,
        TrainingBatchesKey,
        teacher_outputs,
    )

    num, teacher, layout = data.spec.num_train, CountingTeacher(), RecordLayout(CLASSES, 4, torch.float16)
    settings = SoftLabelCacheSettings(tmp_path, True, torch.float16, 4, 1 << 30, 16)

    def served(seed: int, needs: TeacherNeeds | None = None):
        needs = needs or TeacherNeeds((), live_only=False, batch_statistics=False)
        pipeline = pooled(data, seed)
        key = TrainingBatchesKey("content", {"crop_padding": 0}, STATS, seed)
        return teacher_outputs(teacher, "sha", needs, pipeline, key, CLASSES, settings, RUNTIME).source, pipeline

    def check_epochs(source, pipeline, epochs=(1, 2)) -> None:
        for epoch in epochs:
            source.begin_epoch(epoch)
            for images, _, indices in pipeline.train_batches(epoch):
                expected = layout.decode(layout.encode(teacher.net(images)))  # the live teacher, rounded as stored
                torch.testing.assert_close(source(images, indices).logits, expected, rtol=0, atol=2e-3)

    cold, pipeline = served(0)
    assert isinstance(cold, PooledTeacher)
    with _DenseFloats({num, num * K}) as recorder, caplog.at_level(logging.INFO):
        check_epochs(cold, pipeline)
    assert not recorder.dense  # no (N, C) nor (N x K, C) float tensor
    assert teacher.seen == num * K and cold.status == "cold" and cold.epochs_computed == 1  # the pool, once
    assert f"the crop pool takes {num * K * layout.record_bytes / 1e6:.1f} MB ({num} images x {K} crops" in caplog.text
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    shards = sorted(entry.glob("pool.shard_*.bin"))
    assert sum(p.stat().st_size for p in shards) == num * K * layout.record_bytes and not list(entry.glob("epoch_*"))

    warm, other_seed = served(1)  # another seed (any logit method: the method is not in the key) reads it
    check_epochs(warm, other_seed)
    assert teacher.seen == num * K and warm.status == "warm" and warm.epochs_computed == 0
    live, _ = served(1, TeacherNeeds((), live_only=True, batch_statistics=False))  # live, on the same pool crops
    assert isinstance(live, LiveTeacher)

    with open(shards[0], "r+b") as handle:  # a changed shard: never served, rebuilt
        handle.write(b"\xff" * 8)
    rebuilt, _ = served(0)
    check_epochs(rebuilt, pipeline, (1,))  # the rebuilt entry serves the right logits
    assert teacher.seen == 2 * num * K and rebuilt.epochs_computed == 1
    seal = json.loads((entry / "seal.json").read_text())
    seal["description"]["crops"]["crops_per_image"] = K + 1  # an entry sealed for another pool: refused, rebuilt
    (entry / "seal.json").write_text(json.dumps(seal))
    foreign, _ = served(0)
    foreign.begin_epoch(1)
    assert teacher.seen == 3 * num * K and foreign.epochs_computed == 1


def _losses(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if "loss" in k or "acc" in k} for row in csv.DictReader(handle)]


def test_a_pool_cached_student_equals_a_live_one_and_another_seed_and_method_read_the_pool_warm(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kd_hydra.stores.sharded_logits import PooledTeacher

    workspace = Workspace(tmp_path)
    run = [*RUN, f"dataset.path={tree}"]
    cached_dir, _ = workspace.single("cached", *run)  # trains the teacher, then fills the pool
    live_dir, _ = workspace.single("live", *run, "soft_label_cache.enabled=false")
    cached, live = read_metrics(cached_dir), read_metrics(live_dir)
    assert (cached["teacher_outputs"], cached["soft_label_cache"], live["teacher_outputs"]) == ("cache", "cold", "live")
    assert _losses(cached_dir) == _losses(live_dir)  # the same pool crops, the same losses step by step
    weights = [torch.load(d / "model.pt", weights_only=True) for d in (cached_dir, live_dir)]
    weights = [payload.get("state_dict", payload) for payload in weights]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])  # every step's update equal
    (entry,) = [p for p in (tmp_path / "cache" / "soft_labels").iterdir() if p.is_dir()]
    shards = sorted(entry.glob("pool.shard_*.bin"))
    assert sum(p.stat().st_size for p in shards) == 30 * K * 10 * 4 and not list(entry.glob("epoch_*"))

    def no_fill(*_: object) -> None:
        raise AssertionError("the pool was filled again")

    monkeypatch.setattr(PooledTeacher, "_fill", no_fill)
    other_dir, _ = workspace.single("dkd-seed1", *run, "loss=dkd", "trainer.seed=1")
    other = read_metrics(other_dir)
    assert (other["soft_label_cache"], other["soft_label_cache_fill_seconds"]) == ("warm", 0)
    assert other["settings"]["soft_label_cache.crops_per_image"] == K


def test_a_pool_without_random_resized_crops_is_one_line(data) -> None:
    from kd_hydra.data import ArrayData, DatasetSpec
    from kd_hydra.data.build import check_crop_pool
    from kd_hydra.errors import ConfigError

    spec = DatasetSpec("digits", 10, 3, 8, tuple(map(str, range(10))), 4, 4)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    fixed_size = ArrayData(images, torch.zeros(4, dtype=torch.int64), images, torch.zeros(4, dtype=torch.int64), spec)
    for where, augment in ((fixed_size, True), (data, False)):  # a bad K (0, -3, text): tests/test_config.py
        with pytest.raises(ConfigError) as error:
            check_crop_pool(2, where, augment)
        line = str(error.value)
        assert line.startswith("soft_label_cache.crops_per_image: is 2, but ") and "\n" not in line
        assert ("dataset=imagenet" if where is fixed_size else "dataset.augment.enabled is false") in line
    check_crop_pool(2, data, True)
    check_crop_pool(None, fixed_size, True)


def test_a_pool_filled_in_ranges_by_several_workers_writes_the_bytes_of_one_fill(data, tmp_path) -> None:
    from kd_hydra.stores.cache_entry import CacheEntry
    from kd_hydra.stores.sharded_logits import RecordLayout, ShardedEpoch, fill_records, split_ranges

    pipeline, teacher, layout = pooled(data, seed=0), CountingTeacher(), RecordLayout(CLASSES, 4, torch.float16)
    num = data.spec.num_train * K
    digests = []
    for workers in (1, 3):
        store = ShardedEpoch(CacheEntry(tmp_path / f"w{workers}"), 0, num, layout, stem="pool")
        store.allocate()
        for start, stop in reversed(split_ranges(num, workers, 16)):  # each "worker" its range, in any order
            fill_records(store, teacher, pipeline.pool_range(16, start, stop), RUNTIME)
        store.seal({"pool": 1})
        digests.append(CacheEntry(tmp_path / f"w{workers}").sealed_files())
    assert sorted(digests[0]) == [f"pool.shard_{s:02d}.bin" for s in range(4)] and digests[0] == digests[1]
