"""The choices of kd-hydra's enumerated settings, at the ground floor: every layer may import them."""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """What a run does: train a teacher, a labels-only student (baseline) or a distilled student, or evaluate
    ``teacher.checkpoint`` on the dataset without training (``eval``)."""

    teacher = "teacher"
    student = "student"
    distill = "distill"
    eval = "eval"


class Precision(str, Enum):
    """Numeric precision of forward passes; ``auto`` is bf16 on a GPU that has it, else fp32."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class CacheDtype(str, Enum):
    """Storage dtype of cached teacher logits."""

    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


class Resume(str, Enum):
    """Whether a run continues from the training state in its directory (``auto``) or starts over."""

    auto = "auto"
    never = "never"
