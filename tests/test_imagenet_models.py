"""The ImageNet zoo: mdistiller's MobileNetV1 and torchvision's ResNets with mdistiller's ImageNet feature points
(each point checked against mdistiller's forward written out from its definition), and their weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kd_hydra.errors import ConfigError
from kd_hydra.models import build_model, count_parameters
from kd_hydra.models.features import FeatureRecorder, feature_points

SIZE = 64


def recorded(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    recorder = FeatureRecorder(model, list(feature_points(model)))
    logits = model(x)
    return dict(recorder.features), logits


def test_mobilenetv1_points_are_mdistillers_feats_and_preact_feats() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenetv1", 10, 3, SIZE).eval()
    assert count_parameters(build_model("mobilenetv1", 1000, 3, 224)) == 4_231_976
    x = torch.randn(2, 3, SIZE, SIZE)
    features, logits = recorded(model, x)
    with torch.no_grad():  # mdistiller mdistiller/models/imagenet/mobilenetv1.py forward
        m = model.model
        feat1 = m[3][:-1](m[0:3](x))
        feat2 = m[5][:-1](m[4:5](F.relu(feat1)))
        feat3 = m[11][:-1](m[6:11](F.relu(feat2)))
        feat4 = m[13][:-1](m[12:13](F.relu(feat3)))
        pooled = F.adaptive_avg_pool2d(F.relu(feat4), 1).flatten(1)
    for number, feat in enumerate((feat1, feat2, feat3, feat4), 1):
        torch.testing.assert_close(features[f"stage{number}_preact"], feat)
        torch.testing.assert_close(features[f"stage{number}"], F.relu(feat))
    torch.testing.assert_close(features["pre_logit"], pooled)
    torch.testing.assert_close(logits, model.fc(pooled))


def _reference_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mdistiller's ImageNet block (its last ReLU moved to the next block's input): the residual sum."""
    identity = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):
        out = block.bn3(block.conv3(F.relu(block.bn2(block.conv2(out)))))
    else:
        out = block.bn2(block.conv2(out))
    return out + identity


@pytest.mark.parametrize(
    ("arch", "params"), [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)]
)
def test_imagenet_resnet_points_are_mdistillers(arch: str, params: int) -> None:
    torch.manual_seed(0)
    model = build_model(f"{arch}_imagenet", 10, 3, SIZE).eval()
    assert set(model.state_dict()) == set(torchvision.models.get_model(arch).state_dict())  # its files load
    x = torch.randn(2, 3, SIZE, SIZE)
    features, logits = recorded(model, x)
    with torch.no_grad():  # mdistiller mdistiller/models/imagenet/resnet.py forward
        stem = model.bn1(model.conv1(x))
        out, preacts = model.maxpool(F.relu(stem)), []
        for number in range(1, 5):
            for block in model.get_submodule(f"layer{number}"):
                out = _reference_block(block, F.relu(out))  # each block starts with ReLU(previous sum)
            preacts.append(out)
        pooled = F.adaptive_avg_pool2d(F.relu(out), 1).flatten(1)
    torch.testing.assert_close(features["stem"], F.relu(stem))
    for number, feat in enumerate(preacts, 1):
        torch.testing.assert_close(features[f"stage{number}_preact"], feat)
        torch.testing.assert_close(features[f"stage{number}"], F.relu(feat))
    torch.testing.assert_close(features["pre_logit"], pooled)
    torch.testing.assert_close(logits, model.fc(pooled))
    assert count_parameters(model) + 990 * (model.fc.in_features + 1) == params  # with a 1,000-class head


def test_torchvision_weights_load_from_a_file_or_name_one_line_when_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    model = build_model("resnet18_imagenet", 10, 3, SIZE, pretrained=str(tmp_path / "resnet18-f37072fd.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 10
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as error:
        build_model("resnet34_imagenet", 1000, 3, SIZE, pretrained="IMAGENET1K_V1")
    message = str(error.value)
    assert "resnet34-b627a593.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    named = build_model("resnet18_imagenet", 1000, 3, SIZE, pretrained="IMAGENET1K_V1")
    assert torch.equal(named.fc.weight, reference.fc.weight)


def test_a_teacher_off_its_published_imagenet_accuracy_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kd_hydra.models import published
    from kd_hydra.stores.cache_entry import file_sha256
    from kd_hydra.stores.teachers import TeacherCheckpoint, checkpoint_teacher

    assert published.published_top1("b627a593" + "0" * 56)[1] == 73.314  # resnet34-b627a593.pth
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "teacher.pth"
    torch.save(model.state_dict(), path)
    sha = file_sha256(path)
    monkeypatch.setitem(published.TORCHVISION_IMAGENET_TOP1, sha[:8], ("resnet34 IMAGENET1K_V1", 73.314, "docs"))
    for accuracy, size, warned in [
        (60.0, (50_000, 1000), True),
        (73.0, (50_000, 1000), False),
        (60.0, (10, 10), False),
    ]:
        caplog.clear()
        checkpoint = TeacherCheckpoint(path, sha, "id", {"accuracy": accuracy, "size": size}, test_size=size)
        teacher = checkpoint_teacher(
            model, checkpoint, tmp_path / f"evals{accuracy}{size}", lambda _, scored=accuracy: scored
        )
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warnings) is warned
        if size == (10, 10):  # not the full validation set: nothing to compare, nothing recorded
            assert teacher.published is None
        else:  # metrics.json's teacher_published
            assert teacher.published["agrees"] is not warned and teacher.published["published_top1"] == 73.314
            assert teacher.published["difference"] == pytest.approx(accuracy - 73.314)
        if warned:
            assert "scores 60.00%" in warnings[0] and "published 73.31%" in warnings[0] and "\n" not in warnings[0]
