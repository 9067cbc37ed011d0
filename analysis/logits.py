"""A baseline student compared with its setup's teacher from their test logits (``schema.TEST_LOGITS_FILE``).

Distill runs measure their agreement with the teacher themselves (metrics.json); a baseline never sees a teacher,
so its top-1 agreement and KL(teacher || baseline) come from the logits that ``mode=student`` and ``mode=teacher``
runs keep: the same test split in the same order (equal ``data_digest``), float16 logits, computed here in float64
with the run's definitions (temperature 1, KL in nats, mean over images).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kd_hydra.records import schema


def read_test_logits(run_dir: str | Path) -> np.ndarray | None:
    """The ``(images, classes)`` test logits a run kept, as float64; None when absent or unreadable."""
    path = Path(run_dir) / schema.TEST_LOGITS_FILE
    try:
        logits = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        return None
    return logits.astype(np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def agreement_and_kl(student: np.ndarray, teacher: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement (%) of the two logit arrays and mean KL(teacher || student) per image in nats (T = 1)."""
    if student.shape != teacher.shape or not len(student):
        return math.nan, math.nan
    agreement = 100.0 * float(np.mean(student.argmax(axis=1) == teacher.argmax(axis=1)))
    teacher_log, student_log = log_softmax(teacher), log_softmax(student)
    kl = float(np.mean(np.sum(np.exp(teacher_log) * (teacher_log - student_log), axis=1)))
    return agreement, kl
