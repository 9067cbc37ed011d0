"""The ``teacher`` and ``student`` config groups, made from ``conf/model``: one file per architecture.

Every ``conf/model/<arch>.yaml`` is stored in Hydra's ConfigStore as the options ``teacher=<arch>``
(the model plus ``checkpoint: null``, external teacher weights) and ``student=<arch>`` (the model plus
``checkpoint: null``, weights for ``mode=eval`` to evaluate). So ``teacher=resnet56 student=resnet20`` and
``teacher.checkpoint=...`` work as group overrides while each architecture is configured once. A
``model/<arch>.yaml`` under ``--config-dir`` (your own architecture) becomes ``teacher=<arch>`` and
``student=<arch>`` the same way; a ``teacher/`` or ``student/`` file there still adds an option of its own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

MODEL_GROUP = "model"
PACKAGE_PREFIX = "pkg://"
ROLE_KEYS: dict[str, dict[str, Any]] = {"teacher": {"checkpoint": None}, "student": {"checkpoint": None}}
"""Group -> the keys its options add to the model config."""


def model_config_names(config_source: str) -> list[str]:
    """Architectures with a ``model/<arch>.yaml`` in ``config_source`` (a directory or ``pkg://package``), sorted;
    none when it has no ``model/`` folder."""
    if config_source.startswith(PACKAGE_PREFIX):
        folder: Any = resources.files(config_source.removeprefix(PACKAGE_PREFIX)) / MODEL_GROUP
    else:
        folder = Path(config_source) / MODEL_GROUP
    if not folder.is_dir():
        return []
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def role_config(group: str, arch: str) -> dict[str, Any]:
    """The ``group`` (teacher/student) option for ``arch``: ``model/<arch>`` at the group root plus the role keys."""
    return {"defaults": [f"/{MODEL_GROUP}/{arch}@_here_", "_self_"], **ROLE_KEYS[group]}


def register_model_groups(store: ConfigStore, *config_sources: str) -> None:
    """Store a ``teacher`` and a ``student`` option for every model config of ``config_sources``, and no other
    (the options of an earlier call's sources are dropped: a later session may have another ``--config-dir``)."""
    archs = sorted({arch for source in config_sources for arch in model_config_names(source)})
    for group in ROLE_KEYS:
        store.repo.pop(group, None)  # only this function stores into these groups
        for arch in archs:
            store.store(group=group, name=arch, node=role_config(group, arch))
