"""The semantic cache's bounds on wrong hits / lookups: the direct bound (labelled wrong hits
counted over all lookups, the pooled rate only for unlabelled served hits) next to the product,
and their coverage in a seeded simulation of the online loop."""

from __future__ import annotations

import numpy as np
import pytest

from faregate.learning.online.cache_acceptance import (
    AcceptanceState,
    CacheAcceptance,
    EntryEvidence,
    Neighbour,
)

# Simulated traffic: 40% of lookups have a candidate, its similarity uniform over the 20 bands
# 0.80..0.99; P(wrong | band) does not rise with similarity (the pooling assumption).
BANDS = np.round(np.arange(0.80, 1.0, 0.01), 2)
P_CANDIDATE = 0.4


def _p_wrong(similarity: float) -> float:
    if similarity >= 0.95:
        return 0.0
    if similarity >= 0.90:
        return 0.04
    if similarity >= 0.89:
        return 0.06
    return 0.3


def _true_rate(threshold: float) -> float:
    """R(tau) = P(s >= tau and wrong) of the simulated traffic."""
    share = P_CANDIDATE / len(BANDS)
    return sum(share * _p_wrong(float(s)) for s in BANDS if s >= threshold - 1e-9)


def _simulate(acceptance: CacheAcceptance, seed: int, lookups: int, verify: float = 0.05) -> float | None:
    """The online loop (serve at the threshold in force, label every unserved lookup and a share of
    served ones, recalibrate every 100 lookups); the threshold certified at the end."""
    rng = np.random.default_rng(seed)
    state = AcceptanceState()
    has = rng.random(lookups) < P_CANDIDATE
    similarity = rng.choice(BANDS, lookups) + 0.005
    draws = rng.random(lookups)
    coins = rng.random(lookups)
    for i in range(lookups):
        if i % 100 == 0:
            acceptance.calibrate(state)
        if not has[i]:
            acceptance.record_lookup(state, None)
            continue
        s = float(similarity[i])
        acceptance.record_lookup(state, s)
        wrong = bool(draws[i] < _p_wrong(s - 0.005))
        served = acceptance.decide(state, Neighbour(s, EntryEvidence()), []).serve
        if not served or coins[i] < verify:
            acceptance.observe(state, s, wrong, [])
    return acceptance.calibrate(state)


def test_the_simulated_traffic_breaks_the_bound_below_090() -> None:
    assert _true_rate(0.90) == pytest.approx(0.004)
    assert _true_rate(0.89) > 0.005 and _true_rate(0.95) == 0.0


@pytest.mark.parametrize("method", ["direct", "product"])
def test_a_threshold_that_breaks_the_bound_is_certified_in_at_most_alpha_of_runs(method: str) -> None:
    acceptance = CacheAcceptance(max_wrong_hit_rate=0.005, confidence=0.9, method=method)
    runs = 150
    thresholds = [_simulate(acceptance, seed, 6000) for seed in range(runs)]
    breaking = sum(t is not None and _true_rate(t) > 0.005 for t in thresholds)
    # alpha = 10%: at most 15 of 150 (seen: direct 1, product 2; the fixed-sequence test from 1.00
    # down and the union bound make both conservative).
    assert breaking <= 15
    # Not vacuous: the bound certifies a serving threshold in most runs.
    assert sum(t is not None and t <= 0.95 for t in thresholds) >= runs // 2


def test_the_direct_bound_counts_labelled_wrong_hits_over_all_lookups() -> None:
    direct, product = CacheAcceptance(method="direct"), CacheAcceptance()
    state = AcceptanceState()
    for _ in range(1800):
        direct.record_lookup(state, None)
    for similarity, wrong, n in ((0.955, True, 3), (0.965, False, 30), (0.905, False, 150)):
        for _ in range(n):
            direct.record_lookup(state, similarity)
            direct.observe(state, similarity, wrong, [])
    bound = direct.bound(state, 0.90)
    # Every lookup at or above 0.90 is labelled: the unlabelled term is only its bound's slack.
    assert bound.labelled == 183 and bound.wrong == 3
    assert bound.upper == pytest.approx(bound.counted_upper + bound.share_upper * bound.wrong_upper)
    assert bound.counted_upper < 0.005 and bound.upper < 0.005
    # Three wrong hits at 0.95 among 33 labels stop the product's fixed-sequence test there; the
    # direct bound charges them to all 1,983 lookups wherever they sit.
    assert product.bound(state, 0.95).upper > 0.005 >= direct.bound(state, 0.95).upper
    assert product.calibrate(state) == pytest.approx(0.96)
    assert direct.calibrate(state) == pytest.approx(0.80)


def test_the_direct_bound_pays_for_unlabelled_lookups_it_has_not_seen() -> None:
    """Its second term is a bound on P(s >= tau, unlabelled) even when none was seen: with few
    labels above tau it costs about 5 / N on top of the count's 3 / N, where the product pays
    about 5 / N in all (its share factor at alpha * 0.1, times a rate of 1 with no labels)."""
    direct, product = CacheAcceptance(method="direct"), CacheAcceptance()
    state = AcceptanceState()
    for _ in range(1500):
        direct.record_lookup(state, None)
    assert product.calibrate(state) == pytest.approx(0.80)
    assert direct.calibrate(state) is None


def test_served_hits_not_verified_are_bounded_with_the_pooled_rate() -> None:
    direct = CacheAcceptance(method="direct")
    state = AcceptanceState()
    for _ in range(2000):
        direct.record_lookup(state, None)
    for _ in range(200):
        direct.record_lookup(state, 0.935)
        direct.observe(state, 0.935, False, [])
    clean = direct.bound(state, 0.93).upper
    for _ in range(300):  # served, not drawn for verification: unlabelled
        direct.record_lookup(state, 0.945)
    served = direct.bound(state, 0.93)
    assert served.labelled == 200 and served.share_upper > 0.1
    assert served.upper > clean
    with pytest.raises(ValueError, match="method"):
        CacheAcceptance(method="mean")


def test_the_direct_bound_works_anytime_valid_too() -> None:
    fixed, anytime = CacheAcceptance(method="direct"), CacheAcceptance(method="direct", sequential=True)
    state = AcceptanceState()
    for _ in range(8000):
        fixed.record_lookup(state, None)
    for _ in range(400):
        fixed.record_lookup(state, 0.955)
        fixed.observe(state, 0.955, False, [])
    assert fixed.bound(state, 0.95).upper < anytime.bound(state, 0.95).upper < 1.0
    assert anytime.calibrate(state) is not None
