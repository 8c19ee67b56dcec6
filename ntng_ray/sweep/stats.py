"""The statistics of the sweep report: mean ± sample std over seeds, Welch's t interval for the
difference to the baseline, and the verdict read off that interval.

Pure functions on lists of floats, so the report's figures can be checked against a hand
computation without MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from scipy import stats

CONFIDENCE = 0.95  # the report's level, for every interval it shows
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
INSUFFICIENT = "insufficient seeds"


class Summary(NamedTuple):
    mean: float
    std: float  # sample std (ddof=1); nan with fewer than two values
    n: int


class Difference(NamedTuple):
    """``method - baseline`` with its confidence interval and Welch-Satterthwaite dof."""

    diff: float
    low: float
    high: float
    dof: float


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation; nan where undefined (no values, or one for the std)."""
    n = len(values)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(mean, math.nan, n)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Summary(mean, math.sqrt(variance), n)


def welch_difference(
    method: Sequence[float], baseline: Sequence[float], level: float = 0.95
) -> Difference | None:
    """Welch's t interval for ``mean(method) - mean(baseline)`` at confidence ``level``.

    None when either side has fewer than two values: without a variance there is no interval.
    When both samples have zero spread the interval collapses to the difference itself (the
    Welch-Satterthwaite dof is then 0/0; ``n_method + n_baseline - 2`` is reported instead).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level!r}: allowed a probability strictly between 0 and 1")
    m, b = summarize(method), summarize(baseline)
    if m.n < 2 or b.n < 2:
        return None
    diff = m.mean - b.mean
    var_m, var_b = m.std**2 / m.n, b.std**2 / b.n
    se2 = var_m + var_b
    if se2 == 0.0:
        return Difference(diff, diff, diff, float(m.n + b.n - 2))
    dof = se2**2 / (var_m**2 / (m.n - 1) + var_b**2 / (b.n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * math.sqrt(se2)
    return Difference(diff, diff - half, diff + half, dof)


def verdict(difference: Difference | None, higher_is_better: bool) -> str:
    """Better or worse only when the interval excludes 0; losses: lower is better."""
    if difference is None:
        return INSUFFICIENT
    if difference.low > 0.0:
        return BETTER if higher_is_better else WORSE
    if difference.high < 0.0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE


def mean_half_width(values: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the t interval for the mean of ``values`` at confidence ``level``.

    nan with fewer than two values (no variance); 0 when all values are equal.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level!r}: allowed a probability strictly between 0 and 1")
    s = summarize(values)
    if s.n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, s.n - 1)) * s.std / math.sqrt(s.n)


def half_width(difference: Difference) -> float:
    """The larger distance from the difference to an end of its interval (they are equal for
    Welch's interval; kept general for intervals that are not symmetric)."""
    return max(difference.diff - difference.low, difference.high - difference.diff)
