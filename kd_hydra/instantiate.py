"""``hydra.utils.instantiate`` for kd-hydra's config nodes: our own errors come out as themselves."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from kd_hydra.errors import KDHydraError


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
