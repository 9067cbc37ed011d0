"""The feature points of every zoo architecture, with their shapes, from the models themselves."""

from __future__ import annotations

from .reference_page import text

#: Images the shapes are probed with (CIFAR-sized RGB, 100 classes).
PROBE_IMAGES = (3, 32, 32)
PROBE_CLASSES = 100


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def feature_points_table() -> str:
    """One row per zoo model: each feature point with the shape it has on 3x32x32 images."""
    import torch

    from kd_hydra.errors import KDHydraError
    from kd_hydra.models import build_model, count_parameters, list_models
    from kd_hydra.models.features import feature_points, probe_feature_shapes

    torch.manual_seed(0)
    rows = [
        "| `teacher=` / `student=` | parameters | feature points (C x H x W on 3x32x32 images) |",
        "| --- | --- | --- |",
    ]
    for name in list_models():
        try:
            model = build_model(name, PROBE_CLASSES, PROBE_IMAGES[0], PROBE_IMAGES[1])
        except (KDHydraError, ValueError) as error:
            rows.append(f"| `{name}` |  | not on 32x32 images: {text(str(error))} |")
            continue
        points = list(feature_points(model))
        shapes = probe_feature_shapes(model, points, PROBE_IMAGES)
        listed = ", ".join(f"`{point}` {_shape(shapes[point])}" for point in points)
        rows.append(f"| `{name}` | {count_parameters(model):,} | {listed} |")
    return "\n".join(rows) + "\n"
