"""Every option of every config group composes (Hydra compose API) and builds its object."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_data import array_arrays, write_fake_cifar, write_fake_folder, write_fake_tiny_imagenet

from conftest import REPO
from kd_hydra.config.checks import validate
from kd_hydra.config.structured import register_configs
from kd_hydra.errors import ConfigError
from kd_hydra.methods import DistillMethod, MethodBatch, build_method
from kd_hydra.models import list_models

CONF = REPO / "conf"
register_configs()


def options(group: str) -> list[str]:
    folder = "model" if group in ("teacher", "student") else group  # those options are made from conf/model
    return sorted(p.stem for p in (CONF / folder).glob("*.yaml"))


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def test_default_config_is_valid_and_has_the_public_keys():
    cfg = composed()
    validate(cfg)
    for key in (
        "mode",
        "loss.temperature",
        "loss.alpha",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.seed",
        "trainer.device",
        "paths.data_dir",
        "paths.output_dir",
        "paths.cache_dir",
        "teacher.checkpoint",
    ):
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or key == "teacher.checkpoint", key
    assert cfg.mode == "distill" and cfg.teacher.checkpoint is None
    assert composed("dataset=arrays", "dataset.path=x.npz").dataset.path == "x.npz"


@pytest.mark.parametrize("group", ["teacher", "student"])
def test_model_groups_offer_the_whole_zoo(group):
    assert set(list_models()) <= set(options(group))
    assert options("teacher") == options("student")


@pytest.mark.parametrize("arch", options("student"))
def test_every_model_option_builds_for_cifar_shapes(arch):
    for group in ("teacher", "student"):
        cfg = composed(f"{group}={arch}")
        model = instantiate(cfg[group], num_classes=10, in_channels=3, image_size=32)
        assert isinstance(model, torch.nn.Module)


@pytest.mark.parametrize("name", options("loss"))
def test_every_loss_option_builds(name):
    mode = "student" if name == "ce" else "distill"
    cfg = composed(f"loss={name}", f"mode={mode}")
    validate(cfg)
    method = build_method(cfg.loss)
    assert isinstance(method, DistillMethod) and method.name == name == cfg.loss.name
    if method.uses_features:
        return  # needs probed feature shapes: tests/test_methods.py
    method.setup({}, {}, torch.randint(0, 10, (8,)), 10)
    batch = MethodBatch(torch.randn(4, 10), torch.randint(0, 10, (4,)), torch.arange(4), torch.randn(4, 10))
    batch.strong_student_logits, batch.strong_teacher_logits = torch.randn(4, 10), torch.randn(4, 10)  # mlkd
    output = method(batch)
    assert output.total.ndim == 0 and list(output.parts) == list(method.parts)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler_option_builds(optimizer, scheduler):
    cfg = composed(f"optimizer={optimizer}", f"scheduler={scheduler}")
    model = torch.nn.Linear(3, 2)
    opt = instantiate(cfg.optimizer, _convert_="all")(model.parameters())
    schedule = instantiate(cfg.scheduler, _convert_="all")(opt, epochs=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(cfg.optimizer.lr)
    if scheduler == "cosine":
        assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * lrs[0]
    elif scheduler == "step":
        assert lrs[4] == pytest.approx(cfg.optimizer.lr) and lrs[5] == pytest.approx(0.1 * cfg.optimizer.lr)
        assert lrs[8] == pytest.approx(0.01 * cfg.optimizer.lr)
    else:
        assert len(set(lrs)) == 1


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_option_composes_with_a_loader_target(name):
    cfg = composed(f"dataset={name}", *(["dataset.path=x"] if name in ("arrays", "folder") else []))
    assert cfg.dataset.name == name
    assert cfg.dataset.loader._target_.startswith("kd_hydra.data")
    assert set(cfg.dataset.augment) >= {"enabled", "crop_padding", "horizontal_flip"}
    assert set(cfg.dataset.normalize) == {"mean", "std"}


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_option_builds_its_data(name, tmp_path):
    """Through the config, as run.py does; file-based datasets read generated files in the real layouts."""
    overrides = [f"dataset={name}", f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]
    if name in ("cifar10", "cifar100"):
        write_fake_cifar(tmp_path, name)
        overrides += ["dataset.loader.download=false", "dataset.loader.verify_checksums=false"]  # fake files
    elif name == "tiny_imagenet":
        write_fake_tiny_imagenet(tmp_path)
    elif name == "imagenet":
        from imagenet_tree import write_imagenet_tree

        write_imagenet_tree(tmp_path / "imagenet")
        overrides += ["dataset.image_size=32", "dataset.eval_resize=36"]
    elif name == "folder":
        write_fake_folder(tmp_path / "images")
        overrides.append(f"dataset.path={tmp_path / 'images'}")
    elif name == "arrays":
        np.savez(tmp_path / "a.npz", **array_arrays())
        overrides.append(f"dataset.path={tmp_path / 'a.npz'}")
    data = instantiate(composed(*overrides).dataset.loader)
    assert data.spec.name == name and data.spec.num_train > 0 and data.spec.num_classes > 1


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_and_validates(name):
    cfg = composed(f"experiment={name}", hydra=True)
    validate(cfg)
    assert cfg.hydra.sweeper._target_.endswith("KDSweeper")


def test_experiment_presets_set_what_they_promise():
    hinton = composed("experiment=hinton_cifar10")
    assert (hinton.loss.temperature, hinton.loss.alpha, hinton.trainer.epochs, hinton.trainer.batch_size) == (
        4.0,
        0.1,
        200,
        128,
    )
    assert hinton.teacher.name.startswith("resnet") and hinton.student.name == "light_cnn"
    tutorial = composed("experiment=tutorial_cifar10")
    assert (tutorial.teacher.name, tutorial.student.name) == ("deep_cnn", "light_cnn")
    sweep = composed("experiment=temperature_sweep", hydra=True)
    assert sweep.hydra.sweeper.params["loss.temperature"] == "1,2,3,4,5,6,8,10"
    assert sweep.loss.alpha == 0.3 and sweep.trainer.epochs == 15 and sweep.hydra.mode.name == "MULTIRUN"
    quick = composed("experiment=quickstart", hydra=True)
    assert quick.dataset.name == "digits" and quick.hydra.mode.name == "MULTIRUN"
    tiny = composed("experiment=tiny_imagenet_resnet50")
    assert tiny.dataset.name == "tiny_imagenet" and tiny.teacher.name == "resnet50"


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_launcher_presets_compose(launcher):
    cfg = composed(f"hydra/launcher={launcher}", hydra=True)
    assert "hydra_plugins" in cfg.hydra.launcher._target_


def test_paths_follow_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_HYDRA_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("KD_HYDRA_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("KD_HYDRA_OUTPUT_DIR", str(tmp_path / "o"))
    paths = composed().paths
    assert (paths.cache_dir, paths.data_dir, paths.output_dir) == (
        str(tmp_path / "c"),
        str(tmp_path / "d"),
        str(tmp_path / "o"),
    )


def test_teacher_training_is_its_own_recipe():
    cfg = composed("trainer.epochs=7", "trainer.seed=3", "optimizer.lr=0.05", "optimizer=sgd", "scheduler=step")
    recipe = cfg.teacher_training
    assert (recipe.epochs, recipe.seed, recipe.batch_size) == (10, 0, 128), "nothing follows the student's trainer"
    assert recipe.optimizer._target_ == "torch.optim.AdamW" and recipe.optimizer.lr == 1.0e-3
    assert recipe.scheduler._target_ == "kd_hydra.train.schedules.cosine_schedule"
    assert composed("teacher_training.epochs=30").teacher_training.epochs == 30
    assert composed("teacher_training.optimizer.lr=0.05").teacher_training.optimizer.lr == 0.05, "one key, one value"
    assert composed("optimizer@teacher_training.optimizer=sgd").teacher_training.optimizer._target_ == "torch.optim.SGD"
    assert composed("trainer.seed=3", "teacher_training.seed=${trainer.seed}").teacher_training.seed == 3


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["loss.temperature=0"], "loss.temperature"),
        (["loss.alpha=2"], "loss.alpha"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.eval_every=0"], "trainer.eval_every"),
        (["trainer.device=tpu"], "trainer.device"),
        (["optimizer.lr=0"], "optimizer.lr"),
        (["loss=ce"], "loss"),
        (["soft_label_cache.top_k=0"], "soft_label_cache.top_k"),
        (["soft_label_cache.crops_per_image=0"], "soft_label_cache.crops_per_image"),
        (["soft_label_cache.crops_per_image=-3"], "soft_label_cache.crops_per_image"),
        (["soft_label_cache.crops_per_image=4", "soft_label_cache.pool_seed=-1"], "soft_label_cache.pool_seed"),
        (["teacher.checkpoint=/no/such/file.pt"], "teacher.checkpoint"),
    ],
)
def test_validate_names_the_bad_key(overrides, key):
    with pytest.raises(ConfigError) as raised:
        validate(composed(*overrides))
    assert str(raised.value).startswith(key + ":")


def test_wrong_types_fail_at_composition():
    with pytest.raises(Exception, match="trainer.epochs"):
        composed("trainer.epochs=many")
    with pytest.raises(Exception, match="mode"):
        composed("mode=everything")
    with pytest.raises(Exception, match="soft_label_cache.crops_per_image"):
        composed("soft_label_cache.crops_per_image=many")


def test_no_dataset_or_checkpoint_files_are_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [f for f in tracked.splitlines() if f.endswith((".npz", ".pt", ".pth", ".ckpt"))]


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimizer.lr=inf", "optimizer.lr"),
        ("loss.temperature=inf", "loss.temperature"),
        ("optimizer.lr=abc", "optimizer.lr"),
        ("loss.alpha=nan", "loss.alpha"),
    ],
)
def test_non_finite_and_non_numeric_values_are_refused_before_training(override, key):
    from hydra import compose, initialize_config_dir

    from kd_hydra.config.checks import validate
    from kd_hydra.config.structured import register_configs

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[override])
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number"):
        validate(cfg)


def test_the_crop_pool_joins_a_run_identity_only_when_set():
    from kd_hydra.records.identity import training_settings

    unset, seeded, pooled = (
        training_settings(composed(*overrides))
        for overrides in ([], ["soft_label_cache.pool_seed=5"], ["soft_label_cache.crops_per_image=4"])
    )
    assert not {"soft_label_cache.crops_per_image", "soft_label_cache.pool_seed"} & set(unset)
    assert seeded == unset  # the pool's seed means nothing without a pool: earlier runs keep their identities
    assert pooled["soft_label_cache.crops_per_image"] == 4 and pooled["soft_label_cache.pool_seed"] == 0
    assert {k: v for k, v in pooled.items() if not k.startswith("soft_label_cache.")} == {
        k: v for k, v in unset.items() if not k.startswith("soft_label_cache.")
    }
