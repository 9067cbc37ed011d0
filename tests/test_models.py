"""Tests of the model zoo (kd_hydra.models), its reference definitions, and the model/teacher/student configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from reference_cifar_models import REFERENCE_BUILDERS, ReferenceOutput, randomize_
from torch import nn
from torchvision.models._api import WeightsEnum

from kd_hydra.config.structured import register_configs
from kd_hydra.errors import ConfigError
from kd_hydra.models import build_model, count_parameters, list_models
from kd_hydra.models.features import (
    STEM,
    FeatureRecorder,
    feature_modules,
    feature_points,
    preact_batchnorms,
    probe_feature_shapes,
    stage_points,
)
from kd_hydra.models.model_configs import model_config_names
from kd_hydra.models.published import to_zoo_layout
from kd_hydra.models.torchvision_models import replace_classifier

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_DIR = CONF_DIR / "model"
TORCHVISION_PRESETS = {"torchvision.yaml", "resnet50.yaml"}

ZOO = (
    "deep_cnn", "light_cnn", "mobile_half", "mobilenetv2", "resnet110", "resnet14", "resnet18", "resnet20",
    "resnet32", "resnet32x4", "resnet44", "resnet50_cifar", "resnet56", "resnet8", "resnet8x4", "shufflev1",
    "shufflev2", "vgg11", "vgg13", "vgg16", "vgg19", "vgg8", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
)  # fmt: skip
#: The ImageNet archs (tests/test_imagenet_models.py checks them against mdistiller's ImageNet definitions).
IMAGENET_ZOO = ("mobilenetv1", "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet")
ALL_ARCHS = tuple(sorted(ZOO + IMAGENET_ZOO))
OWN_ARCHS = ("deep_cnn", "light_cnn", "mobilenetv2")  # kd-hydra's; every other arch re-implements a reference

BATCH = 2
CIFAR_SIZE = 32
REFERENCE_CLASSES = 100
REFERENCE_ARCHS = sorted(REFERENCE_BUILDERS)
TRAIN_MODE_ARCHS = (
    "resnet8",
    "resnet20",
    "resnet18",
    "wrn_16_1",
    "wrn_16_2",
    "vgg8",
    "mobile_half",
    "shufflev1",
    "shufflev2",
)
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
# Parameter counts on 32x32 RGB, 100 classes, of the reference definitions (RepDistiller's
# models/*.py, mdistiller's models/cifar copies), counted on their re-statements in
# reference_cifar_models.py; the test checks both those and the zoo against this table.
REFERENCE_PARAMS_100 = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet18": 11_220_132,
    "resnet50_cifar": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobile_half": 812_836,
    "shufflev1": 949_258,
    "shufflev2": 1_355_528,
}


def _logits(model: nn.Module, channels: int, size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(BATCH, channels, size, size))


def test_list_models_is_the_sorted_zoo() -> None:
    assert list_models() == sorted(ALL_ARCHS)


@pytest.mark.parametrize("name, expected", sorted(EXACT_PARAMS_10.items()))
def test_exact_parameter_counts(name: str, expected: int) -> None:
    assert count_parameters(build_model(name, 10, 3, CIFAR_SIZE)) == expected


@pytest.mark.parametrize("name, expected", sorted(REFERENCE_PARAMS_100.items()))
def test_parameter_counts_equal_the_reference_models(name: str, expected: int) -> None:
    assert count_parameters(REFERENCE_BUILDERS[name](100)) == expected
    assert count_parameters(build_model(name, 100, 3, CIFAR_SIZE)) == expected


def test_every_arch_but_kd_hydras_own_has_a_reference() -> None:
    assert set(REFERENCE_PARAMS_100) == set(REFERENCE_BUILDERS) == set(ZOO) - set(OWN_ARCHS)


@pytest.mark.parametrize("name, millions", sorted(APPROX_PARAMS_100.items()))
def test_parameter_counts_match_crd_tables(name: str, millions: float) -> None:
    count = count_parameters(build_model(name, 100, 3, CIFAR_SIZE))
    assert count == pytest.approx(millions * 1e6, rel=APPROX_TOLERANCE)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_forward_shapes(name: str) -> None:
    model = build_model(name, 100, 3, CIFAR_SIZE)
    assert _logits(model, 3, CIFAR_SIZE).shape == (BATCH, 100)
    digits_model = build_model(name, 10, 1, DIGITS_SIZE)  # one channel, 8 px, another class count
    assert _logits(digits_model, 1, DIGITS_SIZE).shape == (BATCH, 10)


@pytest.mark.parametrize("name", ["resnet20", "wrn_16_2", "mobilenetv2", "light_cnn", "shufflev1", "vgg8"])
def test_channels_last_gives_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3, CIFAR_SIZE).eval()
    images = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE)
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name", ["light_cnn", "resnet8x4", "wrn_16_2", "mobilenetv2", "vgg8", "shufflev2", "mobile_half"]
)
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
    assert ", ".join(sorted(ALL_ARCHS)) in str(caught.value)


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


USER_BUILDERS = """
from torch import nn


def mlp(num_classes: int, in_channels: int, image_size: int, *, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.Linear(hidden, num_classes))


def flexible(**arguments):
    return nn.Linear(arguments["in_channels"], arguments["num_classes"])


def shapeless(num_classes: int) -> nn.Module:
    return nn.Identity()


def not_a_module(num_classes: int, in_channels: int, image_size: int):
    return "mlp"


CONSTANT = 3
"""


@pytest.fixture
def user_builders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_builders.py").write_text(USER_BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_builders", raising=False)
    return "user_builders"


def test_a_name_with_a_dot_is_the_import_path_of_a_builder_of_your_own(user_builders: str) -> None:
    model = build_model(f"{user_builders}.mlp", 10, 1, DIGITS_SIZE, hidden=7)
    assert _logits(model, 1, DIGITS_SIZE).shape == (BATCH, 10) and model[1].out_features == 7
    assert isinstance(build_model(f"{user_builders}.flexible", 4, 3, 8, anything=1), nn.Linear)
    with pytest.raises(ConfigError, match="'user_builders.mlp' has no option 'depth'; its options are: hidden"):
        build_model(f"{user_builders}.mlp", 10, 1, DIGITS_SIZE, hidden=7, depth=2)
    assert f"{user_builders}.mlp" not in list_models()


@pytest.mark.parametrize(
    "name,message",
    [
        ("no_such_module.net", "cannot import no_such_module for no_such_module.net"),
        ("user_builders.missing", "user_builders.missing is not a model builder"),
        ("user_builders.CONSTANT", "user_builders.CONSTANT is not a model builder"),
        ("user_builders.shapeless", "must take the keyword arguments num_classes, in_channels, image_size"),
        ("user_builders.not_a_module", "returned a str; a builder must return an nn.Module"),
    ],
)
def test_a_bad_builder_path_is_a_config_error_naming_the_name(user_builders: str, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build_model(name, 10, 3, CIFAR_SIZE)
    assert caught.value.key == "name"


def test_the_zoo_is_found_by_walking_the_package_in_a_fresh_process() -> None:
    """``kd_hydra.models`` imports no architecture module itself; listing the zoo finds all of them."""
    code = (
        "import sys, kd_hydra.models as m; "
        "assert not any(n.endswith('.resnet_cifar') for n in sys.modules); print(','.join(m.list_models()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(",") == sorted(ALL_ARCHS)


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


def test_one_model_config_per_arch() -> None:
    configs = {path.name for path in MODEL_DIR.glob("*.yaml")}
    assert configs == {f"{name}.yaml" for name in ALL_ARCHS} | TORCHVISION_PRESETS


def test_model_files_instantiate() -> None:
    for path in sorted(MODEL_DIR.glob("*.yaml")):
        assert path.read_text().startswith("# "), f"{path} lacks its one-line comment"
        node = OmegaConf.load(path)
        assert "checkpoint" not in node, path
        expected_source = "torchvision" if path.name in TORCHVISION_PRESETS else "zoo"
        assert node.source == expected_source and node.weights is None, path
        if expected_source == "zoo":
            assert node.name == path.stem, path
        model = hydra.utils.instantiate(node, num_classes=10, in_channels=3, image_size=CIFAR_SIZE)
        assert _logits(model, 3, CIFAR_SIZE).shape == (BATCH, 10), path


def test_teacher_and_student_options_are_the_model_configs() -> None:
    """``teacher=<arch>`` and ``student=<arch>`` are model/<arch> plus ``checkpoint`` (the student's: mode=eval)."""
    register_configs()
    names = model_config_names(str(CONF_DIR))
    assert names == sorted(path.stem for path in MODEL_DIR.glob("*.yaml"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for group in ("teacher", "student"):
            assert GlobalHydra.instance().config_loader().get_group_options(group) == names
        cfg = compose("config", ["teacher=vgg13", "student=mobile_half", "teacher.checkpoint=/ckpt.pth"])
        wrn = compose("config", ["teacher=wrn_40_2", "student=wrn_16_2", "student.dropout=0.3"])
    assert OmegaConf.to_container(cfg.teacher) == {
        **OmegaConf.to_container(OmegaConf.load(MODEL_DIR / "vgg13.yaml")),
        "checkpoint": "/ckpt.pth",
    }
    assert OmegaConf.to_container(cfg.student) == {
        **OmegaConf.to_container(OmegaConf.load(MODEL_DIR / "mobile_half.yaml")),
        "checkpoint": None,
    }
    assert wrn.teacher.checkpoint is None and wrn.student.checkpoint is None
    assert (wrn.teacher.dropout, wrn.student.dropout, wrn.student.name) == (0.0, 0.3, "wrn_16_2")


# --- Feature points --------------------------------------------------------------------------------


def _with_preacts(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``shapes`` with a ``stageN_preact`` of the same shape before every ``stageN``, in forward order."""
    ordered: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if name.startswith("stage"):
            ordered[f"{name}_preact"] = shape
        ordered[name] = shape
    return ordered


RESNET_THIN_SHAPES = _with_preacts({
    "stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8), "pre_logit": (64,),
})  # fmt: skip
RESNET_WIDE_SHAPES = _with_preacts({
    "stem": (32, 32, 32), "stage1": (64, 32, 32), "stage2": (128, 16, 16), "stage3": (256, 8, 8), "pre_logit": (256,),
})  # fmt: skip
WRN_2_SHAPES = _with_preacts({
    "stem": (16, 32, 32), "stage1": (32, 32, 32), "stage2": (64, 16, 16), "stage3": (128, 8, 8), "pre_logit": (128,),
})  # fmt: skip
WRN_1_SHAPES = _with_preacts({
    "stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8), "pre_logit": (64,),
})  # fmt: skip
VGG_SHAPES = _with_preacts({
    "stem": (64, 32, 32), "stage1": (128, 16, 16), "stage2": (256, 8, 8), "stage3": (512, 4, 4),
    "stage4": (512, 4, 4), "pre_logit": (512,),
})  # fmt: skip
# Shapes of RepDistiller's / mdistiller's feats (+ preact_feats) and pooled feature at 32x32
# (mobilenetv2: our 8x-downsampling variant; the tutorial CNNs have no pre-activation points).
FEATURE_SHAPES_32 = {
    "deep_cnn": {"stem": (128, 32, 32), "stage1": (64, 16, 16), "stage2": (32, 8, 8), "pre_logit": (512,)},
    "light_cnn": {"stem": (16, 32, 32), "stage1": (16, 16, 16), "stage2": (16, 8, 8), "pre_logit": (256,)},
    "resnet20": RESNET_THIN_SHAPES,
    "resnet32": RESNET_THIN_SHAPES,
    "resnet56": RESNET_THIN_SHAPES,
    "resnet110": RESNET_THIN_SHAPES,
    "resnet8x4": RESNET_WIDE_SHAPES,
    "resnet32x4": RESNET_WIDE_SHAPES,
    "resnet18": _with_preacts({
        "stem": (64, 32, 32), "stage1": (64, 32, 32), "stage2": (128, 16, 16), "stage3": (256, 8, 8),
        "stage4": (512, 4, 4), "pre_logit": (512,),
    }),
    "resnet50_cifar": _with_preacts({
        "stem": (64, 32, 32), "stage1": (256, 32, 32), "stage2": (512, 16, 16), "stage3": (1024, 8, 8),
        "stage4": (2048, 4, 4), "pre_logit": (2048,),
    }),
    "resnet8": RESNET_THIN_SHAPES,
    "resnet14": RESNET_THIN_SHAPES,
    "resnet44": RESNET_THIN_SHAPES,
    "wrn_16_1": WRN_1_SHAPES,
    "wrn_40_1": WRN_1_SHAPES,
    "wrn_16_2": WRN_2_SHAPES,
    "wrn_40_2": WRN_2_SHAPES,
    **{name: VGG_SHAPES for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "mobile_half": _with_preacts({
        "stem": (16, 16, 16), "stage1": (12, 16, 16), "stage2": (16, 8, 8), "stage3": (48, 4, 4),
        "stage4": (160, 2, 2), "pre_logit": (1280,),
    }),
    "shufflev1": _with_preacts({
        "stem": (24, 32, 32), "stage1": (240, 16, 16), "stage2": (480, 8, 8), "stage3": (960, 4, 4),
        "pre_logit": (960,),
    }),
    "shufflev2": _with_preacts({
        "stem": (24, 32, 32), "stage1": (116, 16, 16), "stage2": (232, 8, 8), "stage3": (464, 4, 4),
        "pre_logit": (1024,),
    }),
    "mobilenetv2": _with_preacts({
        "stem": (32, 32, 32), "stage1": (24, 32, 32), "stage2": (32, 16, 16), "stage3": (96, 8, 8),
        "stage4": (320, 4, 4), "pre_logit": (1280,),
    }),
}  # fmt: skip


def test_every_zoo_model_has_feature_points() -> None:
    assert set(FEATURE_SHAPES_32) == set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_feature_points_are_in_forward_order_with_reference_shapes(name: str) -> None:
    model = build_model(name, 100, 3, CIFAR_SIZE)
    points = feature_points(model)
    assert list(points) == list(FEATURE_SHAPES_32[name])
    assert probe_feature_shapes(model, list(points), (3, CIFAR_SIZE, CIFAR_SIZE)) == FEATURE_SHAPES_32[name]


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "mobilenetv2", "deep_cnn"])
def test_pre_logit_is_what_the_classifier_reads(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3, CIFAR_SIZE).eval()
    recorder = FeatureRecorder(model, ["pre_logit"])
    with torch.no_grad():
        logits = model(torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE))
    head = model.classifier if name == "mobilenetv2" else model.fc if hasattr(model, "fc") else model.classifier[3]
    torch.testing.assert_close(head(recorder.features["pre_logit"]), logits)


def test_resnet_stage_features_match_a_manual_forward() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, CIFAR_SIZE).eval()
    images = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE)
    recorder = FeatureRecorder(model, ["stem", "stage2", "stage3", "pre_logit"])
    with torch.no_grad():
        model(images)
        stem = model.stem(images)
        stage2 = model.stages[1](model.stages[0](stem))
        stage3 = model.stages[2](stage2)
    features = recorder.features
    torch.testing.assert_close(features["stem"], stem)
    assert features["stem"].min() >= 0  # post-activation
    torch.testing.assert_close(features["stage2"], stage2)
    torch.testing.assert_close(features["stage3"], stage3)
    torch.testing.assert_close(features["pre_logit"], stage3.mean(dim=(2, 3)))


def _reference_points(output: ReferenceOutput) -> dict[str, torch.Tensor]:
    """The reference's feats / preact_feats / pooled_feat under kd-hydra's feature point names."""
    points = {"stem": output.feats[0]}
    for index in range(1, len(output.feats)):
        points[f"stage{index}_preact"] = output.preact_feats[index]
        points[f"stage{index}"] = output.feats[index]
    return {**points, "pre_logit": output.pooled_feat}


def _zoo_copy_of(arch: str, reference: nn.Module) -> nn.Module:
    """kd-hydra's ``arch`` holding the reference's weights (renamed as a published checkpoint is)."""
    state = reference.state_dict()
    ours = build_model(arch, REFERENCE_CLASSES, 3, CIFAR_SIZE)
    ours.load_state_dict(to_zoo_layout(arch, state) or state)
    return ours


def _check_points_against_the_reference(arch: str, training: bool) -> None:
    generator = torch.Generator().manual_seed(sum(map(ord, arch)))
    reference = REFERENCE_BUILDERS[arch](REFERENCE_CLASSES)
    randomize_(reference, generator)
    ours = _zoo_copy_of(arch, reference).train(training)
    reference.train(training)
    images = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE, generator=generator)
    with torch.no_grad():
        expected = _reference_points(reference(images))
        recorder = FeatureRecorder(ours, list(expected))
        ours(images)
    assert list(feature_points(ours)) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(recorder.features[name], tensor, rtol=1e-4, atol=1e-4, msg=f"{arch} {name}")


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_feature_points_equal_the_reference_feats(arch: str) -> None:
    """Every point, pre-activation ones included, is the tensor the reference forward computes."""
    _check_points_against_the_reference(arch, training=False)


@pytest.mark.parametrize("arch", sorted(set(TRAIN_MODE_ARCHS) & set(REFERENCE_ARCHS)))
def test_feature_points_equal_the_reference_feats_in_training(arch: str) -> None:
    """The same with batch statistics, one arch per reference family (the reference re-runs a BatchNorm)."""
    _check_points_against_the_reference(arch, training=True)


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_preact_batchnorms_are_the_references_bn_before_relu(arch: str) -> None:
    """The BatchNorms OFD reads its margin from: the reference's ``get_bn_before_relu``, none for ShuffleNets."""
    reference = REFERENCE_BUILDERS[arch](REFERENCE_CLASSES)
    randomize_(reference, torch.Generator().manual_seed(sum(map(ord, arch))))
    ours = _zoo_copy_of(arch, reference)
    declared = preact_batchnorms(ours)
    if not hasattr(reference, "get_bn_before_relu"):
        assert arch.startswith("shufflev") and declared == {}
        return
    theirs = reference.get_bn_before_relu()
    assert list(declared) == [f"stage{index}_preact" for index in range(1, len(theirs) + 1)]
    for path, bn in zip(declared.values(), theirs):
        module = ours.get_submodule(path)
        assert isinstance(module, nn.BatchNorm2d) and module.weight.equal(bn.weight), (arch, path)
        assert module.running_var.equal(bn.running_var), (arch, path)


def test_kd_hydras_mobilenetv2_declares_its_projection_batchnorms() -> None:
    model = build_model("mobilenetv2", 10, 3, CIFAR_SIZE)
    paths = preact_batchnorms(model)
    assert list(paths) == [f"stage{index}_preact" for index in range(1, 5)]
    assert all(isinstance(model.get_submodule(path), nn.BatchNorm2d) for path in paths.values())


def test_preact_points_precede_the_final_relu() -> None:
    """The pre-activation points hold negative values; their post-ReLU stages do not (and vice versa on WRN)."""
    torch.manual_seed(0)
    model = build_model("resnet8x4", 10, 3, CIFAR_SIZE).eval()
    recorder = FeatureRecorder(model, ["stage3_preact", "stage3"])
    with torch.no_grad():
        model(torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE))
    assert recorder.features["stage3_preact"].min() < 0 <= recorder.features["stage3"].min()
    torch.testing.assert_close(recorder.features["stage3_preact"].relu(), recorder.features["stage3"])
    wrn = build_model("wrn_16_2", 10, 3, CIFAR_SIZE).eval()
    recorder = FeatureRecorder(wrn, ["stage3", "pre_logit"])
    with torch.no_grad():
        wrn(torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE))
    assert recorder.features["stage3"].min() < 0  # raw block output, before the final BN-ReLU
    activated = torch.relu(wrn.final_activation[0](recorder.features["stage3"]))
    torch.testing.assert_close(recorder.features["pre_logit"], activated.mean(dim=(2, 3)))


def test_markers_leave_the_state_dict_alone() -> None:
    assert not any("preact" in key for key in build_model("resnet20", 10, 3, CIFAR_SIZE).state_dict())


def test_recorder_refreshes_every_forward_keeps_grads_and_removes_its_hooks() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8x4", 10, 3, CIFAR_SIZE).train()
    recorder = FeatureRecorder(model, ["stage1", "pre_logit"])
    first = torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE)
    logits = model(first)
    assert logits.shape == (BATCH, 10)
    first_stage1 = recorder.features["stage1"]
    (recorder.features["stage1"].square().mean() + recorder.features["pre_logit"].sum()).backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0
    model(torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE))
    assert not recorder.features["stage1"].equal(first_stage1)
    recorder.remove()
    assert recorder.features == {}
    model(first)
    assert recorder.features == {}
    assert all(not module._forward_hooks for module in model.modules())


def test_recorder_under_autocast() -> None:
    model = build_model("resnet20", 10, 3, CIFAR_SIZE).eval()
    recorder = FeatureRecorder(model, ["stage3", "pre_logit"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(BATCH, 3, CIFAR_SIZE, CIFAR_SIZE))
    assert logits.shape == (BATCH, 10)
    assert recorder.features["stage3"].dtype == torch.bfloat16
    assert recorder.features["pre_logit"].shape == (BATCH, 64)


@pytest.mark.parametrize("hook_first", [True, False], ids=["hooks-then-compile", "compile-then-hooks"])
def test_recorder_on_a_compiled_model(hook_first: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("resnet8x4", 10, 1, DIGITS_SIZE).eval()
    images = torch.randn(BATCH, 1, DIGITS_SIZE, DIGITS_SIZE)
    with torch.no_grad():
        expected_logits = model(images)
        expected_stage2 = model.stages[1](model.stages[0](model.stem(images)))
    if hook_first:
        recorder = FeatureRecorder(model, ["stage2", "pre_logit"])
        compiled = torch.compile(model, fullgraph=True, backend="eager")
    else:
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        recorder = FeatureRecorder(compiled, ["stage2", "pre_logit"])
    assert feature_points(compiled) == feature_points(model)
    with torch.no_grad():
        logits = compiled(images)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(recorder.features["stage2"], expected_stage2)
    assert recorder.features["pre_logit"].shape == (BATCH, 256)
    recorder.remove()


def test_probe_restores_the_mode_and_leaves_batchnorm_statistics_alone() -> None:
    model = build_model("wrn_16_2", 10, 3, CIFAR_SIZE).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = probe_feature_shapes(model, ["stage1", "pre_logit"], (3, 16, 16))
    assert shapes == {"stage1": (32, 16, 16), "pre_logit": (128,)}
    assert model.training and all(m.training for m in model.modules())
    assert all(before[k].equal(v) for k, v in model.state_dict().items())
    assert all(not module._forward_hooks for module in model.modules())
    model.eval()
    probe_feature_shapes(model, ["stem"], (3, CIFAR_SIZE, CIFAR_SIZE))
    assert not model.training


def test_unknown_feature_point_request_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match="has no feature point\\(s\\) stage4; it offers: stem, stage1_preact, stage1, stage2_preact, stage2, "
        "stage3_preact, stage3, pre_logit",
    ):
        FeatureRecorder(build_model("resnet20", 10, 3, CIFAR_SIZE), ["stage4"])


def test_torchvision_default_feature_points() -> None:
    resnet = build_model("resnet18", 10, 3, CIFAR_SIZE, source="torchvision")
    assert feature_points(resnet) == {
        "stem": "maxpool", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4",
        "pre_logit": "avgpool",
    }  # fmt: skip
    assert probe_feature_shapes(resnet, ["stage4", "pre_logit"], (3, 64, 64)) == {
        "stage4": (512, 2, 2),
        "pre_logit": (512,),
    }
    vgg_like = nn.Module()  # torchvision's VGG/AlexNet layout, small
    vgg_like.features = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2)
    )
    vgg_like.avgpool = nn.AdaptiveAvgPool2d(1)
    assert feature_points(vgg_like) == {
        "stem": "features.1", "stage1": "features.2", "stage2": "features.5", "pre_logit": "avgpool",
    }  # fmt: skip
    mobilenet = build_model("mobilenet_v3_small", 10, 3, CIFAR_SIZE, source="torchvision")
    points = feature_points(mobilenet)
    assert points["stem"] == "features.0" and points["pre_logit"] == "avgpool"
    assert [points[f"stage{i}"] for i in range(1, len(mobilenet.features))] == [
        f"features.{i}" for i in range(1, len(mobilenet.features))
    ]


def test_feature_points_override_from_the_model_config() -> None:
    node = OmegaConf.load(MODEL_DIR / "torchvision.yaml")
    node.feature_points = {"pre_logit": "avgpool", "stage2": "layer4", "stage1": "layer2.1.relu"}
    model = hydra.utils.instantiate(node, num_classes=10, in_channels=3, image_size=CIFAR_SIZE)
    assert feature_points(model) == {"stage1": "layer2.1.relu", "stage2": "layer4", "pre_logit": "avgpool"}
    assert list(feature_points(model)) == ["stage1", "stage2", "pre_logit"]
    zoo = build_model("resnet20", 10, 3, CIFAR_SIZE, feature_points={"stage1": "stages.0.0"})
    assert feature_points(zoo) == {"stage1": "stages.0.0"}
    assert _logits(zoo, 3, CIFAR_SIZE).shape == (BATCH, 10)


def test_feature_points_override_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="has no module 'layer9'") as caught:
        build_model("resnet18", 10, 3, CIFAR_SIZE, source="torchvision", feature_points={"stage3": "layer9"})
    assert caught.value.key == "feature_points.stage3"
    with pytest.raises(ConfigError, match="not a feature point name") as caught:
        build_model("resnet18", 10, 3, CIFAR_SIZE, source="torchvision", feature_points={"block3": "layer3"})
    assert caught.value.key == "feature_points.block3"


#: What each zoo family leaves out of its feature modules: the head after the last stage (RepDistiller's
#: ``get_feat_modules`` leave out the classifier, WRN's final BN-ReLU, MobileNetV2's and ShuffleV2's 1x1 head conv).
FEATURE_MODULE_HEADS = {
    "deep_cnn": ("classifier",),
    "light_cnn": ("classifier",),
    **{name: ("fc",) for name in ZOO if name.startswith("resnet")},
    **{name: ("final_activation", "fc") for name in ZOO if name.startswith("wrn")},
    **{name: ("classifier",) for name in ZOO if name.startswith("vgg")},
    "mobile_half": ("conv2", "classifier"),
    "mobilenetv2": ("features.18", "classifier"),
    "shufflev1": ("linear",),
    "shufflev2": ("conv2", "bn2", "linear"),
}


@pytest.mark.parametrize("name", ZOO)
def test_feature_modules_are_everything_but_the_head(name: str) -> None:
    model = build_model(name, 10, 3, CIFAR_SIZE)
    heads = FEATURE_MODULE_HEADS[name]
    trained = {id(p) for module in feature_modules(model) for p in module.parameters()}
    expected = {id(p) for path, p in model.named_parameters() if not path.startswith(tuple(h + "." for h in heads))}
    assert trained == expected
    inside = {id(m) for module in feature_modules(model) for m in module.modules()}
    points = feature_points(model)
    for point in [STEM, *stage_points(points)]:
        assert id(model.get_submodule(points[point])) in inside, point


def test_torchvision_feature_modules_end_with_the_last_stage() -> None:
    resnet = build_model("resnet18", 10, 3, CIFAR_SIZE, source="torchvision")
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert feature_modules(resnet) == [resnet.get_submodule(name) for name in names]
    vgg = build_model("vgg11_bn", 10, 3, CIFAR_SIZE, source="torchvision")
    assert feature_modules(vgg) == [vgg.features]
    with pytest.raises(ConfigError, match="no stem or stageN feature point") as caught:
        feature_modules(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    assert caught.value.key == "feature_points"
