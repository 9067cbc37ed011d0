"""dataset=imagenet on a generated ILSVRC2012 tree: the layout, plan-drawn random-resized crops, the sharded
soft-label cache, and teacher / baseline / KD runs end to end (tiny images: dataset.image_size=32)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from imagenet_tree import WNIDS, write_imagenet_tree

from conftest import Workspace, one_line_error, read_metrics
from kd_hydra.data import build_pipeline, load_imagenet
from kd_hydra.data.crop_pipeline import make_crop_plan
from kd_hydra.data.resized_crop import DEFAULT_RATIO, DEFAULT_SCALE, box_from_uniforms, crop_box
from kd_hydra.errors import DataError
from kd_hydra.records import schema

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

STATS = {"mean": [0.5] * 3, "std": [0.25] * 3}
RUN = [
    "dataset=imagenet", "dataset.image_size=32", "dataset.eval_resize=36", "teacher=deep_cnn", "student=light_cnn",
    "trainer.epochs=2", "teacher_training.epochs=1", "trainer.batch_size=8", "teacher_training.batch_size=8",
    "trainer.num_workers=0", "trainer.num_threads=1", "trainer.device=cpu", "optimizer=adamw",
    "soft_label_cache.dtype=float32", "soft_label_cache.batch_size=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ilsvrc") / "imagenet"
    write_imagenet_tree(root)
    return root


def test_crop_boxes_lie_in_the_image_and_follow_torchvision_random_resized_crop() -> None:
    from scipy import stats
    from torchvision.transforms import RandomResizedCrop

    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (40, 80), (300, 20), (7, 5), (1, 1)]:
        for crop_seed in rng.integers(0, 2**62, 200):
            top, left, h, w = crop_box(width, height, int(crop_seed), DEFAULT_SCALE, DEFAULT_RATIO)
            assert 0 <= top and 0 <= left and 1 <= h and 1 <= w and top + h <= height and left + w <= width
    # a very wide image exhausts the ten tries: torchvision's central crop of the clamped ratio
    never = np.full((10, 4), 0.999)
    assert box_from_uniforms(300, 20, never, DEFAULT_SCALE, DEFAULT_RATIO) == (0, (300 - 27) // 2, 20, 27)
    torch.manual_seed(0)
    image = torch.zeros(1, 375, 500)
    draw = RandomResizedCrop.get_params
    theirs = np.array([draw(image, list(DEFAULT_SCALE), list(DEFAULT_RATIO)) for _ in range(3000)])
    ours = np.array([crop_box(500, 375, int(s), DEFAULT_SCALE, DEFAULT_RATIO) for s in rng.integers(0, 2**62, 3000)])
    for column in range(4):  # top, left, height, width
        assert stats.ks_2samp(ours[:, column], theirs[:, column]).pvalue > 1e-3, column
    bottom, right = theirs[:, 0] + theirs[:, 2], theirs[:, 1] + theirs[:, 3]  # the joint: position given size
    assert stats.ks_2samp(ours[:, 0] + ours[:, 2], bottom).pvalue > 1e-3
    assert stats.ks_2samp(ours[:, 1] + ours[:, 3], right).pvalue > 1e-3
    assert stats.ks_2samp(ours[:, 2] / ours[:, 3], theirs[:, 2] / theirs[:, 3]).pvalue > 1e-3
    shuffled = ours.copy()
    rng.shuffle(shuffled[:, 0])  # positions drawn apart from the sizes: the test tells them apart
    assert stats.ks_2samp(shuffled[:, 0] + shuffled[:, 2], bottom).pvalue < 1e-3


def test_the_plan_is_a_function_of_seed_and_epoch() -> None:
    first, again, other = make_crop_plan(50, True, 3, 1), make_crop_plan(50, True, 3, 1), make_crop_plan(50, True, 3, 2)
    assert torch.equal(first.order, again.order) and torch.equal(first.crop_seed, again.crop_seed)
    assert torch.equal(first.flip, again.flip) and not torch.equal(first.crop_seed, other.crop_seed)


def test_the_devkit_or_sorted_val_gives_the_labels_and_batches_follow_the_plan(tree: Path, tmp_path: Path) -> None:
    data = load_imagenet(path=str(tree), image_size=32, eval_resize=36, cache_dir=str(tmp_path / "cache"))
    assert data.spec.classes == WNIDS and data.spec.num_train == 30 and data.spec.num_test == 10
    sorted_root = tmp_path / "sorted"
    labels = write_imagenet_tree(sorted_root, sorted_val=True)
    sorted_val = load_imagenet(path=str(sorted_root), image_size=32, in_memory=False).test
    assert sorted_val.labels.tolist() == sorted(labels["val"])  # class folders in order
    assert data.test.labels.tolist() == write_imagenet_tree(tmp_path / "same")["val"]
    assert tuple(data.test_images.shape) == (10, 3, 32, 32)
    streamed = load_imagenet(path=str(tree), image_size=32, eval_resize=36, in_memory=False)
    assert torch.equal(torch.stack([streamed.test[i][0] for i in range(10)]), data.test_images)

    pipeline = build_pipeline(data, {"augment": {"crop_padding": 0}, "normalize": STATS}, 8, "cpu", 0, num_workers=0)
    by_batch = torch.cat([x for x, _, _ in pipeline.train_batches(1)])
    by_range = torch.cat([x for x, _, _ in pipeline.augmented_train_range(1, 5, 10, 30)])
    assert by_batch.shape == (30, 3, 32, 32) and torch.equal(by_batch[10:], by_range)
    assert not torch.equal(by_batch, torch.cat([x for x, _, _ in pipeline.train_batches(2)]))


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("train", "train not found; expected one folder per synset"),
        ("ILSVRC2012_devkit_t12/data/meta.mat", "meta.mat not found; expected the devkit's meta.mat"),
        ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", "ground_truth.txt not found"),
    ],
)
def test_a_missing_file_is_one_line_naming_it(tmp_path: Path, remove: str, named: str) -> None:
    root = tmp_path / "imagenet"
    write_imagenet_tree(root)
    target = root / remove
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(DataError) as error:
        load_imagenet(path=str(root), image_size=32)
    assert named in str(error.value) and "\n" not in str(error.value) and "image-net.org" in str(error.value)


def test_a_missing_tree_is_one_line_on_the_command_line(workspace: Workspace) -> None:
    process = workspace.run("dataset=imagenet", "mode=teacher", expect=None)
    assert process.returncode != 0
    line = one_line_error(process)
    assert "imagenet/train not found" in line and "one folder per synset" in line


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / schema.HISTORY_FILE) as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if "loss" in k or "acc" in k} for row in rows]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    return payload.get("state_dict", payload)


def test_teacher_baseline_and_kd_train_end_to_end_cached_equals_live_and_resume_is_exact(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = Workspace(tmp_path)
    run = [*RUN, f"dataset.path={tree}"]
    teacher_dir, _ = workspace.single("teacher", *run, "mode=teacher")
    baseline_dir, _ = workspace.single("baseline", *run, "mode=student")
    cached_dir, _ = workspace.single("cached", *run)
    live_dir, _ = workspace.single("live", *run, "soft_label_cache.enabled=false")
    for run_dir in (teacher_dir, baseline_dir, cached_dir):
        assert read_metrics(run_dir)["status"] == "completed"
    assert (
        read_metrics(cached_dir)["teacher_outputs"] == "cache" and read_metrics(live_dir)["teacher_outputs"] == "live"
    )
    assert _history(cached_dir) == _history(live_dir)
    cached, live = _weights(cached_dir), _weights(live_dir)
    assert all(torch.equal(cached[key], live[key]) for key in live)
    (entry,) = [p for p in (tmp_path / "cache" / "soft_labels").iterdir() if p.is_dir()]
    shards = sorted(entry.glob("epoch_0001.shard_*.bin"))
    assert len(shards) == 4 and sum(p.stat().st_size for p in shards) == 30 * 10 * 4  # records of 10 float32 logits
    assert not list(entry.glob("*.pt"))  # no dense (N, C) file

    from kd_hydra.train.trainer import Snapshots

    original = Snapshots.after_epoch

    def killed_in_epoch_2(self, epoch, track):
        original(self, epoch, track)
        if epoch == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Snapshots, "after_epoch", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            workspace.single("resumed", *run)
    resumed_dir, _ = workspace.single("resumed", *run)
    assert json.loads((resumed_dir / schema.METRICS_FILE).read_text())["resumed_from_epoch"] == 1
    resumed = _weights(resumed_dir)
    assert all(torch.equal(resumed[key], cached[key]) for key in cached)
