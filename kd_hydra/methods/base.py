"""The contract every distillation method follows (one module + one YAML per method).

A method is an ``nn.Module`` built from its ``loss`` node by :func:`kd_hydra.methods.build_method`. It says
what it needs from the teacher (logits, named feature points), owns its trainable parts (connectors,
embeddings, memory banks: ordinary submodules, so they follow the student to the device, into the
optimizer and into checkpoints), and turns one batch into a :class:`LossOutput`. The training loop knows
nothing else about it.

Its settings are the keyword-only parameters of ``__init__``, typed and without defaults: the values are
written once, in the method's YAML (``conf/loss/<name>.yaml``), and the signature gives the keys and their
types (checked, and converted to the annotated type, by :func:`kd_hydra.methods.build_method` before the
class is called). ``__init__`` keeps each setting as an attribute of the same name (``self.temperature =
temperature``), which :meth:`DistillMethod.extra_repr` shows. Every ``<name>_weight`` setting is a weight >= 0
(checked by the default :meth:`DistillMethod.validate_config`), and :meth:`DistillMethod.weighted_loss` sums
the parts, each times its weight, plus Hinton's added term where the ``loss`` node asks for it. Python-side
state beyond parameters and buffers goes through torch's ``get_extra_state``/``set_extra_state`` (it travels
inside ``state_dict``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from kd_hydra.errors import ConfigError
from kd_hydra.losses import soft_target_kl

from .checks import require_weights

#: Feature shapes from the probe forward, per feature point, without the batch dimension.
FeatureShapes = Mapping[str, tuple[int, ...]]

#: The history part of Hinton's term added to any method (weighed by ``loss.add_kd_weight``).
ADDED_KD_PART = "kd"

#: The ending of the settings that weigh a loss part (``ce_weight``, ``kd_weight``...): each a weight >= 0.
WEIGHT_SUFFIX = "_weight"


@dataclass(frozen=True)
class FeatureRequest:
    """Which feature points of each network a method reads (names from ``kd_hydra.models.features``)."""

    student: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.student or self.teacher)


@dataclass
class MethodBatch:
    """Everything a method may read for one training batch (features only where requested)."""

    student_logits: Tensor
    targets: Tensor
    sample_indices: Tensor
    teacher_logits: Tensor | None = None
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)
    strong_student_logits: Tensor | None = None  # on the strongly augmented view (methods that need it)
    strong_teacher_logits: Tensor | None = None


class LossOutput(NamedTuple):
    """The optimised loss and its unweighted parts by name (``ce`` first; the names become history columns)."""

    total: Tensor
    parts: dict[str, Tensor]


@dataclass(frozen=True)
class InitStage:
    """A method's initialization stage (RepDistiller's ``helper/pretrain.py``), as data the trainer runs before
    distillation: ``epochs`` passes with the student in eval mode and ``modules`` in train mode, an optimizer of
    ``optimizer.*`` over their parameters only at a constant ``lr`` (None: ``optimizer.lr``), minimising ``loss``."""

    epochs: int
    lr: float | None
    modules: tuple[nn.Module, ...]
    loss: Callable[[MethodBatch], Tensor]


class DistillMethod(nn.Module):
    """Base class of distillation methods: subclasses set ``parts`` and implement ``forward``.

    Class attributes describe the method to the trainer:

    - ``parts``: names of the loss parts ``forward`` returns, in order (history columns ``train_<part>``);
    - ``uses_teacher``: False only for plain cross-entropy (no teacher is built, loaded or run);
    - ``name``: the label in logs and metrics; ``loss.name`` when built from a config, else the module's name.

    Methods that read intermediate features override :meth:`feature_request`; they run the teacher
    live, while logit-only methods can read the soft-label cache. Hinton's term added to a method
    (``loss.add_kd_weight``/``loss.add_kd_temperature``) is one more part of :meth:`weighted_loss`.
    """

    name: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ("ce",)
    uses_teacher: ClassVar[bool] = True
    #: Whether student and teacher also run on a strongly augmented view of each batch (MLKD); the teacher
    #: then runs live, and the batch carries ``strong_student_logits``/``strong_teacher_logits``.
    needs_strong_view: ClassVar[bool] = False
    #: Whether the teacher's BatchNorms use each batch's statistics (OFD's reference runs its teacher in train mode).
    teacher_batch_statistics: ClassVar[bool] = False
    #: Whether the loss relates the samples of a batch (similarities, correlations, class statistics over the
    #: batch): with several workers it is computed on each worker's share of the batch, as the references compute
    #: it on each GPU's, unless ``trainer.gather_batch`` concatenates the workers' batches first.
    relates_samples: ClassVar[bool] = False
    #: The setting that weighs a part in :meth:`weighted_loss`, where it is not ``<part>_weight``.
    weight_keys: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__module__.rsplit(".", 1)[-1]

    def __init__(self) -> None:
        super().__init__()
        self.request = FeatureRequest()
        # Hinton's added term: none until build_method adds it from the loss node (add_hinton_term)
        self.add_kd_weight: float | None = None
        self.add_kd_temperature: float | None = None

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The method's own ``loss.*`` keys: the keyword parameters of ``__init__``, in order."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return tuple(
            p.name for p in parameters if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    def extra_repr(self) -> str:
        settings = [f"{key}={getattr(self, key, '?')}" for key in self.config_keys()]
        if self.add_kd_weight:
            settings += [f"add_kd_weight={self.add_kd_weight}", f"add_kd_temperature={self.add_kd_temperature}"]
        return ", ".join(settings)

    @classmethod
    def validate_config(cls, loss: Mapping[str, Any]) -> None:
        """Check the method's ``loss.*`` values (ranges, finiteness); raise ConfigError on the first bad one.

        Keys and types are already checked against the signature when this runs. This checks that every
        ``<name>_weight`` setting is a weight >= 0; methods with more to check call it first.
        """
        require_weights(loss, *(key for key in cls.config_keys() if key.endswith(WEIGHT_SUFFIX)))

    def add_hinton_term(self, weight: float, temperature: float) -> None:
        """Add ``weight * T^2 KL(softmax(t/T) || softmax(s/T))`` as part ``kd`` (RepDistiller's ``-a``); 0: none."""
        self.add_kd_weight = weight
        self.add_kd_temperature = temperature
        added = (ADDED_KD_PART,) if weight else ()
        self.parts = (*type(self).parts, *added)  # type: ignore[misc]  (an instance value)

    def weighted_loss(
        self, batch: MethodBatch, parts: dict[str, Tensor], factors: Mapping[str, float] | None = None
    ) -> LossOutput:
        """The parts (``ce`` first, then Hinton's added term if any) and their total ``sum(<part>_weight * part)``.

        ``factors`` scale a part's weight (a warm-up): ``(factor * <part>_weight) * part``.
        """
        if self.add_kd_weight:
            kd = soft_target_kl(batch.student_logits, batch.teacher_logits, self.add_kd_temperature)
            parts = {**parts, ADDED_KD_PART: kd}
        terms = []
        for name, value in parts.items():
            weight = getattr(self, self.weight_key(name))
            if factors and name in factors:
                weight = factors[name] * weight
            terms.append(weight * value)
        return LossOutput(total=sum(terms[1:], terms[0]), parts=parts)

    def weight_key(self, part: str) -> str:
        """The setting that weighs ``part``: ``weight_keys[part]``, ``add_kd_weight`` for the added term, else
        ``<part>_weight``."""
        if part == ADDED_KD_PART and part not in type(self).parts:
            return "add_kd_weight"
        return self.weight_keys.get(part, part + WEIGHT_SUFFIX)

    # -- what the trainer calls ------------------------------------------------------------------------

    def feature_request(self, student_points: Sequence[str], teacher_points: Sequence[str]) -> FeatureRequest:
        """The feature points to record, given the points each network offers (none by default)."""
        return FeatureRequest()

    def keep_request(self, student: Sequence[str], teacher: Sequence[str]) -> FeatureRequest:
        """Keep the points to read from each network (paired by position) as ``self.request``; return it."""
        self.request = FeatureRequest(student=tuple(student), teacher=tuple(teacher))
        return self.request

    def requested(
        self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The requested student features and the teacher's (detached), in the order of ``self.request``."""
        student = [student_features[p] for p in self.request.student]
        return student, [teacher_features[p].detach() for p in self.request.teacher]

    def requested_channels(self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes) -> tuple[list[int], ...]:
        """The channel counts (first dimension) of the requested points of each network, in request order."""
        student = [student_shapes[p][0] for p in self.request.student]
        return student, [teacher_shapes[p][0] for p in self.request.teacher]

    def require_equal_channels(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, problem: str, advice: str
    ) -> None:
        """ConfigError naming ``loss.name`` (``problem (student [..], teacher [..]); advice``) unless the requested
        points of both networks have the same channel counts, pair by pair."""
        student, teacher = self.requested_channels(student_shapes, teacher_shapes)
        if student != teacher:
            raise ConfigError("loss.name", f"{problem} (student {student}, teacher {teacher}); {advice}")

    @property
    def uses_features(self) -> bool:
        """Whether any feature point is read (then the teacher runs live, never from the cache)."""
        return type(self).feature_request is not DistillMethod.feature_request

    def setup(
        self, student_shapes: FeatureShapes, teacher_shapes: FeatureShapes, train_targets: Tensor, num_classes: int
    ) -> None:
        """Build trainable parts sized to the probed feature shapes (called once, before the optimizer).

        ``train_targets`` are the labels of the training split by sample index (CPU int64), for methods
        that keep per-sample state (CRD's memory bank and its negatives).
        """

    def setup_teacher(self, teacher: nn.Module) -> None:
        """Read what the method's parts need from the frozen teacher's weights (OFD: its BatchNorm statistics).

        Called once, after :meth:`setup` and before the optimizer is built; the method keeps no reference to it.
        """

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (1-based); for schedules such as DKD's warm-up."""

    def fit_warnings(self, epochs: int) -> list[str]:
        """``<loss key>: <what happens>`` for each setting that does not fit an ``epochs``-epoch run (after
        :meth:`setup`: DKD's warm-up longer than the run, CRD's clamped ``nce_k``); none by default."""
        return []

    def init_stage(self, student: nn.Module) -> InitStage | None:
        """The initialization stage to run before distillation (RepDistiller's ``init_epochs``), or None: none."""
        return None

    def forward(self, batch: MethodBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError
