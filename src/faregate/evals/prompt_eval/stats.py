"""Honest statistics for eval results: intervals for one model, paired tests between two.

Pass/fail scores: the Wilson interval (the plain normal interval misbehaves near 0% and 100%
and at the small n of a typical eval) and McNemar's exact test, which looks only at the items
where the two models disagree. Graded scores: a t interval for the mean, and the Wilcoxon
signed-rank test (no normality assumption) beside the paired t-test. Both kinds also get a
percentile bootstrap interval of the mean paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(slots=True, frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(slots=True, frozen=True)
class TestResult:
    test: str
    statistic: float
    p_value: float


@dataclass(slots=True, frozen=True)
class Comparison:
    """Model a minus model b over the items both answered."""

    a: str
    b: str
    n: int
    tests: tuple[TestResult, ...]
    difference: Interval  # mean of a - b, with its bootstrap interval
    # Pass/fail only: items only a passed, only b passed.
    only_a: int | None = None
    only_b: int | None = None

    @property
    def p_value(self) -> float:
        """The first (primary) test's p-value."""
        return self.tests[0].p_value if self.tests else 1.0

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def verdict(self) -> str:
        if self.n == 0:
            return f"{self.a} vs {self.b}: no item answered by both; nothing to compare."
        diff = self.difference
        tests = ", ".join(f"{t.test} p={t.p_value:.3g}" for t in self.tests)
        span = f"difference {diff.estimate:+.3f} (95% CI {diff.low:+.3f} to {diff.high:+.3f})"
        if not self.significant:
            return (
                f"{self.a} vs {self.b}: NOT significant ({tests}; {span}, n={self.n}). "
                "The data do not show either model is better."
            )
        better = self.a if diff.estimate > 0 else self.b
        return f"{self.a} vs {self.b}: {better} is better ({tests}; {span}, n={self.n})."


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval for a proportion."""
    if n == 0:
        return Interval(math.nan, 0.0, 1.0)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamp away float dust: at 0/n and n/n the bound is exactly 0 or 1.
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval for a mean (degenerate, not NaN, when every value is equal)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan)
    sem = float(data.std(ddof=1)) / math.sqrt(n)
    half = float(scipy_stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * sem
    return Interval(mean, mean - half, mean + half)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> TestResult:
    """Exact (binomial) McNemar test on paired pass/fail outcomes; statistic = min(discordant)."""
    _check_paired(a, b)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = only_a + only_b
    low = min(only_a, only_b)
    if discordant == 0:
        return TestResult("McNemar exact", 0.0, 1.0)
    # Two-sided: double the smaller tail of Binomial(discordant, 1/2), exact in integers.
    tail = sum(math.comb(discordant, k) for k in range(low + 1))
    return TestResult("McNemar exact", float(low), min(1.0, 2 * tail / 2**discordant))


def paired_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    _check_paired(a, b)
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    if n < 2:
        return TestResult("paired t", math.nan, 1.0)
    sd = float(diff.std(ddof=1))
    mean = float(diff.mean())
    if sd == 0:
        # Every pair differs by the same amount: no spread to test against.
        return TestResult("paired t", math.nan, 1.0 if mean == 0 else 0.0)
    t = mean / (sd / math.sqrt(n))
    return TestResult("paired t", t, float(2 * scipy_stats.t.sf(abs(t), n - 1)))


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Wilcoxon signed-rank (zero differences dropped, SciPy's default); p=1 when all pairs tie."""
    _check_paired(a, b)
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(diff != 0):
        return TestResult("Wilcoxon", 0.0, 1.0)
    result = scipy_stats.wilcoxon(diff)
    return TestResult("Wilcoxon", float(result.statistic), float(result.pvalue))


def bootstrap_mean(
    values: Sequence[float], resamples: int = 10_000, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of a mean (seeded: the same data give the same interval)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(data.mean()), float(low), float(high))


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], binary: bool) -> Comparison:
    """Paired comparison of two models' scores on the same items, in the same order."""
    _check_paired(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    difference = bootstrap_mean(diffs)
    if not diffs:
        return Comparison(name_a, name_b, 0, (), difference)
    if binary:
        pa = [x >= 0.5 for x in a]
        pb = [y >= 0.5 for y in b]
        only_a = sum(1 for x, y in zip(pa, pb, strict=True) if x and not y)
        only_b = sum(1 for x, y in zip(pa, pb, strict=True) if y and not x)
        return Comparison(name_a, name_b, len(diffs), (mcnemar_exact(pa, pb),), difference, only_a, only_b)
    return Comparison(name_a, name_b, len(diffs), (wilcoxon(a, b), paired_t(a, b)), difference)


def _check_paired(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
