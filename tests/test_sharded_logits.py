"""The sharded soft-label cache: fixed-size records, a fill split by ranges writes the same bytes, and no (N, C)
tensor is ever allocated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from kd_hydra.data import ArrayData, AugmentConfig, DatasetSpec, InMemoryPipeline
from kd_hydra.stores.cache_entry import CacheEntry
from kd_hydra.stores.logit_cache import CachedTeacher, decode_logits, encode_logits
from kd_hydra.stores.sharded_logits import RecordLayout, ShardedEpoch, ShardedTeacher, fill_range, split_ranges
from kd_hydra.stores.teacher_outputs import SoftLabelCacheSettings, TeacherNeeds, TrainingBatchesKey, teacher_outputs
from kd_hydra.train.runtime import Runtime

CLASSES, SIZE, NUM_TRAIN, BATCH = 40, 4, 90, 8
RUNTIME = Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False, compile=False)


def pipeline() -> InMemoryPipeline:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (NUM_TRAIN + 4, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(NUM_TRAIN + 4) % CLASSES
    spec = DatasetSpec("generated", CLASSES, 3, SIZE, tuple(map(str, range(CLASSES))), NUM_TRAIN, 4)
    data = ArrayData(images[:NUM_TRAIN], labels[:NUM_TRAIN], images[NUM_TRAIN:], labels[NUM_TRAIN:], spec)
    return InMemoryPipeline(data, AugmentConfig(crop_padding=1), [0.5] * 3, [0.25] * 3, BATCH, "cpu", seed=1)


def teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES)).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_record_holds_what_encode_logits_keeps(dtype: torch.dtype) -> None:
    logits = torch.randn(6, CLASSES) * 5
    layout = RecordLayout(CLASSES, 10, dtype)
    assert RecordLayout(1000, 10, torch.float16).record_bytes == 42  # the 42 bytes per sample at k=10
    records = layout.encode(logits)
    assert records.shape == (6, layout.record_bytes)
    expected = decode_logits(encode_logits(logits, dtype, 10), CLASSES)
    assert torch.equal(layout.decode(records), expected)
    full = RecordLayout(CLASSES, None, torch.float32)
    assert torch.equal(full.decode(full.encode(logits)), logits)


def test_ranges_filled_apart_write_the_bytes_of_one_fill(tmp_path: Path) -> None:
    layout, batches = RecordLayout(CLASSES, 5, torch.float16), pipeline()
    digests = []
    for workers in (1, 2, 3):
        store = ShardedEpoch(CacheEntry(tmp_path / f"w{workers}"), 2, NUM_TRAIN, layout)
        store.allocate()
        ranges = split_ranges(NUM_TRAIN, workers, BATCH)
        assert ranges[0][0] == 0 and ranges[-1][1] == NUM_TRAIN and all(start % BATCH == 0 for start, _ in ranges)
        for start, stop in reversed(ranges):  # any order, each "worker" its own range
            fill_range(store, teacher(), batches, RUNTIME, BATCH, start, stop)
        store.seal({"run": 1})
        digests.append(CacheEntry(tmp_path / f"w{workers}").sealed_files())
    assert len(digests[0]) == 4 and digests[0] == digests[1] == digests[2]


class _LargestFloat(TorchDispatchMode):
    """Records whether any op produced a float tensor of shape (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and tuple(tensor.shape)
                == (
                    NUM_TRAIN,
                    CLASSES,
                )
            ):
                self.dense = True
        return out


@pytest.mark.parametrize(("top_k", "dense"), [(4, False), (None, True)])
def test_no_n_by_c_tensor_is_allocated_for_the_sharded_cache(tmp_path: Path, top_k: int | None, dense: bool) -> None:
    settings = SoftLabelCacheSettings(tmp_path, True, torch.float16, top_k, 1 << 30, BATCH)
    needs = TeacherNeeds((), live_only=False, batch_statistics=False)
    key = TrainingBatchesKey("content", {}, None, 1)
    batches = pipeline()
    source = teacher_outputs(teacher(), "sha", needs, batches, key, CLASSES, settings, RUNTIME).source
    assert isinstance(source, ShardedTeacher) is (top_k is not None) and isinstance(source, CachedTeacher)
    with _LargestFloat() as recorder:
        for epoch in (1, 1):  # filled, then read
            source.begin_epoch(epoch)
            for images, _, indices in batches.train_batches(epoch):
                assert source(images, indices).logits.shape == (len(indices), CLASSES)
    assert recorder.dense is dense  # the dense cache (top_k null, in-memory data) does allocate one: the check can fail
    if top_k is not None:
        assert source.epochs_computed == 1 and source.epochs_read == 1
