"""One page per distillation method (each option of the ``loss`` group), from its docstrings and its config.

A method added to ``kd_hydra/methods`` with its ``conf/loss/<name>.yaml`` gets its page without any
edit here: the equation and source come from the docstrings, the defaults from ``loss=<name>``, what it
reads from the teacher from the method itself, asked on an example pair of architectures.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from .configs import Composer, Group, KeyInfo
from .reference_page import OPTIONS_PREFIX, key_table, text

#: The pair the "what it reads" section asks each method about (CIFAR-100-shaped images).
EXAMPLE_TEACHER, EXAMPLE_STUDENT = "resnet32x4", "resnet8x4"
EXAMPLE_IMAGES = (3, 32, 32)
EXAMPLE_CLASSES = 100
EXAMPLE_TRAIN_SAMPLES = 50_000


@dataclass(frozen=True)
class Reads:
    """What a method reads on the example pair: feature points per side (empty: logits only) and their shapes."""

    student: dict[str, tuple[int, ...]]
    teacher: dict[str, tuple[int, ...]]
    error: str = ""
    trainable_parameters: int | None = None


@dataclass(frozen=True)
class MethodDoc:
    name: str
    class_path: str
    module_doc: str
    class_doc: str
    parts: tuple[str, ...]
    uses_teacher: bool
    keys: tuple[KeyInfo, ...]
    reads: Reads | None
    strong_view: bool = False  # also reads a strongly augmented view of each batch (MLKD): never from the cache


def rst_to_markdown(docstring: str) -> str:
    """Docstring markup as Markdown: ``x`` -> `x`, :func:`~a.b` -> `b`, :class:`a.b` -> `a.b`."""
    out = re.sub(r":\w+:`~[\w.]*?\.?([\w]+)`", r"`\1`", docstring)
    out = re.sub(r":\w+:`([^`]+)`", r"`\1`", out)
    return out.replace("``", "`")


def _example_models() -> tuple[object, object]:
    from kd_hydra.models import build_model

    size = EXAMPLE_IMAGES[1]
    teacher = build_model(EXAMPLE_TEACHER, EXAMPLE_CLASSES, EXAMPLE_IMAGES[0], size)
    student = build_model(EXAMPLE_STUDENT, EXAMPLE_CLASSES, EXAMPLE_IMAGES[0], size)
    return teacher, student


def _reads(method: object, teacher: object, student: object) -> Reads:
    """Ask the method which feature points it reads on the example pair, probe their shapes, build its parts."""
    import torch

    from kd_hydra.errors import KDHydraError
    from kd_hydra.models.features import feature_points, probe_feature_shapes

    if not getattr(method, "uses_features", False):
        return Reads({}, {})
    try:
        request = method.feature_request(list(feature_points(student)), list(feature_points(teacher)))
    except KDHydraError as error:
        return Reads({}, {}, error=str(error))
    student_shapes = probe_feature_shapes(student, request.student, EXAMPLE_IMAGES)
    teacher_shapes = probe_feature_shapes(teacher, request.teacher, EXAMPLE_IMAGES)
    trainable = None
    try:
        if hasattr(method, "setup_teacher"):
            method.setup_teacher(teacher)
        targets = torch.arange(EXAMPLE_TRAIN_SAMPLES) % EXAMPLE_CLASSES
        method.setup(student_shapes, teacher_shapes, targets, EXAMPLE_CLASSES)
        trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    except (TypeError, AttributeError):  # a setup contract other than today's: leave the count out
        trainable = None
    return Reads(student_shapes, teacher_shapes, trainable_parameters=trainable)


def build_method(node: DictConfig) -> object:
    """The method of a ``loss`` node, as training builds it (``kd_hydra.methods.build_method`` where it exists)."""
    from hydra.utils import instantiate

    import kd_hydra.methods as methods

    builder = getattr(methods, "build_method", None)
    return builder(node) if builder is not None else instantiate(node)


def describe_methods(comp: Composer, groups: Sequence[Group]) -> list[MethodDoc]:
    """Every option of the ``loss`` group (each names its class in ``_target_``), documented from the code.

    ``groups``: from :func:`~kd_docs.configs.describe_groups`; a method's defaults are its ``loss`` option's keys.
    """
    import logging

    from hydra.utils import get_class

    teacher, student = _example_models()
    options = [option for group in groups if group.name == "loss" for option in group.options if option.node]
    docs = []
    package_logger = logging.getLogger("kd_hydra")
    level = package_logger.level
    package_logger.setLevel(logging.WARNING)  # quiet while methods are probed; restored below
    try:
        for option in options:
            cls = get_class(option.node._target_)
            uses_teacher = bool(getattr(cls, "uses_teacher", True))
            reads = _reads(build_method(option.node), teacher, student) if uses_teacher else None
            module = sys.modules[cls.__module__]
            docs.append(
                MethodDoc(
                    name=option.name,
                    class_path=f"{cls.__module__}.{cls.__qualname__}",
                    module_doc=inspect.cleandoc(module.__doc__ or ""),
                    class_doc=inspect.cleandoc(cls.__doc__ or ""),
                    parts=tuple(getattr(cls, "parts", ())),
                    uses_teacher=uses_teacher,
                    keys=option.keys,
                    reads=reads,
                    strong_view=bool(getattr(cls, "needs_strong_view", False)),
                )
            )
    finally:
        package_logger.setLevel(level)
    return docs


def reads_summary(doc: MethodDoc) -> str:
    if not doc.uses_teacher:
        return "nothing (no teacher)"
    if doc.reads is None or (not doc.reads.student and not doc.reads.teacher and not doc.reads.error):
        if doc.strong_view:
            return "logits of the batch and of its strong view (live teacher)"
        return "logits (soft-label cache)"
    points = sorted(set(doc.reads.student) | set(doc.reads.teacher))
    return "features " + ", ".join(points) + " (live teacher)" if points else "features (live teacher)"


def _shape_rows(shapes: dict[str, tuple[int, ...]], side: str) -> list[str]:
    return [f"| {side} | `{point}` | {' x '.join(map(str, shape))} |" for point, shape in shapes.items()]


def method_page(doc: MethodDoc) -> str:
    title_line, _, rest = doc.module_doc.partition("\n")
    lines = [f"# loss={doc.name}", "", rst_to_markdown(title_line), ""]
    if rest.strip():
        lines += [rst_to_markdown(rest.strip()), ""]
    lines += [
        f"Class `{doc.class_path}`: {rst_to_markdown(doc.class_doc)}",
        "",
        f"Source: `{doc.class_path.rsplit('.', 1)[0].replace('.', '/')}.py`, config `conf/loss/{doc.name}.yaml`.",
        "",
        "## Use",
        "",
        "```bash",
        f"python run.py loss={doc.name}" + ("" if doc.uses_teacher else " mode=student"),
        "```",
        "",
        "## Defaults",
        "",
        OPTIONS_PREFIX + f"`loss={doc.name}`",
        "",
    ]
    lines += key_table(doc.keys)
    history = ", ".join(f"`train_{part}`" for part in doc.parts)
    lines += ["", "## Loss parts", "", f"History columns (unweighted parts): {history}.", ""]
    lines += ["## What it reads from the teacher", ""]
    if not doc.uses_teacher:
        lines += ["Nothing: no teacher is built, loaded or run (teachers and baseline students train with it).", ""]
    elif doc.strong_view and (doc.reads is None or not (doc.reads.student or doc.reads.teacher)):
        lines += [
            "The teacher's logits of each batch and of a strongly augmented view of it, drawn per batch, so the",
            "teacher runs live on every batch (never from the soft-label cache).",
            "",
        ]
    elif doc.reads is None or not (doc.reads.student or doc.reads.teacher or doc.reads.error):
        lines += [
            "The teacher's logits only, so a distill run reads them from the soft-label cache when it is on",
            "(every job of a grid with the same seed shares them).",
            "",
        ]
    else:
        pair = f"`teacher={EXAMPLE_TEACHER} student={EXAMPLE_STUDENT}` on 3x32x32 images, {EXAMPLE_CLASSES} classes"
        lines += [
            "Intermediate features, recorded with forward hooks, so the teacher runs live on every batch",
            f"(never from the cache). Asked on {pair} (computed when this page was built):",
            "",
        ]
        if doc.reads.error:
            lines += [f"That pair is refused: {text(doc.reads.error)}", ""]
        else:
            lines += ["| network | feature point | shape (C x H x W) |", "| --- | --- | --- |"]
            lines += _shape_rows(doc.reads.student, "student") + _shape_rows(doc.reads.teacher, "teacher")
            lines.append("")
            if doc.reads.trainable_parameters is not None:
                count = f"{doc.reads.trainable_parameters:,}"
                lines += [f"Trainable parameters of the method itself on that pair: {count}.", ""]
    return "\n".join(lines) + "\n"


def methods_index(docs: list[MethodDoc]) -> str:
    lines = [
        "# Methods",
        "",
        "`loss=<name>` picks a method: one YAML in `conf/loss/` whose `_target_` names its class (one module",
        "in `kd_hydra/methods/`, or your own). This list and every method page are generated from the code",
        "when the site is built. The default method is `kd`.",
        "",
        "| `loss=` | method | loss parts | reads from the teacher |",
        "| --- | --- | --- | --- |",
    ]
    for doc in docs:
        title = rst_to_markdown(doc.module_doc.partition("\n")[0].partition(": ")[0].rstrip("."))
        title = text(title) if "|" in title or "<" in title else title
        parts = ", ".join(f"`{part}`" for part in doc.parts)
        lines.append(f"| [`{doc.name}`]({doc.name}.md) | {title} | {parts} | {text(reads_summary(doc))} |")
    lines += ["", "Every method's total includes its cross-entropy term on the labels (`ce`)."]
    return "\n".join(lines) + "\n"
