"""Classification models of ``torchvision.models``, built by name, optionally ImageNet-pretrained."""

from __future__ import annotations

from typing import Any

from torch import nn

from kd_hydra.errors import ConfigError

RGB_CHANNELS = 3
# Inception-style nets return (logits, aux logits) in training mode unless the aux heads are off.
MODELS_WITH_AUX_LOGITS = frozenset({"googlenet", "inception_v3"})


def list_torchvision_models() -> list[str]:
    """Names of the torchvision classification models, sorted."""
    import torchvision  # imported on use: it costs seconds at start-up and most runs never need it

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision_model(
    name: str, num_classes: int, in_channels: int, weights: str | None = None, **options: Any
) -> nn.Module:
    """``torchvision.models.get_model(name, ...)`` with a ``num_classes``-way head.

    With ``weights`` (e.g. ``"DEFAULT"``, ``"IMAGENET1K_V1"``) the pretrained model is loaded first;
    if ``num_classes`` differs from its class count, its final classifier layer is replaced by a
    freshly initialised one. googlenet / inception_v3 default to ``aux_logits=False`` so that they
    return plain logits in training mode too.
    """
    known = list_torchvision_models()
    if name not in known:
        raise ConfigError("name", f"unknown torchvision model '{name}'; choose one of: {', '.join(known)}")
    if in_channels != RGB_CHANNELS:
        raise ConfigError(
            "name",
            f"torchvision model '{name}' takes {RGB_CHANNELS}-channel RGB images, dataset has "
            f"{in_channels} channel(s); use a zoo architecture (source: zoo) instead",
        )
    from torchvision.models import get_model

    if name in MODELS_WITH_AUX_LOGITS:
        options.setdefault("aux_logits", False)
    if weights is None:
        return get_model(name, weights=None, num_classes=num_classes, **options)

    resolved = _resolve_weights(name, weights)
    model = get_model(name, weights=resolved, **options)
    pretrained_classes = len(resolved.meta["categories"])
    if num_classes != pretrained_classes:
        replace_classifier(model, pretrained_classes, num_classes)
    return model


def _resolve_weights(name: str, weights: str) -> Any:
    """The ``WeightsEnum`` member named ``weights`` (bare, ``"DEFAULT"`` or ``"Enum.MEMBER"``)."""
    from torchvision.models import get_model_weights

    weights_enum = get_model_weights(name)
    try:
        return weights_enum.verify(weights)
    except (KeyError, ValueError, TypeError):
        choices = ", ".join(["DEFAULT", *(member.name for member in weights_enum)])
        message = f"unknown weights '{weights}' for {name}; choose one of: {choices}"
        raise ConfigError("weights", message) from None


def replace_classifier(model: nn.Module, old_classes: int, num_classes: int) -> None:
    """Swap, in place, the last Linear (or 1x1 Conv2d) producing ``old_classes`` outputs for a new one."""
    head_name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == old_classes:
            head_name = module_name
        elif isinstance(module, nn.Conv2d) and module.out_channels == old_classes:
            head_name = module_name
    if head_name is None:
        raise ValueError(f"{type(model).__name__} has no layer producing {old_classes} class scores")
    parent_name, _, attribute = head_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old_head = getattr(parent, attribute)
    setattr(parent, attribute, _new_head(old_head, num_classes))


def _new_head(old_head: nn.Linear | nn.Conv2d, num_classes: int) -> nn.Module:
    """A freshly initialised layer like ``old_head`` but with ``num_classes`` outputs."""
    has_bias = old_head.bias is not None
    if isinstance(old_head, nn.Linear):
        return nn.Linear(old_head.in_features, num_classes, bias=has_bias)
    return nn.Conv2d(
        old_head.in_channels,
        num_classes,
        kernel_size=old_head.kernel_size,
        stride=old_head.stride,
        padding=old_head.padding,
        bias=has_bias,
    )
