"""Named feature points of a network, recorded with forward hooks (model code stays unchanged).

A feature point is a name mapped to a module path of ``model.named_modules()``; its recorded value
is that module's output. Names, in forward order: ``stem``, ``stage1``..``stageN`` (stage outputs),
each ``stageN`` preceded by ``stageN_preact`` where the model offers it (the stage output before its
final ReLU, as the reference suites' ``preact_feats``), and ``pre_logit`` (the pooled feature,
recorded flattened to ``(N, C)``). Zoo models declare their
points with a ``feature_points()`` method; torchvision models get defaults by module name, and a
model config's ``feature_points: {name: module.path}`` overrides both (attached by ``build_model``).

A model's *feature modules* (RepDistiller's ``get_feat_modules``) are the modules that compute its features, up to
the last stage: what a method's initialization stage trains. Zoo models declare them (``feature_modules()``);
other models get the top-level children up to the one holding the deepest ``stem``/``stageN`` point.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kd_hydra.errors import ConfigError

STEM = "stem"
PRE_LOGIT = "pre_logit"
STAGE_PREFIX = "stage"
PREACT_SUFFIX = "_preact"
STAGE_POINT = re.compile(rf"{STAGE_PREFIX}([1-9][0-9]*)")
PREACT_POINT = re.compile(rf"{STAGE_PREFIX}([1-9][0-9]*){PREACT_SUFFIX}")
POINT_NAME = re.compile(rf"{STEM}|{STAGE_PREFIX}[1-9][0-9]*(?:{PREACT_SUFFIX})?|{PRE_LOGIT}")
OVERRIDE_ATTRIBUTE = "kd_feature_points"  # where build_model attaches a config override
CONFIG_KEY = "feature_points"
#: Images of the probe forward passes that check a network's shapes before any training.
PROBE_BATCH = 2
RESNET_LAYER = re.compile(r"layer([1-9][0-9]*)")
SHOWN_MODULES = 12  # module paths listed in an error message

__all__ = [
    "FeatureRecorder",
    "feature_modules",
    "feature_points",
    "preact_batchnorms",
    "preact_points",
    "probe_feature_shapes",
    "stage_points",
    "unwrap",
    "validate_feature_points",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper holds (``_orig_mod``), or ``model`` itself."""
    return getattr(model, "_orig_mod", model)


def _point_order(name: str) -> tuple[int, int, int]:
    if name == STEM:
        return (0, 0, 0)
    if name == PRE_LOGIT:
        return (2, 0, 0)
    preact = PREACT_POINT.fullmatch(name)
    if preact is not None:
        return (1, int(preact.group(1)), 0)
    return (1, int(name[len(STAGE_PREFIX) :]), 1)


def stage_points(points: Iterable[str]) -> list[str]:
    """The ``stageN`` names among ``points`` (post-activation stage outputs), in the given order."""
    return [name for name in points if STAGE_POINT.fullmatch(name)]


def preact_points(points: Iterable[str]) -> list[str]:
    """The ``stageN_preact`` names among ``points`` (stage outputs before their last ReLU), in order."""
    return [name for name in points if PREACT_POINT.fullmatch(name)]


def validate_feature_points(model: nn.Module, points: Mapping[str, str]) -> dict[str, str]:
    """``points`` in forward order, checked: names ``stem|stageN|stageN_preact|pre_logit``, paths naming submodules.

    A bad name or an unknown module path raises :class:`ConfigError` naming the key.
    """
    inner = unwrap(model)
    module_paths = {path for path, _ in inner.named_modules() if path}
    checked: dict[str, str] = {}
    for name, path in points.items():
        name, path = str(name), str(path)
        if not POINT_NAME.fullmatch(name):
            raise ConfigError(
                f"{CONFIG_KEY}.{name}",
                f"not a feature point name; use {STEM}, {STAGE_PREFIX}1..N, "
                f"{STAGE_PREFIX}1..N{PREACT_SUFFIX} or {PRE_LOGIT}",
            )
        if path not in module_paths:
            shown = ", ".join(list(dict.fromkeys(p.split(".")[0] for p in sorted(module_paths)))[:SHOWN_MODULES])
            raise ConfigError(
                f"{CONFIG_KEY}.{name}",
                f"{type(inner).__name__} has no module '{path}'; give a path of model.named_modules() "
                f"(top-level modules: {shown})",
            )
        checked[name] = path
    return dict(sorted(checked.items(), key=lambda item: _point_order(item[0])))


def preact_batchnorms(model: nn.Module) -> dict[str, str]:
    """``stageN_preact`` -> module path of the BatchNorm right before that stage's last ReLU (the
    reference suites' ``get_bn_before_relu``, whose statistics set OFD's margin); empty when the
    model declares none (ShuffleNets, as in the references; torchvision models)."""
    declared = getattr(unwrap(model), "preact_batchnorms", None)
    return dict(declared()) if callable(declared) else {}


def feature_points(model: nn.Module) -> dict[str, str]:
    """Feature point name -> module path of ``model`` (or of the model it compiles), in forward order.

    The config override (``feature_points`` key) wins; then the zoo model's own ``feature_points()``;
    then torchvision defaults by module name (empty for unknown layouts).
    """
    inner = unwrap(model)
    override = getattr(inner, OVERRIDE_ATTRIBUTE, None)
    if override is not None:
        return dict(override)
    declared = getattr(inner, "feature_points", None)
    if callable(declared):
        return dict(declared())
    return default_feature_points(inner)


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that compute its features (RepDistiller's ``get_feat_modules``), in forward order.

    A zoo model's own ``feature_modules()`` (module paths) wins; otherwise the top-level children up to the one
    holding the deepest ``stem``/``stageN`` point (torchvision ResNets: ``conv1`` .. ``layer4``; VGG, MobileNet,
    EfficientNet: ``features``), leaving the pooling and classifier head out. A model without such points is a
    :class:`ConfigError` naming ``feature_points``.
    """
    inner = unwrap(model)
    declared = getattr(inner, "feature_modules", None)
    paths = list(declared()) if callable(declared) else _leading_children(inner)
    return [inner.get_submodule(path) for path in paths]


def _leading_children(model: nn.Module) -> list[str]:
    points = feature_points(model)
    tops = {path.split(".")[0] for name, path in points.items() if name == STEM or STAGE_POINT.fullmatch(name)}
    children = [name for name, _ in model.named_children()]
    if not tops & set(children):
        raise ConfigError(
            CONFIG_KEY,
            f"{type(model).__name__} has no {STEM} or {STAGE_PREFIX}N feature point, so its feature modules are "
            "unknown (set feature_points: {name: module.path} in the model config)",
        )
    return children[: max(children.index(top) for top in tops if top in children) + 1]


def default_feature_points(model: nn.Module) -> dict[str, str]:
    """Points of common torchvision layouts: ResNet-like ``layer1..N`` (+ ``maxpool`` stem), RegNet
    ``stem`` + ``trunk_output``, or a ``features`` Sequential (VGG-like flat ones staged at their
    max-pools, others at each child); ``avgpool`` gives ``pre_logit``."""
    children = dict(model.named_children())
    points: dict[str, str] = {}
    layers = sorted((int(match.group(1)), name) for name in children if (match := RESNET_LAYER.fullmatch(name)))
    features = children.get("features")
    trunk = children.get("trunk_output")
    if layers:
        stem = next((name for name in ("maxpool", "relu") if name in children), None)
        if stem is not None:
            points[STEM] = stem
        points.update({f"{STAGE_PREFIX}{index}": name for index, (_, name) in enumerate(layers, 1)})
    elif isinstance(trunk, nn.Sequential) and "stem" in children:
        points[STEM] = "stem"
        points.update(_stages("trunk_output", [name for name, _ in trunk.named_children()]))
    elif isinstance(features, nn.Sequential) and len(features) > 0:
        named = list(features.named_children())
        pools = [name for name, module in named if isinstance(module, nn.MaxPool2d)]
        flat = all(not list(module.children()) for _, module in named)
        if flat and pools:
            relu = next((name for name, module in named if isinstance(module, nn.ReLU)), named[0][0])
            points[STEM] = f"features.{relu}"
            points.update(_stages("features", pools))
        else:
            points[STEM] = f"features.{named[0][0]}"
            points.update(_stages("features", [name for name, _ in named[1:]]))
    if "avgpool" in children:
        points[PRE_LOGIT] = "avgpool"
    return points


def block_stage_points(stem: str, stages: Sequence[tuple[str, nn.Sequential]], pre_logit: str) -> dict[str, str]:
    """Points of a net whose stages are Sequentials of blocks ending in a ``preact`` marker: ``stem``, per
    ``(path, stage)`` its last block's marker (``stageN_preact``) and its output (``stageN``), ``pre_logit``."""
    points = {STEM: stem}
    for number, (path, stage) in enumerate(stages, 1):
        points[f"{STAGE_PREFIX}{number}{PREACT_SUFFIX}"] = f"{path}.{len(stage) - 1}.preact"
        points[f"{STAGE_PREFIX}{number}"] = path
    return {**points, PRE_LOGIT: pre_logit}


def _stages(parent: str, names: Sequence[str]) -> dict[str, str]:
    return {f"{STAGE_PREFIX}{index}": f"{parent}.{name}" for index, name in enumerate(names, 1)}


class FeatureRecorder:
    """Forward hooks recording the named feature points of ``model`` on every forward pass.

    Hooks are registered once (on the module a ``torch.compile`` wrapper holds) and stay until
    :meth:`remove`; the model keeps returning logits. ``features[name]`` is the latest output of that
    point (``pre_logit`` flattened to ``(N, C)``), in the autocast dtype when autocast is on.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        inner = unwrap(model)
        points = feature_points(inner)
        self.names = tuple(names)
        missing = [name for name in self.names if name not in points]
        if missing:
            offered = ", ".join(points) if points else "none"
            raise ConfigError(
                CONFIG_KEY,
                f"{type(inner).__name__} has no feature point(s) {', '.join(missing)}; it offers: {offered} "
                f"(set feature_points: {{name: module.path}} in the model config)",
            )
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = [
            inner.get_submodule(points[name]).register_forward_hook(self._hook(name)) for name in self.names
        ]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        flatten = name == PRE_LOGIT

        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                kind = type(output).__name__
                raise TypeError(f"feature point '{name}' ({type(module).__name__}) returned a {kind}, not a tensor")
            self.features[name] = torch.flatten(output, 1) if flatten else output

        return record

    def clear(self) -> None:
        """Drop the recorded tensors (and the graph they keep alive)."""
        self.features.clear()

    def remove(self) -> None:
        """Remove the hooks and drop the recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()


def probe_feature_shapes(
    model: nn.Module, names: Iterable[str], image_shape: Sequence[int]
) -> dict[str, tuple[int, ...]]:
    """Shapes (without the batch dimension) of feature points ``names`` for images of ``image_shape``
    ``(C, H, W)``: one no-grad eval-mode forward of a batch of zeros; the train/eval mode is restored."""
    inner = unwrap(model)  # probing the wrapped module avoids an extra compilation
    parameter = next(inner.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    was_training = inner.training
    recorder = FeatureRecorder(inner, names)
    try:
        inner.eval()
        with torch.no_grad():
            inner(torch.zeros(PROBE_BATCH, *image_shape, device=device, dtype=dtype))
        not_reached = [name for name in recorder.names if name not in recorder.features]
        if not_reached:
            raise ValueError(f"feature point(s) {', '.join(not_reached)} not reached by the forward pass")
        return {name: tuple(recorder.features[name].shape[1:]) for name in recorder.names}
    finally:
        recorder.remove()
        inner.train(was_training)
