"""Statistics of the framework benchmark: paired per-repetition differences and their spread.

Every repetition runs each configuration once, interleaved, so a configuration's added
cost in repetition r is its figure minus (a)'s figure in the same repetition; drifts of
the shared machine's load that are slower than one repetition cancel in that difference.
Over the repetitions we report the median difference, its quartiles and min-max, and a
distribution-free confidence interval for the median (order statistics of the sign
test: [x(k), x(n+1-k)] with the largest k whose coverage is still >= 95 %; below six
repetitions no such k exists and the interval is min-max with its exact, lower coverage).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95


def median_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(low, high, coverage) of the order-statistic confidence interval for the median."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")

    def coverage(k: int) -> float:  # P(x(k) <= median <= x(n+1-k)) for any continuous law
        below: float = sum(math.comb(n, i) for i in range(k)) / 2**n
        return 1.0 - 2.0 * below

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= CONFIDENCE:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


@dataclass(frozen=True)
class Spread:
    """A figure over repetitions: median, quartiles, min-max and the median's interval."""

    n: int
    median: float
    q1: float
    q3: float
    low: float
    high: float
    ci_low: float
    ci_high: float
    coverage: float

    @property
    def ci_width(self) -> float:
        return self.ci_high - self.ci_low

    @property
    def resolved(self) -> bool:
        """The spread (the median's interval) is smaller than the effect (the median)."""
        return self.n >= 2 and self.ci_width < abs(self.median)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "resolved": self.resolved}


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    ci_low, ci_high, coverage = median_interval(ordered)
    return Spread(
        n=len(ordered),
        median=statistics.median(ordered),
        q1=q1,
        q3=q3,
        low=ordered[0],
        high=ordered[-1],
        ci_low=ci_low,
        ci_high=ci_high,
        coverage=coverage,
    )


def by_repetition(runs: Sequence[dict[str, Any]], field: str) -> dict[int, float]:
    return {r["repetition"]: float(r[field]) for r in runs if "error" not in r}


def paired(
    runs: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], field: str
) -> list[float]:
    """`field` of each run minus the base's in the same repetition (pairs with both)."""
    mine = by_repetition(runs, field)
    theirs = by_repetition(base, field)
    return [mine[rep] - theirs[rep] for rep in sorted(mine) if rep in theirs]


def ratio_text(theirs: Spread | None, ours: Spread | None) -> tuple[str, float | None]:
    """How many times (b)'s added cost theirs is: the ratio of medians where ours is
    resolved and positive, else a lower bound against ours' interval's upper end."""
    if theirs is None or ours is None:
        return "n/a", None
    if theirs.median <= 0:
        return "theirs ≤ 0 (noise)", None
    if ours.resolved and ours.median > 0:
        ratio = theirs.median / ours.median
        return times(ratio), ratio
    if ours.ci_high > 0:
        bound = theirs.median / ours.ci_high
        return f"≥ {times(bound)}", bound
    return "(b) ≤ 0 (noise)", None


def times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if abs(ratio) >= 100 else f"{ratio:,.1f}x"
