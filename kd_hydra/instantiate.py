"""``hydra.utils.instantiate`` for kd-hydra's config nodes: our own errors come out as themselves; import paths."""

from __future__ import annotations

import importlib
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from kd_hydra.errors import ConfigError, KDHydraError


def build(node: Any, **kwargs: Any) -> Any:
    """Instantiate ``node``; a :class:`KDHydraError` raised inside is re-raised unwrapped (one-line report)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, KDHydraError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def import_object(path: str, key: str) -> Any:
    """The object at import path ``module.name`` (None when the module has no ``name``); a module that
    cannot be imported is a one-line :class:`ConfigError` naming ``key``."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ConfigError(key, f"must be an import path, module.name (got {path!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(key, f"cannot import {module_name} for {path} ({error})") from None
    return getattr(module, name, None)
