"""Loading teacher checkpoints: the RepDistiller/mdistiller CIFAR teachers, and refusing bad files.

The reference networks (``tests/reference_cifar_models.py``) re-state the architecture definitions
of RepDistiller's ``models/*.py`` (mdistiller's ``models/cifar`` copies are the same) with their
module names, so a random state dict of them has exactly the keys of a published checkpoint.
Loading it into the kd-hydra zoo arch must reproduce their logits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from reference_cifar_models import REFERENCE_BUILDERS, REFERENCE_FILES, randomize_
from torch import nn

from kd_hydra.errors import CheckpointError
from kd_hydra.models import build_model
from kd_hydra.models.checkpoints import ArchSignature, load_checkpoint
from kd_hydra.models.published import PUBLISHED_LAYOUTS, detect_published_layout

CIFAR_SIZE = 32
CLASSES = 100
BATCH = 2
PUBLISHED_EPOCH = 240
ATOL = 1e-5
MAX_ERROR_CHARS = 600  # a key-mismatch error stays one readable line


PUBLISHED_ARCHS = sorted(REFERENCE_BUILDERS)
REFERENCES = {arch: (lambda arch=arch: REFERENCE_BUILDERS[arch](CLASSES)) for arch in PUBLISHED_ARCHS}


def _classifier_weight(model: nn.Module) -> torch.Tensor:
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1].weight


def _published_file(tmp_path: Path, reference: nn.Module, name: str = "ckpt_epoch_240.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": reference.state_dict(), "epoch": PUBLISHED_EPOCH, "accuracy": 73.5}, path)
    return path


def _signature(arch: str, num_classes: int = CLASSES) -> ArchSignature:
    return ArchSignature(arch, "zoo", num_classes, 3, CIFAR_SIZE)


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_published_teacher_predicts_as_their_model(arch: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(sum(map(ord, arch)))
    reference = REFERENCES[arch]()
    randomize_(reference, generator)
    reference.eval()
    path = _published_file(tmp_path, reference)

    ours = build_model(arch, CLASSES, 3, CIFAR_SIZE).eval()
    load_checkpoint(ours, path, _signature(arch))

    images = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE, generator=generator, dtype=torch.float64)
    with torch.no_grad():  # in float64: deep random nets reach logits where float32 rounding exceeds ATOL
        expected, actual = reference.double()(images).logits, ours.double()(images)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero logits
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    assert _classifier_weight(ours).equal(_classifier_weight(reference))


def test_every_published_arch_is_tested_against_its_reference() -> None:
    assert set(PUBLISHED_LAYOUTS) == set(REFERENCE_BUILDERS)


@pytest.mark.parametrize("arch", PUBLISHED_ARCHS)
def test_the_published_layout_of_each_arch_is_detected(arch: str) -> None:
    state = REFERENCES[arch]().state_dict()
    assert detect_published_layout(state) == PUBLISHED_LAYOUTS[arch].name
    assert REFERENCE_FILES[arch].split("/")[-1] in PUBLISHED_LAYOUTS[arch].name


def test_dataparallel_prefix_of_a_published_file_is_accepted(tmp_path: Path) -> None:
    reference = REFERENCES["wrn_16_2"]().eval()
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    ours = build_model("wrn_16_2", CLASSES, 3, CIFAR_SIZE).eval()
    load_checkpoint(ours, path, _signature("wrn_16_2"))
    images = torch.randn(2, 3, CIFAR_SIZE, CIFAR_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images).logits, atol=ATOL, rtol=0)


def test_published_checkpoint_of_another_depth_is_a_short_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _published_file(tmp_path, REFERENCES["resnet8x4"]())
    model = build_model("resnet32x4", CLASSES, 3, CIFAR_SIZE)
    with caplog.at_level(logging.ERROR, logger="kd_hydra.stores.teachers"), pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, path, _signature("resnet32x4"))
    message = str(caught.value)
    # resnet32x4 has 4 more blocks per stage; each: 2 convs + 2 BNs of 4 tensors (num_batches_tracked is filled in)
    missing = 3 * 4 * (2 + 2 * 4)
    assert (
        f"{missing} missing key(s) (stages.0.1.conv1.weight, stages.0.1.bn1.weight, stages.0.1.bn1.bias, ...)"
        in message
    )
    assert "CIFAR ResNet (models/resnet.py) layout" in message
    assert "\n" not in message and len(message) < MAX_ERROR_CHARS


def test_published_mobilenetv2_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "mobile_half.pth"
    torch.save(
        {"model": {"conv1.0.weight": torch.zeros(16, 3, 3, 3), "blocks.0.0.conv.0.weight": torch.zeros(16, 16, 1, 1)}},
        path,
    )
    with pytest.raises(
        CheckpointError,
        match=r"MobileNetV2 checkpoints do not fit kd-hydra's mobilenetv2: .*stride-2 stem.*mobile_half",
    ):
        load_checkpoint(build_model("mobilenetv2", CLASSES, 3, CIFAR_SIZE), path, _signature("mobilenetv2"))


# --- Refusing bad files (issue 9) ------------------------------------------------------------------


def test_key_layout_mismatch_is_one_readable_line_and_the_full_lists_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = build_model("resnet56", 10, 3, CIFAR_SIZE)
    renamed = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "other_layout.pt"
    torch.save(renamed, path)
    with caplog.at_level(logging.ERROR, logger="kd_hydra.stores.teachers"), pytest.raises(CheckpointError) as caught:
        load_checkpoint(build_model("resnet56", 10, 3, CIFAR_SIZE), path, _signature("resnet56", 10))
    message = str(caught.value)
    keys = list(model.state_dict())
    expected_missing = [k for k in keys if not k.endswith("num_batches_tracked")]
    assert message.startswith(f"teacher.checkpoint={path}: does not fit resnet56 with 10 classes")
    assert f"{len(expected_missing)} missing key(s) ({', '.join(expected_missing[:3])}, ...)" in message
    assert f"{len(keys)} unexpected key(s) ({', '.join(f'backbone.{k}' for k in keys[:3])}, ...)" in message
    assert "\n" not in message and len(message) < MAX_ERROR_CHARS
    logged = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)
    assert all(key in logged for key in expected_missing) and all(f"backbone.{k}" in logged for k in keys)


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "hundred.pt"
    torch.save(build_model("resnet20", 100, 3, CIFAR_SIZE).state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"2 shape-mismatched key\(s\) \(fc.weight: file \[100, 64\] vs model \[10, 64\]"
    ):
        load_checkpoint(build_model("resnet20", 10, 3, CIFAR_SIZE), path, _signature("resnet20", 10))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_tensor(tmp_path: Path, bad_value: float) -> None:
    state = build_model("resnet20", 10, 3, CIFAR_SIZE).state_dict()
    state["stages.1.0.conv1.weight"][0, 0, 0, 0] = bad_value
    state["stages.2.0.bn1.running_var"][3] = bad_value
    path = tmp_path / "diverged.pt"
    torch.save({"state_dict": state}, path)
    model = build_model("resnet20", 10, 3, CIFAR_SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, path, _signature("resnet20", 10))
    message = str(caught.value)
    assert message.startswith(f"teacher.checkpoint={path}: tensor 'stages.1.0.conv1.weight' holds NaN or inf")
    assert "2 non-finite tensor(s)" in message and "\n" not in message
    assert all(before[k].equal(v) for k, v in model.state_dict().items())  # nothing was loaded
