"""kd-hydra's methods as the configs build them, for tests: values from ``conf/loss/<name>.yaml`` plus overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kd_hydra.config import LOSS_COMMON_DEFAULTS
from kd_hydra.methods import DistillMethod, build_method

LOSS_DIR = Path(__file__).resolve().parents[1] / "conf" / "loss"


def loss_node(method: str | type[DistillMethod], **overrides: Any) -> dict[str, Any]:
    """The composed ``loss`` node of a built-in method (by YAML name or class), with ``overrides`` applied."""
    name = method if isinstance(method, str) else method.name
    values = OmegaConf.to_container(OmegaConf.load(LOSS_DIR / f"{name}.yaml"))
    return {**LOSS_COMMON_DEFAULTS, **values, **overrides}


def method_from_yaml(method: str | type[DistillMethod], **overrides: Any) -> DistillMethod:
    """The method ``loss=<name>`` builds, with ``overrides`` of its ``loss.*`` keys."""
    return build_method(loss_node(method, **overrides))
