"""The stores without Hydra: an external teacher and the soft-label cache from plain arguments, a tiny model and
generated tensors (no config, no run directory)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from kd_hydra.data import ArrayData, AugmentConfig, DatasetSpec, InMemoryPipeline
from kd_hydra.models.checkpoints import ArchSignature, save_checkpoint
from kd_hydra.stores import teacher_outputs as outputs_module
from kd_hydra.stores.cache_entry import file_sha256
from kd_hydra.stores.logit_cache import CachedTeacher
from kd_hydra.stores.teacher_outputs import (
    LiveTeacher,
    SoftLabelCacheSettings,
    TeacherNeeds,
    TrainingBatchesKey,
    teacher_outputs,
)
from kd_hydra.stores.teachers import TeacherCheckpoint, checkpoint_teacher, load_external
from kd_hydra.train.runtime import Runtime

STORES = Path(outputs_module.__file__).parent
CLASSES, CHANNELS, SIZE, NUM_TRAIN = 4, 3, 6, 20
SPEC = DatasetSpec("generated", CLASSES, CHANNELS, SIZE, tuple("abcd"), NUM_TRAIN, 8)
ARCH = ArchSignature(name="tiny", source="zoo", num_classes=CLASSES, in_channels=CHANNELS, image_size=SIZE)
RUNTIME = Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False, compile=False)
LOGIT_METHOD = TeacherNeeds(feature_names=(), live_only=False, batch_statistics=False)
BATCHES = TrainingBatchesKey(content="generated-data", augment={"enabled": True}, normalize=None, seed=3)


def tiny_teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(CHANNELS, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * SIZE * SIZE, 4))


def generated_pipeline(seed: int = 3) -> InMemoryPipeline:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (NUM_TRAIN + 8, CHANNELS, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(NUM_TRAIN + 8) % CLASSES
    data = ArrayData(images[:NUM_TRAIN], labels[:NUM_TRAIN], images[NUM_TRAIN:], labels[NUM_TRAIN:], SPEC)
    mean, std = [0.5] * CHANNELS, [0.25] * CHANNELS
    return InMemoryPipeline(data, AugmentConfig(crop_padding=1), mean, std, 8, torch.device("cpu"), seed=seed)


def cache_settings(root: Path, **changes: object) -> SoftLabelCacheSettings:
    values = dict(root=root, enabled=True, dtype=torch.float16, top_k=None, max_bytes=1 << 30, fill_batch_size=7)
    return SoftLabelCacheSettings(**{**values, **changes})


def outputs_of(root: Path, teacher: nn.Module, **changes: object):
    pipeline = generated_pipeline()
    settings = cache_settings(root, **changes)
    return teacher_outputs(teacher, "sha-of-the-teacher", LOGIT_METHOD, pipeline, BATCHES, CLASSES, settings, RUNTIME)


def epoch_logits(source, pipeline: InMemoryPipeline, epoch: int) -> torch.Tensor:
    """The logits ``source`` gives for every training sample of ``epoch``, in sample order."""
    source.begin_epoch(epoch)
    logits = torch.empty(NUM_TRAIN, CLASSES)
    for images, _, indices in pipeline.train_batches(epoch):
        logits[indices] = source(images, indices).logits
    return logits


def test_no_store_module_imports_a_config_library() -> None:
    for path in sorted(STORES.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {name for name in imported if name.split(".")[0] in ("omegaconf", "hydra")}, path.name
        assert "DictConfig" not in path.read_text(), path.name


def test_soft_label_cache_is_computed_once_then_read_and_equals_the_live_teacher_rounded(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    cold = outputs_of(tmp_path, teacher)
    assert cold.kind == "cache" and isinstance(cold.source, CachedTeacher)
    pipeline = generated_pipeline()
    cached = epoch_logits(cold.source, pipeline, epoch=2)
    assert cold.cache_status == "cold" and cold.source.epochs_computed == 1
    live = epoch_logits(LiveTeacher(tiny_teacher(), RUNTIME), pipeline, epoch=2)
    torch.testing.assert_close(cached, live.to(torch.float16).float(), rtol=0, atol=0)
    assert not torch.equal(
        cached, epoch_logits(LiveTeacher(tiny_teacher(), RUNTIME), pipeline, epoch=3).to(torch.float16).float()
    )

    warm = outputs_of(tmp_path, tiny_teacher(seed=9))  # another network with the same key: the cache is trusted
    assert torch.equal(epoch_logits(warm.source, generated_pipeline(), epoch=2), cached)
    assert warm.cache_status == "warm" and warm.source.epochs_read == 1
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1


def test_another_dtype_or_top_k_is_another_entry_and_top_k_keeps_the_largest_logits(tmp_path: Path) -> None:
    teacher, pipeline = tiny_teacher(), generated_pipeline()
    full = epoch_logits(outputs_of(tmp_path, teacher, dtype=torch.float32).source, pipeline, epoch=1)
    top2 = epoch_logits(outputs_of(tmp_path, teacher, dtype=torch.float32, top_k=2).source, pipeline, epoch=1)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    values, indices = full.topk(2, dim=1)
    assert torch.equal(top2.gather(1, indices), values)
    rest = (full.sum(dim=1) - values.sum(dim=1)) / (CLASSES - 2)
    others = top2.scatter(1, indices, float("nan"))
    torch.testing.assert_close(others.nanmean(dim=1), rest)


def test_the_oldest_entry_is_evicted_beyond_the_size_limit(tmp_path: Path) -> None:
    epoch_logits(outputs_of(tmp_path, tiny_teacher()).source, generated_pipeline(), epoch=1)
    (first,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    newer = outputs_of(tmp_path, tiny_teacher(), top_k=1, max_bytes=1)
    epoch_logits(newer.source, generated_pipeline(), epoch=1)
    assert not first.exists() and newer.source.entry.path.is_dir()


@pytest.mark.parametrize(
    ("needs", "changes", "pipeline_caches"),
    [
        (TeacherNeeds(("stage1",), live_only=True, batch_statistics=False), {}, True),
        (TeacherNeeds((), live_only=True, batch_statistics=True), {}, True),
        (LOGIT_METHOD, {"enabled": False}, True),
        (LOGIT_METHOD, {}, False),
    ],
)
def test_the_teacher_runs_live_when_the_cache_cannot_serve(
    tmp_path: Path, needs: TeacherNeeds, changes: dict, pipeline_caches: bool
) -> None:
    pipeline = generated_pipeline()
    if not pipeline_caches:
        pipeline.supports_logit_cache = False  # the DataLoader path's pipelines
    settings = cache_settings(tmp_path / "soft_labels", **changes)
    teacher = nn.Sequential(nn.Conv2d(CHANNELS, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(180, 4))
    teacher.kd_feature_points = {"stage1": "1"}
    chosen = teacher_outputs(teacher, "sha", needs, pipeline, BATCHES, CLASSES, settings, RUNTIME)
    assert chosen.kind == "live" and chosen.cache_status == "off" and isinstance(chosen.source, LiveTeacher)
    assert not (tmp_path / "soft_labels").exists()
    assert teacher[1].training is needs.batch_statistics  # OFD: the BatchNorms normalise with batch statistics
    images, _, indices = next(iter(pipeline.train_batches(1)))
    output = chosen.source(images, indices)
    assert output.logits.shape == (len(indices), CLASSES) and set(output.features) == set(needs.feature_names)


def test_an_external_checkpoint_is_evaluated_once_per_checkpoint_and_data(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    sha256 = save_checkpoint(path, tiny_teacher(seed=4), ARCH)
    model = tiny_teacher(seed=0)
    assert load_external(model, path, ARCH) == sha256 == file_sha256(path)
    assert torch.equal(model[0].weight, tiny_teacher(seed=4)[0].weight)
    calls = []

    def test_accuracy(evaluated: nn.Module) -> float:
        calls.append(evaluated)
        return 61.5

    data = {"dataset_content": "generated-data", "normalize": None}
    checkpoint = TeacherCheckpoint(path=path, sha256=sha256, teacher_id=f"sha256:{sha256}", data=data)
    evaluations = tmp_path / "teacher_evals"
    first = checkpoint_teacher(model, checkpoint, evaluations, test_accuracy)
    again = checkpoint_teacher(model, checkpoint, evaluations, test_accuracy)
    assert calls == [model] and first.test_acc == again.test_acc == 61.5
    assert (first.source, first.sha256, first.teacher_id, first.weights_path) == (
        "checkpoint",
        sha256,
        f"sha256:{sha256}",
        path,
    )
    assert first.history_path is None and first.summary == {"final_test_acc": 61.5}
    other_data = TeacherCheckpoint(path, sha256, checkpoint.teacher_id, {**data, "dataset_content": "other"})
    checkpoint_teacher(model, other_data, evaluations, test_accuracy)
    assert len(calls) == 2
