"""A method's settings: each assigned by its own ``__init__``, checked and converted from the signature by
``build_method``, and the keys every method shares given once, by ``conf/config.yaml``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from method_helpers import common_loss_keys, loss_node, method_from_yaml, unassigned_reads, unkept_settings

from kd_hydra.config.compose import compose, hydra_session
from kd_hydra.errors import ConfigError
from kd_hydra.losses import cross_entropy
from kd_hydra.methods import DistillMethod, LossOutput, MethodBatch, build_method, builtin_methods

BUILTIN = builtin_methods()


class ReadsUnassigned(DistillMethod):
    """A method whose ``forward`` reads a setting its ``__init__`` never assigns: what the checks must catch."""

    def __init__(self, *, ce_weight: float, temperature: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight

    def forward(self, batch: MethodBatch) -> LossOutput:
        ce = cross_entropy(batch.student_logits / self.temperature, batch.targets)
        return self.weighted_loss(batch, {"ce": ce})


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_method_reads_only_what_it_assigns(name):
    assert unassigned_reads(BUILTIN[name]) == set()
    assert unkept_settings(method_from_yaml(name)) == []


def test_the_checks_catch_a_method_that_reads_an_unassigned_setting():
    assert unassigned_reads(ReadsUnassigned) == {"temperature"}
    node = {**common_loss_keys(), "_target_": f"{__name__}.ReadsUnassigned", "name": "r", "ce_weight": 1.0}
    method = build_method({**node, "temperature": 2.0})
    assert unkept_settings(method) == ["temperature"]
    batch = MethodBatch(torch.randn(4, 3), torch.arange(4) % 3, torch.arange(4), torch.randn(4, 3))
    with pytest.raises(AttributeError, match="temperature"):
        method(batch)


def test_settings_arrive_converted_to_their_annotated_types():
    dkd = method_from_yaml("dkd", temperature=2, ce_weight=1, warmup=3)
    assert type(dkd.temperature) is float and type(dkd.ce_weight) is float and type(dkd.warmup) is int
    ab = method_from_yaml("ab", init_lr=1, margin=1)
    assert type(ab.init_lr) is float and type(ab.margin) is float
    assert method_from_yaml("ab").init_lr is None
    added = method_from_yaml("dkd", add_kd_weight=1, add_kd_temperature=2)
    assert type(added.add_kd_weight) is float and type(added.add_kd_temperature) is float


UNEVALUABLE = """
from __future__ import annotations

from typing import TYPE_CHECKING

from kd_hydra.methods import DistillMethod

if TYPE_CHECKING:
    from decimal import Decimal


class Unevaluable(DistillMethod):
    def __init__(self, *, ce_weight: float, scale: Decimal) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.scale = scale
"""


def test_an_annotation_that_does_not_evaluate_is_one_line_naming_the_target_and_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "unevaluable_method.py").write_text(UNEVALUABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unevaluable_method", raising=False)
    node = {**common_loss_keys(), "_target_": "unevaluable_method.Unevaluable", "name": "u", "ce_weight": 1.0}
    with pytest.raises(ConfigError) as error:
        build_method({**node, "scale": 2.0})
    assert error.value.key == "loss._target_" and "scale" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("key", ["add_kd_weight", "add_kd_temperature"])
def test_a_loss_node_without_a_shared_key_is_refused(key):
    node = loss_node("dkd")
    del node[key]
    with pytest.raises(ConfigError) as error:
        build_method(node)
    assert error.value.key == f"loss.{key}"


USER_YAML = "_target_: user_logits.Plain\nname: plain\nce_weight: 1.0\n"
USER_MODULE = """
from kd_hydra.losses import cross_entropy
from kd_hydra.methods import DistillMethod


class Plain(DistillMethod):
    def __init__(self, *, ce_weight: float) -> None:
        super().__init__()
        self.ce_weight = ce_weight

    def forward(self, batch):
        return self.weighted_loss(batch, {"ce": cross_entropy(batch.student_logits, batch.targets)})
"""


def test_the_shared_keys_come_from_conf_config_yaml_for_builtin_and_user_methods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "conf" / "loss").mkdir(parents=True)
    (tmp_path / "conf" / "loss" / "plain.yaml").write_text(USER_YAML)
    (tmp_path / "user_logits.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_logits", raising=False)
    shared = common_loss_keys()
    assert set(shared) == {"add_kd_weight", "add_kd_temperature"}
    with hydra_session(tmp_path / "conf") as hydra:
        for loss in ("dkd", "ce", "plain"):
            node = compose(hydra, [f"loss={loss}"]).loss
            assert {key: node[key] for key in shared} == shared, loss
        node = compose(hydra, ["loss=plain", "loss.add_kd_weight=0.5", "loss.add_kd_temperature=2"]).loss
    method = build_method(node)
    assert method.parts == ("ce", "kd") and (method.add_kd_weight, method.add_kd_temperature) == (0.5, 2.0)
    batch = MethodBatch(torch.randn(4, 3), torch.arange(4) % 3, torch.arange(4), torch.randn(4, 3))
    out = method(batch)
    assert list(out.parts) == ["ce", "kd"]
    torch.testing.assert_close(out.total, out.parts["ce"] + 0.5 * out.parts["kd"])
