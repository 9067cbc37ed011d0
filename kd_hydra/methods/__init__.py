"""Distillation methods by name: ``loss=<name>`` picks ``conf/loss/<name>.yaml`` and this registry's class.

Adding a method is one module here (a :class:`~kd_hydra.methods.base.DistillMethod` subclass with a
``@register_method`` decorator and its structured-config dataclass) and one YAML in ``conf/loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from kd_hydra.errors import ConfigError

from .base import DistillMethod, FeatureRequest, LossOutput, MethodBatch

_MethodT = TypeVar("_MethodT", bound=type[DistillMethod])

#: name -> (method class, structured-config dataclass for ``loss/<name>_schema``)
_METHODS: dict[str, tuple[type[DistillMethod], type]] = {}


def register_method(config: type) -> Callable[[_MethodT], _MethodT]:
    """Class decorator: register a method under its ``name`` with its structured-config dataclass."""

    def decorator(cls: _MethodT) -> _MethodT:
        if not cls.name or cls.name in _METHODS:
            raise ValueError(f"method name {cls.name!r} is empty or already registered")
        _METHODS[cls.name] = (cls, config)
        return cls

    return decorator


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type[DistillMethod]:
    """The class of method ``name``; an unknown name is a ConfigError naming ``loss.name``."""
    try:
        return _METHODS[name][0]
    except KeyError:
        raise ConfigError("loss.name", f"unknown method '{name}'; choose one of: {', '.join(method_names())}") from None


def method_schemas() -> dict[str, type]:
    """name -> structured-config dataclass, for Hydra's ConfigStore."""
    return {name: config for name, (_, config) in _METHODS.items()}


# Importing the method modules registers them.
from . import ab, at, ce, crd, dist, dkd, fitnet, fsp, ft, kd, ofd  # noqa: E402,F401

__all__ = [
    "DistillMethod",
    "FeatureRequest",
    "LossOutput",
    "MethodBatch",
    "method_class",
    "method_names",
    "method_schemas",
    "register_method",
]
