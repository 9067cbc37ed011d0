"""Model zoo: CIFAR-style distillation architectures by name, any torchvision classifier, or a builder of your own.

Public API: :func:`build_model` (the Hydra ``_target_`` of ``conf/model``, the ``teacher`` and ``student`` options),
:func:`list_models` and :func:`count_parameters`. Every model maps NCHW float images to
``(N, num_classes)`` logits (no softmax). The zoo's modules register themselves and are found by walking
this package (:mod:`kd_hydra.models.registry`, where every name resolves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kd_hydra.errors import ConfigError

from .features import OVERRIDE_ATTRIBUTE, validate_feature_points
from .registry import build_zoo_model, list_models
from .torchvision_models import build_torchvision_model, list_torchvision_models

__all__ = ["build_model", "count_parameters", "list_models", "list_torchvision_models"]

SOURCES = ("torchvision", "zoo")


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    source: str = "zoo",
    weights: str | None = None,
    checkpoint: str | None = None,
    feature_points: Mapping[str, str] | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """Build a classifier mapping ``(N, in_channels, image_size, image_size)`` images to logits.

    ``source="zoo"`` builds :func:`list_models` archs, or the builder at import path ``name`` (``module.builder``,
    called as ``builder(num_classes=, in_channels=, image_size=, **arch_kwargs)``; ``arch_kwargs`` are the
    architecture's options, no weights);
    ``source="torchvision"`` calls ``torchvision.models.get_model`` (RGB only) and, with ``weights``,
    loads them and replaces the final classifier layer when ``num_classes`` differs from the
    pretrained head. ``checkpoint`` is ignored: the trainer loads teacher checkpoints itself.
    ``feature_points`` (``{name: module.path}``) overrides the model's feature points
    (:mod:`kd_hydra.models.features`). Bad names, sources, options, input sizes or feature-point
    paths raise :class:`~kd_hydra.errors.ConfigError`.
    """
    del checkpoint  # accepted so that a teacher config node can be passed as-is
    dataset_arguments = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    for argument, value in dataset_arguments.items():
        if value < 1:
            raise ValueError(f"{argument} must be >= 1, got {value}")
    if source == "zoo":
        if weights is not None:
            raise ConfigError("weights", f"zoo models have no pretrained weights, got '{weights}'; use weights: null")
        model = build_zoo_model(name, num_classes, in_channels, image_size, **arch_kwargs)
    elif source == "torchvision":
        model = build_torchvision_model(name, num_classes, in_channels, weights, **arch_kwargs)
    else:
        raise ConfigError("source", f"unknown model source '{source}'; choose one of: {', '.join(SOURCES)}")
    if feature_points is not None:
        setattr(model, OVERRIDE_ATTRIBUTE, validate_feature_points(model, feature_points))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements in ``model``, trainable or not."""
    return sum(parameter.numel() for parameter in model.parameters())
