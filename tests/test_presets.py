"""The CIFAR-100 presets compose to their authors' published values: one table row per value, its source named.

A row is (preset, method, kd-hydra key, value, the authors' name for it, source as ``repo path``). Rows of a
method are checked for every preset once ``conf/loss/<method>.yaml`` exists; rows of a pair once its teacher
and student configs exist. Rows whose value kd-hydra has no key for (``key=None``) document the authors' setting.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from kd_hydra.config.checks import validate
from kd_hydra.config.structured import register_configs

CONF = REPO / "conf"
register_configs()

MDISTILLER = "megvii-research/mdistiller"
MDISTILLER_CFG = f"{MDISTILLER} mdistiller/engine/cfg.py"
MDISTILLER_DATA = f"{MDISTILLER} mdistiller/dataset/cifar100.py"
REPDISTILLER = "HobbitLong/RepDistiller"
REPDISTILLER_STUDENT = f"{REPDISTILLER} train_student.py"
REPDISTILLER_SCRIPT = f"{REPDISTILLER} scripts/run_cifar_distill.sh"
LS = "sunshangquan/logit-standardization-KD"
REVIEWKD_SCRIPT = "dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh"
DIST_PAPER = "Huang et al., NeurIPS 2022 (DIST), CIFAR-100 setting; hunto/DIST_KD has no CIFAR config"


@dataclass(frozen=True)
class Pair:
    """One teacher/student row of the CRD/DKD CIFAR-100 tables and where its authors' solver is written down."""

    teacher: str
    student: str
    lr: float
    dkd_config: str | None  # mdistiller configs/cifar100/dkd/<file>; None: the pair is in RepDistiller's table only
    dkd_beta: float = 8.0
    reviewkd_weight: float | None = None  # ReviewKD's --kd-loss-weight for the pair, where its script has it

    @property
    def preset(self) -> str:
        return f"cifar100_{self.teacher}_{self.student}"

    @property
    def teacher_arch(self) -> str:
        """kd-hydra's arch name of the teacher: the papers' ResNet50 row is the CIFAR ResNet50."""
        return ZOO_NAMES.get(self.teacher, self.teacher)

    @property
    def solver_source(self) -> str:
        if self.dkd_config is None:
            return f"{REPDISTILLER_STUDENT} (defaults; lr 0.01 for MobileNet/ShuffleNet students)"
        return f"{MDISTILLER} configs/cifar100/dkd/{self.dkd_config}"


#: The papers' names that kd-hydra's zoo spells otherwise (torchvision's ImageNet ResNet-50 is ``resnet50``).
ZOO_NAMES = {"resnet50": "resnet50_cifar"}

PAIRS = [
    Pair("resnet56", "resnet20", 0.05, "res56_res20.yaml", dkd_beta=2.0, reviewkd_weight=0.6),
    Pair("resnet110", "resnet20", 0.05, None),
    Pair("resnet110", "resnet32", 0.05, "res110_res32.yaml", dkd_beta=2.0, reviewkd_weight=1.0),
    Pair("resnet32x4", "resnet8x4", 0.05, "res32x4_res8x4.yaml", reviewkd_weight=5.0),
    Pair("wrn_40_2", "wrn_16_2", 0.05, "wrn40_2_wrn_16_2.yaml", dkd_beta=6.0, reviewkd_weight=5.0),
    Pair("wrn_40_2", "wrn_40_1", 0.05, "wrn40_2_wrn_40_1.yaml", dkd_beta=6.0, reviewkd_weight=5.0),
    Pair("vgg13", "vgg8", 0.05, "vgg13_vgg8.yaml", dkd_beta=6.0),
    Pair("vgg13", "mobile_half", 0.01, "vgg13_mv2.yaml", dkd_beta=6.0),
    Pair("resnet50", "mobile_half", 0.01, "res50_mv2.yaml"),
    Pair("resnet50", "vgg8", 0.05, None),
    Pair("resnet32x4", "shufflev1", 0.01, "res32x4_shuv1.yaml", reviewkd_weight=5.0),
    Pair("resnet32x4", "shufflev2", 0.01, "res32x4_shuv2.yaml", reviewkd_weight=8.0),
    Pair("wrn_40_2", "shufflev1", 0.01, "wrn40_2_shuv1.yaml", reviewkd_weight=5.0),
]

#: KD + logit standardization (Sun et al., CVPR 2024): pair -> (base temperature, KD weight, log file in LS's logs/KD/)
LS_RUNS = {
    "resnet56_resnet20": (2.0, 9.0, "kd,resnet56,resnet20,2,9.txt"),
    "resnet110_resnet20": (4.0, 12.0, "kd,resnet110,resnet20,4,12.txt"),
    "resnet110_resnet32": (2.0, 9.0, "kd,resnet110,resnet32,2,9.txt"),
    "resnet32x4_resnet8x4": (2.0, 9.0, "kd,resnet32x4,resnet8x4,2,9.txt"),
    "wrn_40_2_wrn_16_2": (2.0, 9.0, "kd,wrn_40_2,wrn_16_2,2,9.txt"),
    "wrn_40_2_wrn_40_1": (2.0, 9.0, "kd,wrn_40_2,wrn_40_1,2,9.txt"),
    "vgg13_vgg8": (3.0, 9.0, "kd,vgg13,vgg8,3,9.txt"),
    "vgg13_mobile_half": (3.0, 9.0, "kd,vgg13,MobileNetV2,3,9.txt"),
    "resnet50_mobile_half": (3.0, 1.0, "kd,ResNet50,MobileNetV2,3,1.txt"),
    "resnet32x4_shufflev2": (2.0, 9.0, "kd,resnet32x4,ShuffleV2,2,9.txt"),
}


@dataclass(frozen=True)
class Published:
    """A published value: ``loss.<key>`` (method rows) or ``<key>`` (solver rows) of a preset under ``loss=method``."""

    preset: str
    method: str | None  # None: a solver row, checked under the preset's default method
    key: str | None  # kd-hydra's key; None: no kd-hydra key (documented only)
    value: Any
    authors_key: str
    source: str


def _solver_rows(pair: Pair) -> list[Published]:
    src, teacher_src = pair.solver_source, f"{REPDISTILLER} train_teacher.py (defaults)"
    fp32 = f"{MDISTILLER} mdistiller/engine/trainer.py (no autocast: fp32 student and teacher)"
    rows = [
        ("teacher.name", pair.teacher_arch, "DISTILLER.TEACHER", src),
        ("student.name", pair.student, "DISTILLER.STUDENT", src),
        ("dataset.name", "cifar100", "DATASET.TYPE", MDISTILLER_CFG),
        ("dataset.val_fraction", 0.0, "the whole training split", MDISTILLER_DATA),
        ("dataset.augment.crop_padding", 4, "RandomCrop(32, padding=4)", MDISTILLER_DATA),
        ("dataset.augment.horizontal_flip", True, "RandomHorizontalFlip()", MDISTILLER_DATA),
        ("dataset.normalize.mean", [0.5071, 0.4867, 0.4408], "transforms.Normalize mean", MDISTILLER_DATA),
        ("dataset.normalize.std", [0.2675, 0.2565, 0.2761], "transforms.Normalize std", MDISTILLER_DATA),
        ("trainer.eval_every", 1, "validate() after every epoch", f"{MDISTILLER} mdistiller/engine/trainer.py"),
        ("optimizer.lr", pair.lr, "SOLVER.LR", src),
        ("optimizer.momentum", 0.9, "SOLVER.MOMENTUM", src),
        ("optimizer.weight_decay", 5.0e-4, "SOLVER.WEIGHT_DECAY", src),
        ("optimizer.nesterov", False, "SOLVER.TYPE SGD", src),
        ("trainer.batch_size", 64, "SOLVER.BATCH_SIZE", src),
        ("trainer.epochs", 240, "SOLVER.EPOCHS", src),
        ("scheduler.milestones", [0.625, 0.75, 0.875], "SOLVER.LR_DECAY_STAGES [150, 180, 210] of 240", src),
        ("scheduler.gamma", 0.1, "SOLVER.LR_DECAY_RATE", src),
        ("trainer.precision", "fp32", "fp32", fp32),
        ("soft_label_cache.dtype", "float32", "fp32 teacher logits", fp32),
        ("teacher_training.epochs", 240, "--epochs", teacher_src),
        ("teacher_training.batch_size", 64, "--batch_size", teacher_src),
        ("teacher_training.optimizer.lr", 0.05, "--learning_rate", teacher_src),
        ("teacher_training.optimizer.momentum", 0.9, "--momentum", teacher_src),
        ("teacher_training.optimizer.weight_decay", 5.0e-4, "--weight_decay", teacher_src),
        ("teacher_training.scheduler.milestones", [0.625, 0.75, 0.875], "--lr_decay_epochs 150,180,210", teacher_src),
        ("teacher_training.scheduler.gamma", 0.1, "--lr_decay_rate", teacher_src),
    ]
    return [Published(pair.preset, None, key, value, name, source) for key, value, name, source in rows]


def _method_rows(pair: Pair) -> list[Published]:
    dkd_src = (
        f"{MDISTILLER} configs/cifar100/dkd/{pair.dkd_config}" if pair.dkd_config else f"{MDISTILLER_CFG} (default)"
    )
    rkd_src = REVIEWKD_SCRIPT if pair.reviewkd_weight is not None else f"{MDISTILLER} configs/cifar100/reviewkd.yaml"
    ft_init_lr = 0.05 if pair.student.startswith("vgg") else 0.01
    rows = [
        ("kd", "temperature", 4.0, "KD.TEMPERATURE", MDISTILLER_CFG),
        ("kd", "alpha", 0.9, "KD.LOSS.KD_WEIGHT 0.9 (CE_WEIGHT 0.1 = 1 - alpha)", MDISTILLER_CFG),
        ("kd", "standardize", False, "EXPERIMENT.LOGIT_STAND", f"{LS} mdistiller/engine/cfg.py"),
        ("dkd", "ce_weight", 1.0, "DKD.CE_WEIGHT", MDISTILLER_CFG),
        ("dkd", "alpha", 1.0, "DKD.ALPHA", MDISTILLER_CFG),
        ("dkd", "beta", pair.dkd_beta, "DKD.BETA", dkd_src),
        ("dkd", "temperature", 4.0, "DKD.T", MDISTILLER_CFG),
        ("dkd", "warmup", 20, "DKD.WARMUP", MDISTILLER_CFG),
        ("fitnet", "ce_weight", 1.0, "FITNET.LOSS.CE_WEIGHT", MDISTILLER_CFG),
        ("fitnet", "hint_weight", 100.0, "FITNET.LOSS.FEAT_WEIGHT (RepDistiller -b 100)", MDISTILLER_CFG),
        ("fitnet", "hint_point", "stage2", "FITNET.HINT_LAYER 2 (feats[2])", MDISTILLER_CFG),
        ("at", "ce_weight", 1.0, "AT.LOSS.CE_WEIGHT", MDISTILLER_CFG),
        ("at", "at_weight", 1000.0, "AT.LOSS.FEAT_WEIGHT (RepDistiller -b 1000)", MDISTILLER_CFG),
        ("at", "p", 2.0, "AT.P", MDISTILLER_CFG),
        ("crd", "ce_weight", 1.0, "CRD.LOSS.CE_WEIGHT", MDISTILLER_CFG),
        ("crd", "crd_weight", 0.8, "CRD.LOSS.FEAT_WEIGHT (RepDistiller -b 0.8)", MDISTILLER_CFG),
        ("crd", "feat_dim", 128, "CRD.FEAT.DIM", MDISTILLER_CFG),
        ("crd", "nce_k", 16384, "CRD.NCE.K", MDISTILLER_CFG),
        ("crd", "nce_t", 0.07, "CRD.NCE.TEMPERATURE", MDISTILLER_CFG),
        ("crd", "momentum", 0.5, "CRD.NCE.MOMENTUM", MDISTILLER_CFG),
        ("dist", "ce_weight", 1.0, "CE weight", DIST_PAPER),
        ("dist", "beta", 2.0, "beta (inter-class)", DIST_PAPER),
        ("dist", "gamma", 2.0, "gamma (intra-class)", DIST_PAPER),
        ("dist", "temperature", 4.0, "tau", DIST_PAPER),
        ("sp", "ce_weight", 1.0, "SP.LOSS.CE_WEIGHT", MDISTILLER_CFG),
        ("sp", "sp_weight", 3000.0, "SP.LOSS.FEAT_WEIGHT (RepDistiller -b 3000)", MDISTILLER_CFG),
        ("cc", "cc_weight", 0.02, "-b 0.02", REPDISTILLER_SCRIPT),
        ("cc", "feat_dim", 128, "--feat_dim (LinearEmbed)", REPDISTILLER_STUDENT),
        ("vid", "ce_weight", 1.0, "VID.LOSS.CE_WEIGHT", MDISTILLER_CFG),
        ("vid", "vid_weight", 1.0, "VID.LOSS.FEAT_WEIGHT (RepDistiller -b 1)", MDISTILLER_CFG),
        ("vid", "init_pred_var", 5.0, "VID.INIT_PRED_VAR", MDISTILLER_CFG),
        ("vid", "eps", 1.0e-5, "VID.EPS", MDISTILLER_CFG),
        ("rkd", "rkd_weight", 1.0, "RKD.LOSS.FEAT_WEIGHT (RepDistiller -b 1)", MDISTILLER_CFG),
        ("rkd", "distance_weight", 25.0, "RKD.DISTANCE_WEIGHT", MDISTILLER_CFG),
        ("rkd", "angle_weight", 50.0, "RKD.ANGLE_WEIGHT", MDISTILLER_CFG),
        ("pkt", "pkt_weight", 30000.0, "PKT.LOSS.FEAT_WEIGHT (RepDistiller -b 30000)", MDISTILLER_CFG),
        ("kdsvd", "kdsvd_weight", 1.0, "KDSVD.LOSS.FEAT_WEIGHT", MDISTILLER_CFG),
        ("kdsvd", "k", 1, "KDSVD.K", MDISTILLER_CFG),
        ("nst", "nst_weight", 50.0, "NST.LOSS.FEAT_WEIGHT (RepDistiller -b 50)", MDISTILLER_CFG),
        (
            "ab",
            "ab_weight",
            0.0,
            "abound: loss_kd = 0 in the distillation stage (the script's -b 1 is unused)",
            REPDISTILLER_STUDENT,
        ),
        ("ab", "init_epochs", 30, "--init_epochs", REPDISTILLER_STUDENT),
        ("ft", "ft_weight", 200.0, "-b 200", REPDISTILLER_SCRIPT),
        ("ft", "init_epochs", 30, "--init_epochs", REPDISTILLER_STUDENT),
        (
            "ft",
            None,
            ft_init_lr,
            "paraphraser lr (0.01 for ResNet/WRN students, else the student lr)",
            f"{REPDISTILLER} helper/pretrain.py",
        ),
        (
            "fsp",
            "fsp_weight",
            0.0,
            "fsp: loss_kd = 0 in the distillation stage (the script's -b 50 is unused)",
            REPDISTILLER_STUDENT,
        ),
        ("fsp", "init_epochs", 30, "--init_epochs", REPDISTILLER_STUDENT),
        ("ofd", "feat_weight", 0.001, "OFD.LOSS.FEAT_WEIGHT", MDISTILLER_CFG),
        ("reviewkd", "reviewkd_weight", pair.reviewkd_weight or 5.0, "REVIEWKD_WEIGHT / --kd-loss-weight", rkd_src),
        ("reviewkd", "warmup", 20, "REVIEWKD.WARMUP_EPOCHS (--kd-warm-up)", MDISTILLER_CFG),
    ]
    return [Published(pair.preset, method, key, value, name, source) for method, key, value, name, source in rows]


def _ls_rows(pair: str, temperature: float, kd_weight: float, log: str) -> list[Published]:
    run = f"{LS} logs/KD/{log} (BASE_TEMPERATURE,KD_WEIGHT in its name)"
    cfg = f"{LS} mdistiller/engine/cfg.py (master)"
    rows = [
        ("standardize", True, "--logit-stand", f"{LS} README.md"),
        ("temperature", temperature, "--base-temp", run),
        ("kd_weight", kd_weight, "--kd-weight", run),
        ("ce_weight", 0.1, "KD.LOSS.CE_WEIGHT", cfg),
    ]
    return [Published(f"cifar100_{pair}_kd_ls", "kd", key, value, name, source) for key, value, name, source in rows]


MLKD_RESNET32X4_RESNET8X4 = f"{LS} configs/cifar100/mlkd/resnet32x4_resnet8x4.yaml"

TABLE: list[Published] = [
    *(row for pair in PAIRS for row in _solver_rows(pair)),
    *(row for pair in PAIRS for row in _method_rows(pair)),
    *(row for pair, run in LS_RUNS.items() for row in _ls_rows(pair, *run)),
    # MLKD runs with its own solver and strong augmentation, which the presets do not set
    Published("cifar100_resnet32x4_resnet8x4", "mlkd", None, 480, "SOLVER.EPOCHS", MLKD_RESNET32X4_RESNET8X4),
    Published("cifar100_resnet32x4_resnet8x4", "mlkd", None, 0.025, "SOLVER.LR", MLKD_RESNET32X4_RESNET8X4),
]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _options(group: str) -> set[str]:
    folder = "model" if group in ("teacher", "student") else group  # one config per arch serves both
    return {path.stem for path in (CONF / folder).glob("*.yaml")}


@functools.cache
def _takes_ce_and_kd_weights() -> bool:
    """``loss=kd`` has ``ce_weight``/``kd_weight`` (issue 15 item 7), which Sun et al.'s recipe needs."""
    return "ce_weight" in composed("loss=kd").loss


def _composable(preset: str, method: str | None) -> bool:
    pair = next((p for p in PAIRS if p.preset == preset.removesuffix("_kd_ls")), None)
    models = pair is not None and pair.teacher_arch in _options("teacher") and pair.student in _options("student")
    if preset.endswith("_kd_ls"):
        return models and _takes_ce_and_kd_weights()
    return models and (method is None or method in _options("loss"))


def _checked_groups() -> list[tuple[str, str | None]]:
    groups = {(row.preset, row.method) for row in TABLE if row.key is not None}
    return sorted((g for g in groups if _composable(*g)), key=lambda g: (g[0], g[1] or ""))


@pytest.mark.parametrize(("preset", "method"), _checked_groups())
def test_preset_composes_to_the_published_values(preset, method):
    cfg = composed(f"experiment={preset}", *([f"loss={method}"] if method else []))
    validate(cfg)
    wrong = []
    for row in TABLE:
        if (row.preset, row.method) != (preset, method) or row.key is None:
            continue
        path = row.key if method is None else f"loss.{row.key}"
        node = OmegaConf.select(cfg, path, default="<missing>")
        got = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        if got != row.value:
            wrong.append(f"{path} = {got!r}, published {row.value!r} ({row.authors_key}: {row.source})")
    assert not wrong, f"experiment={preset} loss={method}:\n" + "\n".join(wrong)


def test_the_table_covers_every_pair_and_preset_with_a_source_per_row():
    presets = {p.stem for p in (CONF / "experiment").glob("cifar100_*.yaml")}
    assert presets == {row.preset for row in TABLE if row.preset.startswith("cifar100_")}
    assert len(PAIRS) == 13 and len({p.preset for p in PAIRS}) == 13
    for row in TABLE:
        assert row.source.split()[0].count("/") == 1 or row.source == DIST_PAPER, row
        assert row.authors_key, row
    checked = {(preset, method) for preset, method in _checked_groups()}
    for pair in ("cifar100_resnet56_resnet20", "cifar100_wrn_40_2_wrn_16_2", "cifar100_resnet32x4_resnet8x4"):
        for method in (None, "kd", "dkd", "dist", "fitnet", "at", "crd"):
            assert (pair, method) in checked  # the pairs and methods of this branch are checked, not only listed


def test_every_pair_value_file_is_a_published_value_of_its_preset():
    """Each ``conf/preset_method/<preset>/<method>.yaml`` sets only values the table holds for that preset (loss
    values, and on ImageNet the method's batch and lr)."""
    files = sorted((CONF / "preset_method").glob("*/*.yaml"))
    assert files
    for path in files:
        preset, method = path.parent.name, path.stem
        assert preset in _options("experiment"), path
        published = {row.key: row.value for row in TABLE if (row.preset, row.method) == (preset, method)}
        values = OmegaConf.to_container(OmegaConf.load(path))
        assert set(values) <= {"loss", "trainer", "optimizer"}, path  # a method's own solver on ImageNet
        for key, value in values.get("loss", {}).items():
            assert published.get(key, "<none>") == value, f"{path}: loss.{key}={value!r} is not in the table"
        for group in ("trainer", "optimizer"):
            for key, value in values.get(group, {}).items():
                assert published.get(f"{group}.{key}", "<none>") == value, f"{path}: {group}.{key} is not in the table"


def test_pair_values_follow_the_loss_choice_and_command_line_overrides_win():
    preset = "experiment=cifar100_wrn_40_2_wrn_16_2"
    assert composed(preset, "loss=dkd").loss.beta == 6.0
    assert "beta" not in composed(preset, "loss=kd").loss  # no DKD key on another method
    assert composed(preset, "loss=dkd", "loss.beta=3").loss.beta == 3.0
    assert composed("loss=dkd").loss.beta == 8.0  # the method's default outside the preset
    assert composed("experiment=cifar100_resnet32x4_resnet8x4", "loss=dkd").loss.beta == 8.0


def test_the_teacher_keeps_its_own_lr_when_the_student_takes_another():
    """As on the ShuffleNet/MobileNet pairs: the student at lr 0.01, its teacher trained at 0.05."""
    cfg = composed("experiment=cifar100_wrn_40_2_wrn_16_2", "optimizer.lr=0.01")
    assert cfg.optimizer.lr == 0.01 and cfg.teacher_training.optimizer.lr == 0.05


def test_the_command_line_shows_the_pairs_dkd_beta():
    """``python run.py --cfg job experiment=cifar100_wrn_40_2_wrn_16_2 loss=dkd`` prints beta 6 (issue 15)."""
    command = [sys.executable, "run.py", "--cfg", "job", "experiment=cifar100_wrn_40_2_wrn_16_2", "loss=dkd"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    loss = OmegaConf.create(out).loss
    assert loss.name == "dkd" and loss.beta == 6.0 and loss.alpha == 1.0 and loss.warmup == 20


# -- ImageNet (issue 23) ------------------------------------------------------------------------------------------

IMAGENET_PAIRS = {"imagenet_resnet34_resnet18": "r34_r18", "imagenet_resnet50_mobilenetv1": "r50_mv1"}
IMAGENET_ARCHS = {"imagenet_resnet34_resnet18": ("resnet34_imagenet", "resnet18_imagenet"),
                  "imagenet_resnet50_mobilenetv1": ("resnet50_imagenet", "mobilenetv1")}  # fmt: skip
IMAGENET_DKD_BETA = {"r34_r18": 0.5, "r50_mv1": 2.0}
IMAGENET_REVIEWKD_WEIGHT = {"r34_r18": 1.0, "r50_mv1": 8.0}


def _imagenet_rows(preset: str, short: str) -> list[Published]:
    kd, dkd = f"{MDISTILLER} configs/imagenet/{short}/kd.yaml", f"{MDISTILLER} configs/imagenet/{short}/dkd.yaml"
    at, crd = f"{MDISTILLER} configs/imagenet/{short}/at.yaml", f"{MDISTILLER} configs/imagenet/{short}/crd.yaml"
    review = f"{MDISTILLER} configs/imagenet/{short}/reviewkd.yaml"
    teacher, student = IMAGENET_ARCHS[preset]
    solver = [
        ("teacher.name", teacher, "DISTILLER.TEACHER"),
        ("student.name", student, "DISTILLER.STUDENT"),
        ("dataset.name", "imagenet", "DATASET.TYPE"),
        ("trainer.epochs", 100, "SOLVER.EPOCHS"),
        ("trainer.batch_size", 512, "SOLVER.BATCH_SIZE"),
        ("trainer.eval_batch_size", 128, "DATASET.TEST.BATCH_SIZE"),
        ("optimizer.lr", 0.2, "SOLVER.LR"),
        ("optimizer.momentum", 0.9, "SOLVER.MOMENTUM"),
        ("optimizer.weight_decay", 1.0e-4, "SOLVER.WEIGHT_DECAY"),
        ("scheduler.milestones", [0.3, 0.6, 0.9], "SOLVER.LR_DECAY_STAGES [30, 60, 90] of 100"),
        ("scheduler.gamma", 0.1, "SOLVER.LR_DECAY_RATE"),
    ]
    rows = [Published(preset, None, key, value, name, kd) for key, value, name in solver]
    rows += [
        Published(preset, "kd", "temperature", 1.0, "KD.TEMPERATURE", kd),
        Published(preset, "kd", "alpha", 0.5, "KD.LOSS.CE_WEIGHT 0.5, KD.LOSS.KD_WEIGHT 0.5", kd),
        Published(preset, "dkd", "temperature", 1.0, "DKD.T", dkd),
        Published(preset, "dkd", "beta", IMAGENET_DKD_BETA[short], "DKD.BETA", dkd),
        Published(preset, "dkd", "warmup", 1, "DKD.WARMUP", dkd),
        Published(preset, "dkd", "ce_weight", 1.0, "DKD.CE_WEIGHT", dkd),
        Published(preset, "dkd", "alpha", 1.0, "DKD.ALPHA (default)", MDISTILLER_CFG),
        Published(preset, "at", "at_weight", 1000.0, "AT.LOSS.FEAT_WEIGHT (default)", MDISTILLER_CFG),
        Published(preset, "at", "trainer.batch_size", 512, "SOLVER.BATCH_SIZE", at),
        Published(preset, "at", "optimizer.lr", 0.2, "SOLVER.LR", at),
        Published(preset, "crd", "trainer.batch_size", 256, "SOLVER.BATCH_SIZE", crd),
        Published(preset, "crd", "optimizer.lr", 0.1, "SOLVER.LR", crd),
        Published(preset, "reviewkd", "trainer.batch_size", 256, "SOLVER.BATCH_SIZE", review),
        Published(preset, "reviewkd", "optimizer.lr", 0.1, "SOLVER.LR", review),
        Published(preset, "reviewkd", "reviewkd_weight", IMAGENET_REVIEWKD_WEIGHT[short], "REVIEWKD_WEIGHT", review),
        Published(preset, "reviewkd", "warmup", 1, "REVIEWKD.WARMUP_EPOCHS", review),
        Published(preset, "reviewkd", "student_preact", True, "REVIEWKD.STU_PREACT", review),
    ]
    if short == "r50_mv1":
        ofd = f"{MDISTILLER} configs/imagenet/r50_mv1/ofd.yaml"
        rows += [
            Published(preset, "reviewkd", "max_mid_channels", 256, "REVIEWKD.MAX_MID_CHANNEL", review),
            Published(preset, "ofd", "feat_weight", 1.0e-4, "OFD.LOSS.FEAT_WEIGHT", ofd),
            Published(preset, "ofd", "trainer.batch_size", 128, "SOLVER.BATCH_SIZE", ofd),
            Published(preset, "ofd", "optimizer.lr", 0.05, "SOLVER.LR", ofd),
        ]
    return rows


IMAGENET_TABLE = [row for preset, short in IMAGENET_PAIRS.items() for row in _imagenet_rows(preset, short)]
TABLE.extend(IMAGENET_TABLE)

#: Published top-1 (%) on the ILSVRC2012 validation set, with the source of each number.
IMAGENET_ACCURACY = [
    ("imagenet_resnet34_resnet18", "teacher", 73.31, "pytorch/vision docs: resnet34 IMAGENET1K_V1 acc@1 73.314"),
    ("imagenet_resnet34_resnet18", "ce", 69.76, "pytorch/vision docs: resnet18 IMAGENET1K_V1 acc@1 69.758"),
    ("imagenet_resnet34_resnet18", "kd", 71.03, f"{MDISTILLER} README.md (ImageNet table)"),
    ("imagenet_resnet34_resnet18", "dkd", 71.70, f"{MDISTILLER} README.md (ImageNet table)"),
    ("imagenet_resnet34_resnet18", "kd", 71.37, "yoshitomo-matsubara/torchdistill README.md (ImageNet, KD)"),
    ("imagenet_resnet50_mobilenetv1", "teacher", 76.13, "pytorch/vision docs: resnet50 IMAGENET1K_V1 acc@1 76.130"),
    ("imagenet_resnet50_mobilenetv1", "ce", 68.87, f"{MDISTILLER} README.md (ImageNet table, student baseline)"),
    ("imagenet_resnet50_mobilenetv1", "kd", 70.50, f"{MDISTILLER} README.md (ImageNet table)"),
    ("imagenet_resnet50_mobilenetv1", "dkd", 72.05, f"{MDISTILLER} README.md (ImageNet table)"),
]


@pytest.mark.parametrize("preset", sorted(IMAGENET_PAIRS))
@pytest.mark.parametrize("method", [None, "kd", "dkd", "at", "crd", "reviewkd", "ofd"])
def test_every_imagenet_preset_composes_to_the_published_values(preset: str, method: str | None) -> None:
    cfg = composed(f"experiment={preset}", *([f"loss={method}"] if method else []))
    validate(cfg)
    for row in IMAGENET_TABLE:
        if (row.preset, row.method) == (preset, method):
            absolute = method is None or row.key.startswith(("trainer.", "optimizer."))
            path = row.key if absolute else f"loss.{row.key}"
            node = OmegaConf.select(cfg, path)
            got = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
            assert got == row.value, f"{path} = {got!r}, published {row.value!r} ({row.authors_key}: {row.source})"


def test_the_imagenet_table_has_a_source_per_row_and_the_headline_accuracies() -> None:
    presets = {p.stem for p in (CONF / "experiment").glob("imagenet_*.yaml")}
    assert presets == set(IMAGENET_PAIRS) == {row.preset for row in IMAGENET_TABLE}
    assert {preset for preset, *_ in IMAGENET_ACCURACY} == presets
    for *_, accuracy, source in IMAGENET_ACCURACY:
        assert 60 < accuracy < 80 and source.split()[0].count("/") == 1
    docs = (REPO / "docs" / "imagenet.md").read_text()
    for _, _, accuracy, _ in IMAGENET_ACCURACY:
        assert f"{accuracy:.2f}" in docs  # the docs' table shows every published number
