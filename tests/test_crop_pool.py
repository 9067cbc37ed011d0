"""The crop pool (soft_label_cache.crops_per_image=K): K random-resized crops per image drawn from the pool's own seed,
one of them picked per sample by each epoch's plan, the teacher's logits of all N x K crops stored once in one
sharded entry and read by every epoch, seed and logit method (a generated ILSVRC tree at 32 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imagenet_tree import write_imagenet_tree

from kd_hydra.data import build_pipeline, load_imagenet
from kd_hydra.data.crop_pool import CropPool, make_pool_plan, pool_keys
from kd_hydra.data.resized_crop import DEFAULT_RATIO, DEFAULT_SCALE, crop_box

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

STATS = {"mean": [0.5] * 3, "std": [0.25] * 3}
NODE = {"augment": {"crop_padding": 0}, "normalize": STATS}
K = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ilsvrc") / "imagenet"
    write_imagenet_tree(root)
    return load_imagenet(path=str(root), image_size=32, eval_resize=36, cache_dir=str(root.parent / "cache"))


def pooled(data, seed: int, crops: int = K, pool_seed: int = 0, batch_size: int = 8):
    from kd_hydra.data import AugmentConfig, ResizedCropPipeline

    augment = AugmentConfig(crop_padding=0)
    return ResizedCropPipeline(data, augment, STATS["mean"], STATS["std"], batch_size, "cpu", seed, num_workers=0,
                               crop_pool=CropPool(crops, pool_seed))  # fmt: skip


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
