"""faregate eval's statistics against SciPy's reference implementations on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from faregate.evals.prompt_eval.stats import (
    bootstrap_mean,
    compare,
    mcnemar_exact,
    paired_t,
    t_interval,
    wilcoxon,
    wilson,
)

A = [True, True, False, True, False, True, True, True, False, True, True, True, True, False, True]
B = [False, True, False, False, False, True, False, True, False, False, True, True, False, False, True]
X = [0.8, 0.6, 0.9, 0.7, 0.5, 0.95, 0.4, 0.85, 0.75, 0.3]
Y = [0.7, 0.65, 0.6, 0.5, 0.55, 0.8, 0.3, 0.6, 0.75, 0.2]


def test_mcnemar_exact_is_a_binomial_test_on_the_discordant_pairs() -> None:
    only_a = sum(a and not b for a, b in zip(A, B, strict=True))
    only_b = sum(b and not a for a, b in zip(A, B, strict=True))
    assert (only_a, only_b) == (5, 0)
    result = mcnemar_exact(A, B)
    assert result.p_value == pytest.approx(scipy_stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    assert result.p_value == pytest.approx(2 / 2**5)
    # Symmetric, and p=1 when the models never disagree.
    assert mcnemar_exact(B, A).p_value == result.p_value
    assert mcnemar_exact(A, A).p_value == 1.0
    # Balanced disagreement: the doubled tail is capped at 1.
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0


@pytest.mark.parametrize(("k", "n"), [(7, 20), (0, 10), (10, 10), (1, 3), (57, 60)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    want = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    got = wilson(k, n)
    assert got.estimate == k / n
    assert got.low == pytest.approx(want.low, abs=1e-12)
    assert got.high == pytest.approx(want.high, abs=1e-12)


def test_paired_t_matches_ttest_rel() -> None:
    want = scipy_stats.ttest_rel(X, Y)
    got = paired_t(X, Y)
    assert got.statistic == pytest.approx(want.statistic)
    assert got.p_value == pytest.approx(want.pvalue)


def test_wilcoxon_matches_scipy_with_zero_differences_dropped() -> None:
    want = scipy_stats.wilcoxon(X, Y)
    got = wilcoxon(X, Y)
    assert got.statistic == pytest.approx(want.statistic)
    assert got.p_value == pytest.approx(want.pvalue)
    assert wilcoxon(X, X).p_value == 1.0


def test_t_interval_matches_scipy() -> None:
    low, high = scipy_stats.t.interval(0.95, len(X) - 1, loc=np.mean(X), scale=scipy_stats.sem(X))
    got = t_interval(X)
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    constant = t_interval([0.5, 0.5, 0.5])
    assert (constant.low, constant.high) == (0.5, 0.5)


def test_bootstrap_is_seeded_and_close_to_scipy() -> None:
    diffs = [x - y for x, y in zip(X, Y, strict=True)]
    got = bootstrap_mean(diffs, resamples=20_000)
    assert got == bootstrap_mean(diffs, resamples=20_000)
    want = scipy_stats.bootstrap(
        (diffs,), np.mean, n_resamples=20_000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    # Different random streams: the percentile bounds agree to Monte Carlo error.
    assert got.low == pytest.approx(want.low, abs=0.01)
    assert got.high == pytest.approx(want.high, abs=0.01)
    assert got.estimate == pytest.approx(float(np.mean(diffs)))


def test_compare_says_plainly_when_a_difference_is_not_significant() -> None:
    # 5 wins to 0 is p = 1/16: suggestive, not significant at 5%, and the verdict says so.
    five = compare("a", [float(v) for v in A], "b", [float(v) for v in B], binary=True)
    assert five.tests[0].test == "McNemar exact"
    assert (five.only_a, five.only_b) == (5, 0)
    assert not five.significant and "NOT significant" in five.verdict()
    seven = compare("a", [float(v) for v in A] + [1.0, 1.0], "b", [float(v) for v in B] + [0.0, 0.0], True)
    assert seven.p_value == pytest.approx(2 / 2**7)
    assert seven.significant and "a is better" in seven.verdict()
    same = compare("a", [1.0, 0.0, 1.0], "b", [1.0, 0.0, 1.0], binary=True)
    assert not same.significant
    assert "NOT significant" in same.verdict()
    graded = compare("x", X, "y", Y, binary=False)
    assert [t.test for t in graded.tests] == ["Wilcoxon", "paired t"]
    assert not math.isnan(graded.difference.low)
