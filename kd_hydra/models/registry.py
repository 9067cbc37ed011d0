"""Name -> builder: the one place architecture names resolve (``source: zoo`` of a model config).

A name is either a zoo architecture (``@register_model`` in a module of this package; the modules are
found by walking the package, no import list) or the import path ``module.builder`` of a builder of
your own, e.g. ``my_models.tiny_mlp`` (a function or an ``nn.Module`` class on ``PYTHONPATH``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from kd_hydra.errors import ConfigError
from kd_hydra.instantiate import import_object

ModelBuilder = Callable[..., nn.Module]
"""``builder(num_classes, in_channels, image_size, **options) -> nn.Module`` returning logits."""

_BuilderT = TypeVar("_BuilderT", bound=ModelBuilder)

# Arguments every builder takes from the dataset; anything else is an architecture option.
_DATASET_ARGUMENTS = ("num_classes", "in_channels", "image_size")
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)

_ZOO: dict[str, ModelBuilder] = {}
_PACKAGE = __name__.rpartition(".")[0]
_walked = False


def register_model(name: str) -> Callable[[_BuilderT], _BuilderT]:
    """Decorator adding ``builder`` to the zoo under ``name``; a name can be registered only once."""

    def decorator(builder: _BuilderT) -> _BuilderT:
        if name in _ZOO:
            raise ValueError(f"model '{name}' is already registered")
        if "." in name:
            raise ValueError(f"model name '{name}' has a dot; dotted names are import paths of builders")
        _ZOO[name] = builder
        return builder

    return decorator


def register_variants(builder: ModelBuilder, variants: Mapping[str, tuple[Any, ...]]) -> None:
    """Register each ``name: args`` of a family as ``builder(*args, num_classes, in_channels, image_size, ...)``.

    The variant's builder is ``functools.partial(builder, *args)``: its options are the family's own.
    """
    for name, args in variants.items():
        register_model(name)(functools.partial(builder, *args))


def _zoo() -> dict[str, ModelBuilder]:
    """The zoo, after importing every module of this package once (importing one registers its models)."""
    global _walked
    if not _walked:
        package = importlib.import_module(_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{_PACKAGE}.{info.name}")
        _walked = True
    return _ZOO


def list_models() -> list[str]:
    """Names of the zoo architectures, sorted."""
    return sorted(_zoo())


def architecture_options(name: str) -> list[str]:
    """Keyword options that architecture ``name`` accepts besides the dataset arguments."""
    return _options(_get_builder(name))[0]


def _options(builder: ModelBuilder) -> tuple[list[str], bool]:
    """``builder``'s named options besides the dataset arguments, and whether it takes any keyword (``**kwargs``)."""
    parameters = inspect.signature(builder).parameters.values()
    named = [p.name for p in parameters if p.name not in _DATASET_ARGUMENTS and p.kind not in _VARIADIC]
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def build_zoo_model(name: str, num_classes: int, in_channels: int, image_size: int, **options: Any) -> nn.Module:
    """Build architecture ``name`` (zoo name or ``module.builder``); bad names or options raise :class:`ConfigError`."""
    builder = _get_builder(name)
    allowed, takes_any = _options(builder)
    for option in options:
        if option not in allowed and not takes_any:
            choices = ", ".join(allowed) if allowed else "none"
            raise ConfigError(option, f"'{name}' has no option '{option}'; its options are: {choices}")
    model = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError("name", f"{name} returned a {type(model).__name__}; a builder must return an nn.Module")
    return model


def _get_builder(name: str) -> ModelBuilder:
    zoo = _zoo()
    if name in zoo:
        return zoo[name]
    if "." in name:
        return _imported_builder(name)
    raise ConfigError(
        "name",
        f"unknown architecture '{name}'; choose one of: {', '.join(sorted(zoo))} "
        "(or module.builder, the import path of a builder of your own)",
    )


def _imported_builder(path: str) -> ModelBuilder:
    """The callable at import path ``module.attribute``, checked to take the dataset arguments."""
    builder = import_object(path, "name")
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        raise ConfigError("name", f"{path} is not a model builder (got {builder!r})") from None
    missing = [argument for argument in _DATASET_ARGUMENTS if argument not in parameters]
    if missing and not _options(builder)[1]:
        wanted, lacking = ", ".join(_DATASET_ARGUMENTS), ", ".join(missing)
        raise ConfigError("name", f"{path} must take the keyword arguments {wanted} (it lacks {lacking})")
    return builder
