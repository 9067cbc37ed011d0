"""The statistics the report's claims rest on: Student-t intervals, paired gains, which settings the data tell apart.

Rule (stated in every report): a mean over seeds carries its 95% t-interval ``mean ± t_{0.975,n-1} * s / sqrt(n)``;
two settings are *distinguishable* when their 95% intervals do not overlap (no interval for n < 2: never
distinguishable); a best setting is named only when it is distinguishable from every other one. The seeds
needed to tell two settings apart, if their spreads and difference stay as observed, are the smallest n with
``t_{0.975,n-1} * (s_a + s_b) / sqrt(n) < |mean_a - mean_b|`` (both intervals shrink below half the gap).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (used only without scipy).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
#: t_{0.975, df} beyond the table (the normal quantile; the table's last entry is within 4% of it).
_Z975 = 1.96
#: Seed counts above this are reported as "more than" it.
MAX_SEEDS = 1000

RULE_TEXT = (
    "Statistics: mean over seeds ± the half-width of its 95% Student-t interval, t(0.975, n−1)·s/√n (none for "
    "n = 1). Two settings are distinguishable when their 95% intervals do not overlap; a best setting is named "
    "only when it is distinguishable from every other one. Gains are paired: per seed, the distilled student "
    "minus the baseline student of the same seed, data and recipe, then mean ± 95% t-interval of those "
    "differences. Seeds needed: the smallest n with t(0.975, n−1)·(s_a + s_b)/√n < |mean_a − mean_b|, "
    "if the spreads and the difference stay as observed."
)


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (NaN for dof < 1)."""
    if dof < 1:
        return math.nan
    try:
        from scipy.stats import t
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return _T975[dof - 1] if dof <= len(_T975) else _Z975
    return float(t.ppf(0.975, dof))


def ci95_half_width(std: float, n: int) -> float:
    """Half-width ``t_{0.975,n-1} * std / sqrt(n)`` of the 95% CI of a mean; NaN for n < 2."""
    if n < 2 or pd.isna(std):
        return math.nan
    return t_quantile_975(int(n) - 1) * float(std) / math.sqrt(n)


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values, their standard deviation (ddof=1; NaN for n < 2) and the 95% t half-width."""

    mean: float
    std: float
    n: int
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def has_width(self) -> bool:
        """True when the interval exists (n >= 2, finite spread)."""
        return self.n >= 2 and math.isfinite(self.half_width)


def interval(values: Iterable[object]) -> Interval:
    """The :class:`Interval` of the numeric, present ``values`` (text and missing values left out)."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float).dropna()
    n = len(numbers)
    mean = float(numbers.mean()) if n else math.nan
    std = float(numbers.std()) if n > 1 else math.nan
    return Interval(mean, std, n, ci95_half_width(std, n))


def distinguishable(a: Interval, b: Interval) -> bool:
    """True when both intervals exist and do not overlap."""
    return a.has_width and b.has_width and (a.low > b.high or b.low > a.high)


def seeds_needed(a: Interval, b: Interval) -> float:
    """Seeds per setting after which the intervals of ``a`` and ``b`` would stop overlapping at their observed
    spreads and difference: the smallest n >= 2 with ``t_{0.975,n-1} (s_a + s_b) / sqrt(n) < |mean_a - mean_b|``.

    NaN when a spread is unknown (fewer than 2 seeds); ``inf`` for equal means or more than :data:`MAX_SEEDS`.
    """
    if not (a.n >= 2 and b.n >= 2) or math.isnan(a.std) or math.isnan(b.std):
        return math.nan
    return _smallest_n(a.std + b.std, abs(a.mean - b.mean))


def seeds_to_exclude_zero(gain: Interval) -> float:
    """Seeds after which the 95% interval of a paired ``gain`` would exclude 0 at its observed mean and spread:
    the smallest n >= 2 with ``t_{0.975,n-1} s / sqrt(n) < |mean|`` (NaN / inf as :func:`seeds_needed`)."""
    if gain.n < 2 or math.isnan(gain.std):
        return math.nan
    return _smallest_n(gain.std, abs(gain.mean))


def _smallest_n(spread: float, gap: float) -> float:
    if gap <= 0:
        return math.inf
    for n in range(2, MAX_SEEDS + 1):
        if t_quantile_975(n - 1) * spread / math.sqrt(n) < gap:
            return float(n)
    return math.inf


def seeds_text(needed: float) -> str:
    """``"3"``, ``"more than 1000"`` or ``"unknown (fewer than 2 seeds)"``."""
    if math.isnan(needed):
        return "unknown (fewer than 2 seeds)"
    return f"more than {MAX_SEEDS}" if math.isinf(needed) else str(int(needed))


def format_interval(value: Interval, digits: int = 2, signed: bool = False) -> str:
    """``"88.40 ± 0.52 (n=3)"`` (``+`` sign with ``signed``); no ± for n < 2, a dash without values."""
    if value.n == 0 or math.isnan(value.mean):
        return "—"
    sign = "+" if signed else ""
    spread = f" ± {value.half_width:.{digits}f}" if value.has_width else ""
    return f"{value.mean:{sign}.{digits}f}{spread} (n={value.n})"


@dataclass(frozen=True)
class Claim:
    """What the data say about the highest of several means (:func:`compare_to_top`).

    ``top``: the labels with the highest mean (several: a tie); ``overlapping``: the other labels whose interval
    overlaps the top's; ``apart``: those distinguishable from it; ``runner_up``: the highest-mean overlapping label;
    ``seeds``: :func:`seeds_needed` between the top and the runner-up (NaN without one).
    """

    top: tuple[str, ...]
    overlapping: tuple[str, ...]
    apart: tuple[str, ...]
    runner_up: str | None
    seeds: float
    n: tuple[int, ...]

    @property
    def best(self) -> str | None:
        """The one label the data support as best: a single top distinguishable from every other; else None."""
        return self.top[0] if len(self.top) == 1 and self.apart and not self.overlapping else None


def compare_to_top(items: Iterable[tuple[str, Interval]], tie_tolerance: float = 1e-9) -> Claim:
    """Compare the item with the highest mean (missing means lowest) with every other (see the module's rule)."""
    items = [(label, value) for label, value in items if not math.isnan(value.mean)]
    if not items:
        return Claim((), (), (), None, math.nan, ())
    highest = max(value.mean for _, value in items)
    top = [(label, value) for label, value in items if abs(value.mean - highest) <= tie_tolerance]
    others = sorted((item for item in items if item not in top), key=lambda item: -item[1].mean)
    reference = top[0][1]
    overlapping = [(label, value) for label, value in others if not distinguishable(reference, value)]
    apart = tuple(label for label, value in others if distinguishable(reference, value))
    runner_up = overlapping[0] if overlapping else None
    seeds = seeds_needed(reference, runner_up[1]) if runner_up else math.nan
    counts = tuple(sorted({value.n for _, value in items}))
    top_labels, overlapping_labels = tuple(label for label, _ in top), tuple(label for label, _ in overlapping)
    return Claim(top_labels, overlapping_labels, apart, runner_up[0] if runner_up else None, seeds, counts)
