"""The third fault probe (issue 25), mechanisms 1 to 4: cache entries checked against their key, one writer per run
directory, waits and write failures that say so, and records that never describe what is not there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_store_seams import (
    BATCHES,
    CLASSES,
    LOGIT_METHOD,
    RUNTIME,
    cache_settings,
    epoch_logits,
    generated_pipeline,
    tiny_teacher,
)
from torch import nn

from kd_hydra.models.checkpoints import ArchSignature
from kd_hydra.stores.teacher_outputs import LiveTeacher, teacher_outputs
from kd_hydra.stores.teachers import TeacherStore

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

TINY_ARCH = ArchSignature(name="tiny", source="zoo", num_classes=CLASSES, in_channels=3, image_size=6)


# ------------------------------------------------------------------ 1. a cache entry is checked against its key


def test_a_teacher_entry_placed_under_another_recipes_key_is_never_served(tmp_path: Path) -> None:
    store = TeacherStore(tmp_path)
    recipe_a, recipe_b = {"training": {"lr": 0.1}}, {"training": {"lr": 0.5}}
    trained: list[str] = []

    def train_as(name: str, seed: int):
        def train(model: nn.Module, entry_dir: Path) -> dict[str, float]:
            model.load_state_dict(tiny_teacher(seed).state_dict())
            trained.append(name)
            return {"final_test_acc": 50.0 + seed}

        return train

    store.get_or_train(recipe_a, "t", tiny_teacher(), TINY_ARCH, train_as("a", 1))
    entry_a, entry_b = store.entry(recipe_a, "t").path, store.entry(recipe_b, "t").path
    shutil.copytree(entry_a, entry_b)  # recipe a's teacher, under recipe b's key, its seal intact
    teacher = store.get_or_train(recipe_b, "t", tiny_teacher(), TINY_ARCH, train_as("b", 2))
    assert trained == ["a", "b"] and teacher.source == "trained" and teacher.test_acc == 52.0
    for name, tensor in teacher.model.state_dict().items():
        assert torch.equal(tensor, tiny_teacher(2).state_dict()[name])
    again = store.get_or_train(recipe_b, "t", tiny_teacher(), TINY_ARCH, train_as("b", 3))
    assert again.source == "store" and trained == ["a", "b"]


def outputs_for(root: Path, teacher: nn.Module, teacher_sha256: str):
    pipeline = generated_pipeline()
    settings = cache_settings(root)
    return teacher_outputs(teacher, teacher_sha256, LOGIT_METHOD, pipeline, BATCHES, CLASSES, settings, RUNTIME)


def test_a_soft_label_entry_of_teacher_a_under_teacher_bs_key_is_recomputed(tmp_path: Path) -> None:
    pipeline = generated_pipeline()
    cold_a = outputs_for(tmp_path, tiny_teacher(1), "sha-a")
    logits_a = epoch_logits(cold_a.source, pipeline, epoch=0)
    entry_a = cold_a.source.entry.path
    entry_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b").source.entry.path
    shutil.copytree(entry_a, entry_b)  # a's logits under b's key, sealed
    served_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b")
    logits_b = epoch_logits(served_b.source, pipeline, epoch=0)
    assert served_b.cache_status == "cold" and served_b.source.epochs_computed == 1
    live_b = epoch_logits(LiveTeacher(tiny_teacher(2), RUNTIME), pipeline, epoch=0)
    torch.testing.assert_close(logits_b, live_b.to(torch.float16).float(), rtol=0, atol=0)
    assert not torch.equal(logits_a, logits_b)
    warm_b = outputs_for(tmp_path, tiny_teacher(2), "sha-b")
    assert torch.equal(epoch_logits(warm_b.source, pipeline, epoch=0), logits_b) and warm_b.cache_status == "warm"
