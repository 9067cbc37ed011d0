"""A user's method outside the package: the README's "Add your own method" example, run as a user would."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
import torch
from method_helpers import common_loss_keys, unassigned_reads, unkept_settings
from omegaconf import OmegaConf

from conftest import REPO, TINY, Workspace, read_metrics
from kd_hydra.errors import ConfigError
from kd_hydra.methods import MethodBatch, build_method, validate_method_config


def readme_example() -> tuple[str, str]:
    """The module and the YAML of the README's section "Add your own method", as written there."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Add your own method", 1)[1].split("\n### ", 1)[0]
    (module,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (yaml,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return module, yaml


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``my_methods.py`` and ``my_conf/loss/logit_mse.yaml`` from the README, importable as on ``PYTHONPATH=.``."""
    module, yaml = readme_example()
    (tmp_path / "my_methods.py").write_text(module)
    (tmp_path / "my_conf" / "loss").mkdir(parents=True)
    (tmp_path / "my_conf" / "loss" / "logit_mse.yaml").write_text(yaml)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_methods", raising=False)
    return tmp_path


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_readme_example_runs_validates_and_reports_like_a_built_in(user_dir: Path, workspace: Workspace):
    config_dir = str(user_dir / "my_conf")
    workspace.env["PYTHONPATH"] = f"{user_dir}:{REPO}"
    run_dir, _ = workspace.single("user", "--config-dir", config_dir, *TINY, "loss=logit_mse")
    metrics = read_metrics(run_dir)
    assert metrics["method"] == "logit_mse" and metrics["settings"]["loss.mse_weight"] == 0.1
    assert all(metrics["settings"][f"loss.{key}"] == value for key, value in common_loss_keys().items())
    rows = history(run_dir)
    assert len(rows) == 2 and all(float(row["train_mse"]) > 0 for row in rows)
    total = [float(r["train_loss"]) for r in rows]
    parts = [float(r["train_ce"]) + 0.1 * float(r["train_mse"]) for r in rows]
    assert total == pytest.approx(parts, rel=1e-5)

    _, bad = workspace.single(
        "bad", "--config-dir", config_dir, *TINY, "loss=logit_mse", "loss.mse_weight=-1", expect=2
    )
    assert "loss.mse_weight" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    _, typo = workspace.single(
        "typo", "--config-dir", config_dir, *TINY, "loss=logit_mse", "+loss.mse_wieght=1", expect=2
    )
    assert "loss.mse_wieght" in typo.stderr and "mse_weight" in typo.stderr


def test_the_readme_example_assigns_what_it_reads_and_takes_the_added_term(user_dir: Path):
    import my_methods

    assert unassigned_reads(my_methods.LogitMatching) == set()
    node = {**common_loss_keys(), **OmegaConf.to_container(OmegaConf.load(user_dir / "my_conf/loss/logit_mse.yaml"))}
    assert unkept_settings(build_method(node)) == []
    method = build_method({**node, "add_kd_weight": 0.5})
    batch = MethodBatch(torch.randn(4, 3), torch.arange(4) % 3, torch.arange(4), torch.randn(4, 3))
    out = method(batch)
    assert list(out.parts) == list(method.parts) == ["ce", "mse", "kd"]
    parts = out.parts["ce"] + 0.1 * out.parts["mse"] + 0.5 * out.parts["kd"]
    torch.testing.assert_close(out.total, parts)


@pytest.mark.parametrize(
    "target,message",
    [("no_such_module.Method", "cannot import no_such_module"), ("collections.OrderedDict", "not a subclass")],
)
def test_a_target_that_is_not_a_method_is_one_line_naming_the_key(workspace: Workspace, target: str, message: str):
    _, process = workspace.single("bad", *TINY, f"loss._target_={target}", expect=2)
    (line,) = process.stderr.strip().splitlines()
    assert "loss._target_" in line and message in line


USER_METHOD_WITH_STATE = '''
import torch
from kd_hydra.losses import cross_entropy
from kd_hydra.methods import DistillMethod, LossOutput


class LearnedScale(DistillMethod):
    """CE on logits times a learned per-class scale, plus a counter kept with torch's extra state."""

    def __init__(self, *, num_classes: int, tag: str | None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.tag = tag
        self.scale = torch.nn.Parameter(torch.ones(num_classes))
        self.batches = 0

    def get_extra_state(self):
        return {"batches": self.batches}

    def set_extra_state(self, state):
        self.batches = state["batches"]

    def forward(self, batch):
        self.batches += 1
        ce = cross_entropy(batch.student_logits * self.scale, batch.targets)
        return LossOutput(ce, {"ce": ce})
'''


def test_a_user_method_with_parts_and_extra_state_checkpoints_and_checks_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Workspace
):
    (tmp_path / "user_state.py").write_text(USER_METHOD_WITH_STATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    loss = {"_target_": "user_state.LearnedScale", "name": "scaled", "num_classes": 10, "tag": None}
    loss.update(common_loss_keys())
    method = build_method(loss)
    assert method.name == "scaled" and "num_classes=10, tag=None" in repr(method)
    import user_state

    assert unassigned_reads(user_state.LearnedScale) == set() and unkept_settings(method) == []
    with pytest.raises(ConfigError, match="loss.num_classes: must be an integer"):
        validate_method_config({**loss, "num_classes": "ten"})
    with pytest.raises(ConfigError, match="loss.tag: must be a string or null"):
        validate_method_config({**loss, "tag": 3})
    with pytest.raises(ConfigError, match="loss.num_classes: missing"):
        validate_method_config({k: v for k, v in loss.items() if k != "num_classes"})

    conf = tmp_path / "conf" / "loss"
    conf.mkdir(parents=True)
    conf.joinpath("scaled.yaml").write_text(
        "_target_: user_state.LearnedScale\nname: scaled\nnum_classes: 10\ntag: null\n"
    )
    run_dir, _ = workspace.single("scaled", "--config-dir", str(tmp_path / "conf"), *TINY, "loss=scaled")
    saved = torch.load(run_dir / "model.pt", weights_only=True)["method"]
    assert saved["name"] == "scaled" and saved["state_dict"]["scale"].shape == (10,)
    assert not torch.equal(saved["state_dict"]["scale"], torch.ones(10))  # trained with the student
    batches_per_epoch = 256 // 64
    assert saved["state_dict"]["_extra_state"] == {"batches": 2 * batches_per_epoch}


def test_loss_options_are_the_yaml_files_only(workspace: Workspace):
    """No ``*_schema`` entry is listed or selectable: the loss group holds exactly conf/loss/*.yaml."""
    help_text = workspace.run("--help").stdout
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("loss: ")) + 1
    block = []  # the options are listed on the indented lines under the group's line
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line.strip())
    listed = " ".join(block).split(", ")
    assert listed == sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))
    assert "_schema" not in help_text
    _, process = workspace.single("schema", *TINY, "loss=kd_schema", expect=2)
    assert "kd_schema" in process.stderr and "_schema," not in process.stderr
