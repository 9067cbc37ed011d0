"""From a ``loss`` node to a method: resolve ``loss._target_``, check the node against the class, build it.

The class named by ``_target_`` may live anywhere importable (kd-hydra's ``kd_hydra.methods.<module>`` or
a user's module on ``PYTHONPATH``); it must subclass :class:`~kd_hydra.methods.base.DistillMethod`.
Besides the class's own keys (its ``__init__`` parameters) a ``loss`` node holds the keys every method
shares, :data:`COMMON_KEYS`. The values are checked against the signature's annotations and converted to them
(an integer given for a ``float`` setting becomes a float) before the class is called.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from omegaconf import OmegaConf

from kd_hydra.errors import ConfigError

from .base import ADDED_KD_PART, DistillMethod
from .checks import require_finite
from .contract import check_parts

#: Keys of every ``loss`` node besides the method's own: its class, its label, and Hinton's added term
#: (the defaults of the last two: the ``loss`` node of ``conf/config.yaml``, under every ``loss=<name>``).
COMMON_KEYS = ("_target_", "name", "add_kd_weight", "add_kd_temperature")

_PLAIN_TYPES: dict[Any, type] = {float: float, int: int, bool: bool, str: str}


def _plain(loss: Any) -> dict[str, Any]:
    if OmegaConf.is_config(loss):
        return OmegaConf.to_container(loss, resolve=True)  # type: ignore[return-value]
    return dict(loss)


def method_class(loss: Mapping[str, Any]) -> type[DistillMethod]:
    """The class named by ``loss._target_``; ConfigError naming ``loss._target_`` when it is not one."""
    target = loss.get("_target_")
    if not isinstance(target, str) or "." not in target:
        raise ConfigError("loss._target_", f"must name a method class as module.Class (got {target!r})")
    module_name, _, class_name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError("loss._target_", f"cannot import {module_name} for {target} ({error})") from None
    except Exception as error:  # the module itself fails: a SyntaxError, or whatever its top level raised
        raise ConfigError(
            "loss._target_", f"importing {module_name} for {target} fails: {type(error).__name__}: {error}"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError("loss._target_", f"no such class: {module_name} has no {class_name} (in {target})")
    if not (isinstance(cls, type) and issubclass(cls, DistillMethod)):
        raise ConfigError(
            "loss._target_", f"{target} is not a subclass of kd_hydra.methods.DistillMethod (got {cls!r})"
        )
    return cls


def setting_types(cls: type[DistillMethod]) -> dict[str, Any]:
    """The evaluated annotations of the class's settings; ConfigError naming ``loss._target_`` and the
    parameter whose annotation does not evaluate here (a name imported only under TYPE_CHECKING)."""
    init = cls.__init__
    try:
        return typing.get_type_hints(init)
    except Exception as error:  # NameError, TypeError, SyntaxError...: whatever evaluating an annotation raised
        failing = _unevaluable_parameter(init)
        raise ConfigError(
            "loss._target_",
            f"the annotation of {cls.__module__}.{cls.__qualname__}'s setting {failing} does not evaluate "
            f"({type(error).__name__}: {error}); annotate it with a type importable at run time",
        ) from None


def _unevaluable_parameter(init: Any) -> str:
    """The first parameter of ``init`` whose annotation alone does not evaluate in its module."""
    for key, annotation in init.__annotations__.items():
        single = types.SimpleNamespace(__annotations__={key: annotation})
        try:
            typing.get_type_hints(single, globalns=init.__globals__)
        except Exception:
            return key
    return "(unknown)"


def converted(value: Any, hint: Any) -> Any:
    """``value`` as its annotation's plain type (``float``, ``int``, ``bool``, ``str``, or one of them or None:
    None stays); values of other annotations unchanged."""
    if value is None:
        return None
    if hint in _PLAIN_TYPES:
        return _PLAIN_TYPES[hint](value)
    if typing.get_origin(hint) in (Union, types.UnionType):
        plain = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(plain) == 1 and plain[0] in _PLAIN_TYPES:
            return _PLAIN_TYPES[plain[0]](value)
    return value


def _describe(hint: Any) -> str:
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if _is_sequence(origin):
        return "a list"
    return getattr(hint, "__name__", str(hint))


def _is_sequence(origin: Any) -> bool:
    return origin in (list, tuple) or (origin is not None and getattr(origin, "__name__", "") == "Sequence")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a plain config value fits a signature annotation (unknown annotations accept anything)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if _is_sequence(origin):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value if args)
    return True


def check_keys_and_types(cls: type[DistillMethod], loss: Mapping[str, Any]) -> None:
    """``loss`` holds exactly the class's keys (plus :data:`COMMON_KEYS`), each of its annotated type."""
    keys = cls.config_keys()
    unknown = [key for key in loss if key not in keys and key not in COMMON_KEYS]
    if unknown:
        raise ConfigError(
            f"loss.{unknown[0]}", f"is not a key of {loss['_target_']}; its keys: {', '.join(keys) or '(none)'}"
        )
    missing = [key for key in keys if key not in loss]
    if missing:
        raise ConfigError(f"loss.{missing[0]}", f"missing: {loss['_target_']} needs a value for it in its YAML")
    hints = setting_types(cls)
    for key in keys:
        hint = hints.get(key, inspect.Parameter.empty)
        if not _matches(loss[key], hint):
            raise ConfigError(f"loss.{key}", f"must be {_describe(hint)} (got {loss[key]!r})")
    name = loss.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("loss.name", f"must be the method's label, a non-empty string (got {name!r})")


def _check_added_kd(cls: type[DistillMethod], loss: Mapping[str, Any]) -> None:
    missing = [key for key in ("add_kd_weight", "add_kd_temperature") if key not in loss]
    if missing:
        raise ConfigError(
            f"loss.{missing[0]}", "missing: every loss node has it (the loss node of conf/config.yaml gives it)"
        )
    if require_finite(loss, "add_kd_weight", minimum=0.0) and ADDED_KD_PART in cls.parts:
        raise ConfigError(
            "loss.add_kd_weight", f"{loss['name']} already has Hinton's term (part '{ADDED_KD_PART}'); keep it 0"
        )
    if loss["add_kd_weight"] and not cls.uses_teacher:
        raise ConfigError("loss.add_kd_weight", f"{loss['name']} runs no teacher; keep it 0")
    require_finite(loss, "add_kd_temperature", minimum=0.0, strict_minimum=True)


def validate_method_config(loss: Any) -> type[DistillMethod]:
    """Check a ``loss`` node (class, keys, types, then the class's own ``validate_config``); return the class."""
    values = _plain(loss)
    cls = method_class(values)
    check_parts(cls)
    check_keys_and_types(cls, values)
    _check_added_kd(cls, values)
    cls.validate_config(values)
    return cls


def build_method(loss: Any) -> DistillMethod:
    """The method of a ``loss`` node, checked by :func:`validate_method_config`, its settings converted to their
    annotated types, with its name and Hinton's added term."""
    values = _plain(loss)
    cls = validate_method_config(values)
    hints = setting_types(cls)
    method = cls(**{key: converted(values[key], hints.get(key)) for key in cls.config_keys()})
    method.name = values["name"]  # type: ignore[misc]  (the instance's label)
    method.add_hinton_term(float(values["add_kd_weight"]), float(values["add_kd_temperature"]))
    return method


def builtin_methods() -> dict[str, type[DistillMethod]]:
    """kd-hydra's own methods by module name, found by walking this package (no import list)."""
    package = importlib.import_module(__package__)
    found: dict[str, type[DistillMethod]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, DistillMethod)
                and value.forward is not DistillMethod.forward  # not a base such as points.PooledFeatureMethod
                and value.__module__ == module.__name__
            ):
                found[info.name] = value
    return found
