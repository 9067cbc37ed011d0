"""Name -> builder table of the model zoo; architectures add themselves with ``@register_model``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from kd_hydra.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
"""``builder(num_classes, in_channels, image_size, **options) -> nn.Module`` returning logits."""

_BuilderT = TypeVar("_BuilderT", bound=ModelBuilder)

# Arguments every builder takes from the dataset; anything else is an architecture option.
_DATASET_ARGUMENTS = ("num_classes", "in_channels", "image_size")

_ZOO: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[_BuilderT], _BuilderT]:
    """Decorator adding ``builder`` to the zoo under ``name``; a name can be registered only once."""

    def decorator(builder: _BuilderT) -> _BuilderT:
        if name in _ZOO:
            raise ValueError(f"model '{name}' is already registered")
        _ZOO[name] = builder
        return builder

    return decorator


def register_variants(builder: ModelBuilder, variants: Mapping[str, tuple[Any, ...]]) -> None:
    """Register each ``name: args`` of a family as ``builder(*args, num_classes, in_channels, image_size, ...)``.

    The variant's builder is ``functools.partial(builder, *args)``: its options are the family's own.
    """
    for name, args in variants.items():
        register_model(name)(functools.partial(builder, *args))


def list_models() -> list[str]:
    """Names of the zoo architectures, sorted."""
    return sorted(_ZOO)


def architecture_options(name: str) -> list[str]:
    """Keyword options that zoo architecture ``name`` accepts besides the dataset arguments."""
    parameters = inspect.signature(_get_builder(name)).parameters
    return [option for option in parameters if option not in _DATASET_ARGUMENTS]


def build_zoo_model(name: str, num_classes: int, in_channels: int, image_size: int, **options: Any) -> nn.Module:
    """Build zoo architecture ``name``; unknown names or options raise :class:`ConfigError`."""
    builder = _get_builder(name)
    allowed = architecture_options(name)
    for option in options:
        if option not in allowed:
            choices = ", ".join(allowed) if allowed else "none"
            raise ConfigError(option, f"'{name}' has no option '{option}'; its options are: {choices}")
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)


def _get_builder(name: str) -> ModelBuilder:
    try:
        return _ZOO[name]
    except KeyError:
        raise ConfigError("name", f"unknown architecture '{name}'; choose one of: {', '.join(list_models())}") from None
