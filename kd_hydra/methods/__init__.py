"""Distillation methods: ``loss=<name>`` picks ``conf/loss/<name>.yaml``, whose ``_target_`` names the class.

One source per method: the class (a :class:`~kd_hydra.methods.base.DistillMethod` subclass in one module)
declares its settings as typed keyword parameters of ``__init__`` without defaults; the YAML holds their
values (the authors' defaults, with the source in a comment). The keys and types of a ``loss`` node are
checked against the signature (:func:`validate_method_config`), so there is no schema to keep in step and
nothing to register: a class anywhere importable (a user's module on ``PYTHONPATH`` named by
``loss._target_`` in a YAML under ``--config-dir``) runs, validates and checkpoints like the built-ins,
which are found by walking this package (:func:`builtin_methods`).
"""

from __future__ import annotations

from .base import DistillMethod, FeatureRequest, FeatureShapes, LossOutput, MethodBatch
from .build import COMMON_KEYS, build_method, builtin_methods, method_class, validate_method_config

__all__ = [
    "COMMON_KEYS",
    "DistillMethod",
    "FeatureRequest",
    "FeatureShapes",
    "LossOutput",
    "MethodBatch",
    "build_method",
    "builtin_methods",
    "method_class",
    "validate_method_config",
]
