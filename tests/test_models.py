"""Tests of the model zoo (kd_hydra.models) and the teacher/student config groups."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn
from torchvision.models._api import WeightsEnum

from kd_hydra.errors import ConfigError
from kd_hydra.models import build_model, count_parameters, list_models
from kd_hydra.models.torchvision_models import replace_classifier

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TEACHER_DIR = CONF_DIR / "teacher"
STUDENT_DIR = CONF_DIR / "student"
TORCHVISION_PRESETS = {"torchvision.yaml", "resnet50.yaml"}

ZOO = (
    "deep_cnn", "light_cnn", "mobilenetv2", "resnet110", "resnet18", "resnet20", "resnet32",
    "resnet32x4", "resnet56", "resnet8x4", "wrn_16_2", "wrn_40_2",
)  # fmt: skip

BATCH = 2
CIFAR_SIZE = 32
DIGITS_SIZE = 8

# Parameter counts on 32x32 RGB: the tutorial's exact figures, and RepDistiller/kuangliu/torchvision
# reference counts for the others (10 classes unless stated).
EXACT_PARAMS_10 = {
    "deep_cnn": 1_186_986,
    "light_cnn": 267_738,
    "resnet20": 272_474,
    "resnet18": 11_173_962,
    "mobilenetv2": 2_236_682,
}
APPROX_PARAMS_100 = {  # CRD paper tables (millions), CIFAR-100
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.7,
    "resnet8x4": 1.2,
    "resnet32x4": 7.4,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.25,
}
APPROX_TOLERANCE = 0.03  # relative


def _logits(model: nn.Module, channels: int, size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(BATCH, channels, size, size))


def test_list_models_is_the_sorted_zoo() -> None:
    assert list_models() == sorted(ZOO)


@pytest.mark.parametrize("name, expected", sorted(EXACT_PARAMS_10.items()))
def test_exact_parameter_counts(name: str, expected: int) -> None:
    assert count_parameters(build_model(name, 10, 3, CIFAR_SIZE)) == expected


@pytest.mark.parametrize("name, millions", sorted(APPROX_PARAMS_100.items()))
def test_parameter_counts_match_crd_tables(name: str, millions: float) -> None:
    count = count_parameters(build_model(name, 100, 3, CIFAR_SIZE))
    assert count == pytest.approx(millions * 1e6, rel=APPROX_TOLERANCE)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_forward_shapes(name: str) -> None:
    for num_classes in (10, 100):
        model = build_model(name, num_classes, 3, CIFAR_SIZE)
        assert _logits(model, 3, CIFAR_SIZE).shape == (BATCH, num_classes)
    digits_model = build_model(name, 10, 1, DIGITS_SIZE)
    assert _logits(digits_model, 1, DIGITS_SIZE).shape == (BATCH, 10)


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "mobilenetv2", "light_cnn"])
def test_channels_last_gives_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3, CIFAR_SIZE).eval()
    images = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE)
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["light_cnn", "resnet8x4", "wrn_16_2", "mobilenetv2"])
def test_compiles_as_one_graph_in_training(name: str) -> None:
    """Dynamo captures forward without graph breaks (the eager backend keeps it fast on CPU)."""
    torch._dynamo.reset()
    model = build_model(name, 10, 1, DIGITS_SIZE).train()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    logits = compiled(torch.randn(BATCH, 1, DIGITS_SIZE, DIGITS_SIZE))
    logits.sum().backward()
    assert logits.shape == (BATCH, 10)


def test_mobilenetv2_width_multiplier_shrinks_it() -> None:
    full = count_parameters(build_model("mobilenetv2", 10, 3, CIFAR_SIZE))
    half = build_model("mobilenetv2", 10, 3, CIFAR_SIZE, width_mult=0.5)
    assert count_parameters(half) < full
    assert _logits(half, 3, CIFAR_SIZE).shape == (BATCH, 10)


@pytest.mark.parametrize("name", ["deep_cnn", "light_cnn"])
@pytest.mark.parametrize("image_size", [2, 10])
def test_tutorial_cnns_reject_unsupported_sizes(name: str, image_size: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} needs") as caught:
        build_model(name, 10, 3, image_size)
    assert caught.value.key == "name"


def test_unknown_name_lists_the_zoo() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'resnet9000'") as caught:
        build_model("resnet9000", 10, 3, CIFAR_SIZE)
    assert caught.value.key == "name"
    assert ", ".join(sorted(ZOO)) in str(caught.value)


def test_unknown_option_and_source_and_zoo_weights_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="width_mult"):
        build_model("resnet20", 10, 3, CIFAR_SIZE, width_mult=2.0)
    with pytest.raises(ConfigError, match="unknown model source") as caught:
        build_model("resnet20", 10, 3, CIFAR_SIZE, source="timm")
    assert caught.value.key == "source"
    with pytest.raises(ConfigError) as caught:
        build_model("resnet20", 10, 3, CIFAR_SIZE, weights="DEFAULT")
    assert caught.value.key == "weights"


def test_checkpoint_is_ignored() -> None:
    model = build_model("light_cnn", 10, 3, CIFAR_SIZE, checkpoint="/no/such/file.pt")
    assert count_parameters(model) == EXACT_PARAMS_10["light_cnn"]


def test_torchvision_resnet50_on_tiny_imagenet_shape() -> None:
    model = build_model("resnet50", 200, 3, 64, source="torchvision")
    assert _logits(model, 3, 64).shape == (BATCH, 200)


def test_torchvision_rejects_grayscale_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="3-channel RGB") as caught:
        build_model("resnet18", 10, 1, CIFAR_SIZE, source="torchvision")
    assert caught.value.key == "name"
    with pytest.raises(ConfigError, match="unknown torchvision model 'resnet9000'.*resnet50"):
        build_model("resnet9000", 10, 3, CIFAR_SIZE, source="torchvision")
    with pytest.raises(ConfigError, match="unknown weights 'IMAGENET9K'") as caught:
        build_model("resnet18", 10, 3, CIFAR_SIZE, source="torchvision", weights="IMAGENET9K")
    assert caught.value.key == "weights"


def test_torchvision_pretrained_weights_are_loaded_then_head_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pretrained = torchvision.models.resnet18().state_dict()  # stands in for the download
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *args, **kwargs: pretrained)
    model = build_model("resnet18", 10, 3, CIFAR_SIZE, source="torchvision", weights="DEFAULT")
    torch.testing.assert_close(model.conv1.weight, pretrained["conv1.weight"])
    assert model.fc.out_features == 10
    assert _logits(model, 3, CIFAR_SIZE).shape == (BATCH, 10)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_1"])
def test_replace_classifier_finds_the_final_layer(name: str) -> None:
    model = torchvision.models.get_model(name)
    replace_classifier(model, 1000, 7)
    assert _logits(model, 3, 64).shape == (BATCH, 7)


def test_teacher_and_student_groups_have_the_same_files() -> None:
    teacher_files = {path.name for path in TEACHER_DIR.glob("*.yaml")}
    student_files = {path.name for path in STUDENT_DIR.glob("*.yaml")}
    assert teacher_files == student_files
    assert {f"{name}.yaml" for name in ZOO} | TORCHVISION_PRESETS == teacher_files


@pytest.mark.parametrize("group_dir", [TEACHER_DIR, STUDENT_DIR], ids=["teacher", "student"])
def test_group_files_instantiate(group_dir: Path) -> None:
    for path in sorted(group_dir.glob("*.yaml")):
        assert path.read_text().startswith("# "), f"{path} lacks its one-line comment"
        node = OmegaConf.load(path)
        assert ("checkpoint" in node) == (group_dir == TEACHER_DIR), path
        expected_source = "torchvision" if path.name in TORCHVISION_PRESETS else "zoo"
        assert node.source == expected_source and node.weights is None, path
        if expected_source == "zoo":
            assert node.name == path.stem, path
        model = hydra.utils.instantiate(node, num_classes=10, in_channels=3, image_size=CIFAR_SIZE)
        assert _logits(model, 3, CIFAR_SIZE).shape == (BATCH, 10), path
