"""The online-calibration library: bounds, sampling, comparators, the share calibrator, the domain
router, router health and the cache acceptance (learning/online/)."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest

from faregate.learning.online import bounds
from faregate.learning.online.cache_acceptance import (
    AcceptanceState,
    CacheAcceptance,
    EntryEvidence,
    Neighbour,
)
from faregate.learning.online.calibrator import ScoreRanks
from faregate.learning.online.comparators import (
    EmbeddingSimilarity,
    Exact,
    FinalAnswer,
    JsonEqual,
    LLMJudgeComparator,
    Numeric,
    final_answer,
    mechanical,
)
from faregate.learning.online.domain_router import DomainEvidence, DomainRouter
from faregate.learning.online.health import HealthState, RouterHealth
from faregate.learning.online.sampling import VerificationBudget, VerificationSampler, coin
from faregate.learning.online.settings import QualitySettings, SemanticAcceptanceSettings

# -- bounds ---------------------------------------------------------------------------------------------


def test_clopper_pearson_matches_known_values() -> None:
    # Zero events in n trials: the upper bound is 1 - (1 - c)^(1/n) (the "rule of three" ~ 3/n).
    assert bounds.upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-9)
    assert bounds.upper(0, 0, 0.95) == 1.0 and bounds.lower(0, 0, 0.95) == 0.0
    assert bounds.lower(10, 10, 0.95) == pytest.approx(0.05 ** (1 / 10), rel=1e-9)
    low, high = bounds.lower(30, 100, 0.975), bounds.upper(30, 100, 0.975)
    assert 0.21 < low < 0.30 < high < 0.40  # the two-sided 95% interval of 30/100 is [0.212, 0.400]


def test_bounds_cover_the_true_rate_as_often_as_promised() -> None:
    rng = np.random.default_rng(1)
    misses = sum(bounds.upper(int(rng.binomial(200, 0.01)), 200, 0.9) < 0.01 for _ in range(2000))
    assert misses / 2000 <= 0.1


# -- settings and sampling ------------------------------------------------------------------------------


def test_settings_are_strict_and_checked() -> None:
    import msgspec

    settings = msgspec.convert({"target": 0.9, "verification": {"share": 0.02}}, QualitySettings)
    assert settings.target == 0.9 and settings.verification.share == 0.02
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"target": 0.9, "colour": "red"}, QualitySettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"target": 1.5}, QualitySettings)
    assert settings.prior_outcomes == 0 and settings.verification.rest_ratio == 0.1
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"prior_outcomes": -1}, QualitySettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"verification": {"rest_ratio": 0}}, QualitySettings)
    cache = msgspec.convert({"max_wrong_hit_rate": 0.005, "sequential": True}, SemanticAcceptanceSettings)
    assert cache.sequential and cache.floor == 0.8


def test_sampler_takes_the_stated_share_repeatably_and_keeps_the_cap() -> None:
    sampler = VerificationSampler(0.05, Decimal("0.10"), seed="s")
    chosen = [k for k in range(20_000) if sampler.sampled(str(k))]
    assert 0.045 < len(chosen) / 20_000 < 0.055
    assert chosen == [
        k for k in range(20_000) if VerificationSampler(0.05, Decimal(1), seed="s").sampled(str(k))
    ]
    budget = VerificationBudget()
    admitted = 0
    for key in map(str, chosen[:50]):
        if sampler.admit(budget, "2026-01-01", key, Decimal("0.03")):
            sampler.charge(budget, Decimal("0.03"))
            admitted += 1
    assert admitted == 3 and budget.spent == Decimal("0.09") and budget.skipped_for_cap == 47
    assert sampler.admit(budget, "2026-01-02", str(chosen[0]), Decimal("0.03"))  # a new day
    assert budget.spent == 0 and budget.day == "2026-01-02"
    assert VerificationBudget.from_json(json.loads(json.dumps(budget.to_json()))) == budget
    assert 0.0 <= coin("a", "b") < 1.0 and coin("a", "b") == coin("a", "b") != coin("a", "c")


# -- comparators ----------------------------------------------------------------------------------------


def test_mechanical_comparators() -> None:
    assert Exact().compare("Paris.", "  paris ").acceptable
    assert not Exact().compare("Paris", "Lyon").acceptable
    assert Numeric().compare("so #### 18", "The answer is 18.0").acceptable
    assert not Numeric().compare("#### 18", "no number here").acceptable  # cannot confirm: not acceptable
    # 309 digits or more are inf as floats: two different such numbers were called equal.
    huge = "1" + "0" * 400
    assert not Numeric().compare(f"#### {huge}", f"#### 2{huge[1:]}").acceptable
    assert not Numeric().compare(f"#### {huge}", f"#### -{huge}").acceptable
    assert not Numeric().compare(f"#### {huge}", "#### 18").acceptable
    assert Numeric().compare(f"#### {huge}", f"The answer is {huge}.0").acceptable
    assert FinalAnswer().compare("The answer is (B)", "B").acceptable
    assert not FinalAnswer().compare("The answer is (B)", "Answer: C").acceptable
    assert final_answer("3 + 4 = 7\n#### 7") == "7"
    # Free-form working that ends on its result without stating it: the last number written.
    free = "16 - 7 = 9 eggs.\nShe makes 9 * $2 = $18 every day at the farmers' market."
    assert final_answer(free) == "18"
    assert FinalAnswer().compare(free, "#### 18").acceptable
    # Numbers are compared whole: "g" kept 6 significant digits, so these two were one answer.
    assert not FinalAnswer().compare("#### 1,234,567", "#### 1234568").acceptable
    assert not FinalAnswer().compare("It costs $1234567.", "It costs $1234568.").acceptable
    assert FinalAnswer().compare("#### 1,234,567.50", "The answer is 1234567.5").acceptable
    assert final_answer("The answer is 180.0") == "180"
    assert JsonEqual().compare('{"a": 1, "b": [2]}', '```json\n{"b": [2], "a": 1}\n```').acceptable
    assert not JsonEqual().compare('{"a": 1}', "{oops").acceptable
    assert mechanical("numeric").name == "numeric"
    with pytest.raises(ValueError):
        mechanical("vibes")


def test_embedding_comparator_uses_the_given_embedder() -> None:
    def embed(texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0] if "cat" in t else [0.6, 0.8] for t in texts])

    assert EmbeddingSimilarity(embed, 0.9).compare("a cat", "the cat").acceptable
    assert not EmbeddingSimilarity(embed, 0.9).compare("a cat", "a dog").acceptable


async def test_llm_judge_comparator_reads_the_judge_and_fails_safe() -> None:
    replies = iter(["Score: 9/10", "I cannot say"])

    async def complete(messages: list[dict[str, object]]) -> str:
        assert "Answer B" in str(messages[-1]["content"])
        return next(replies)

    judge = LLMJudgeComparator(complete)
    assert (await judge.compare("q", "ref", "cand")).acceptable
    assert not (await judge.compare("q", "ref", "cand")).acceptable


# -- ranks ----------------------------------------------------------------------------------------------


def test_score_ranks_warm_start_then_follow_live_scores() -> None:
    ranks = ScoreRanks(reference=[0.1, 0.2, 0.3, 0.4], min_live=3)
    assert ranks.rank(0.25) == 0.5
    for score in (10.0, 20.0, 30.0):
        ranks.record(score)
    assert ranks.rank(25.0) == pytest.approx(2 / 3)
    assert ScoreRanks.from_json(json.loads(json.dumps(ranks.to_json()))).rank(25.0) == pytest.approx(2 / 3)


# -- learning the domains, and router health -----------------------------------------------------------


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_domain_router_moves_from_the_prior_to_the_evidence() -> None:
    router = DomainRouter(neighbours=10, prior_weight=5.0, min_similarity=0.5)
    evidence = DomainEvidence()
    maths, history = _unit(1, 0.1, 0), _unit(0, 0.1, 1)
    assert router.score(evidence, 0.3, maths) == pytest.approx(0.3)
    for _ in range(10):
        evidence.add(_unit(1, 0.12, 0), 1)  # only the strong model gets maths right
        evidence.add(_unit(0, 0.12, 1), -1)  # the weak one is better at history
    high, low = router.score(evidence, 0.3, maths), router.score(evidence, 0.3, history)
    assert high > 0.3 > low
    far = _unit(0, 1, 0)
    assert router.score(evidence, 0.3, far) == pytest.approx(0.3 - 0.5)  # no neighbour: prior minus weak wins
    copy = DomainEvidence.from_json(json.loads(json.dumps(evidence.to_json())))
    assert router.score(copy, 0.3, maths) == pytest.approx(high, abs=1e-4)


def test_domain_evidence_weighs_neighbours_by_inverse_labelling_probability() -> None:
    router = DomainRouter(neighbours=10, prior_weight=1.0, min_similarity=0.5)
    evidence = DomainEvidence()
    here = _unit(1, 0, 0)
    evidence.add(here, 1, weight=1.0)  # labelled for sure
    evidence.add(here, -1, weight=9.0)  # labelled one time in nine: stands for nine such prompts
    # Mean weight 5: relative weights 0.2 and 1.8; weak wins weigh 9 of 10 in the base rate.
    expected = (1.0 * (0.5 - 0.9) + 0.2 * 1 + 1.8 * -1) / (1.0 + 2.0)
    assert router.score(evidence, 0.5, here) == pytest.approx(expected)
    with pytest.raises(ValueError):
        evidence.add(here, 1, weight=0.0)


def _health(ranking: str, seed: int = 3, n: int = 3000) -> tuple[RouterHealth, HealthState]:
    """Net gains rise with the true need; the router ranks by it ('good') or backwards ('bad')."""
    rng = np.random.default_rng(seed)
    health, state = RouterHealth(min_outcomes=100), HealthState()
    for _ in range(n):
        need, length = float(rng.random()), float(rng.random())
        net = int(rng.random() < need) - int(rng.random() < 0.3)
        rank = need if ranking == "good" else 1 - need
        if rng.random() < 0.5:
            health.observe(state, net, rank, length, 0.5, 0.5)
        else:
            health.observe_unlabelled(state)
    return health, state


def test_router_health_flags_a_router_worse_than_random_or_length() -> None:
    health, good = _health("good")
    assert not health.verdict(good).flagged
    margins = {m.baseline: m for m in health.margins(good)}
    assert margins["random"].mean > 0 and margins["length"].mean > 0
    health, bad = _health("bad")
    verdict = health.verdict(bad)
    assert verdict.flagged and "random" in verdict.reason
    few = HealthState()
    health.observe(few, 1, 0.1, 0.9, 1.0, 1.0)
    assert not health.verdict(few).flagged
    copy = HealthState.from_json(json.loads(json.dumps(good.to_json())))
    assert copy.labelled == good.labelled and np.allclose(copy.tests.log_wealth, good.tests.log_wealth)
    with pytest.raises(ValueError):
        health.observe(few, 1, 0.1, 0.9, 0.2, 0.5)  # the floor cannot exceed the probability


def test_a_router_as_good_as_random_is_rarely_flagged() -> None:
    """No false alarms beyond alpha although the verdict is read after every label."""
    flagged = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        health, state = RouterHealth(min_outcomes=100, confidence=0.9), HealthState()
        for _ in range(1500):
            need, rank = float(rng.random()), float(rng.random())  # the ranking ignores the need
            net = int(rng.random() < need) - int(rng.random() < 0.3)
            health.observe(state, net, rank, rank, 1.0, 1.0)
            if health.verdict(state).flagged:
                flagged += 1
                break
    assert flagged <= 6  # alpha = 0.1 of 40, with room for chance


# -- cache acceptance -----------------------------------------------------------------------------------


def _lookups(
    acceptance: CacheAcceptance, state: AcceptanceState, similarity: float | None, wrong: bool, n: int
) -> None:
    """n lookups whose best candidate sits at `similarity` (None: no candidate), all labelled."""
    for _ in range(n):
        acceptance.record_lookup(state, similarity)
        if similarity is not None:
            acceptance.observe(state, similarity, wrong, [])


def test_no_semantic_hit_without_evidence() -> None:
    acceptance, state = CacheAcceptance(), AcceptanceState()
    assert acceptance.calibrate(state) is None
    decision = acceptance.decide(state, Neighbour(0.99, EntryEvidence()), [])
    assert not decision.serve and "no threshold" in decision.reason
    # 100 clean lookups are not enough to bound wrong hits / lookups by 0.5% at 95%.
    _lookups(acceptance, state, 0.95, False, 100)
    assert acceptance.calibrate(state) is None or acceptance.calibrate(state) >= 0.96


def test_the_threshold_pools_all_evidence_above_it_and_bounds_wrong_hits_per_lookup() -> None:
    acceptance, state = CacheAcceptance(max_wrong_hit_rate=0.005, confidence=0.95), AcceptanceState()
    _lookups(acceptance, state, None, False, 1500)  # misses: no candidate, never a wrong hit
    _lookups(acceptance, state, 0.955, False, 300)
    _lookups(acceptance, state, 0.925, False, 200)
    _lookups(acceptance, state, 0.905, True, 60)  # near misses at 0.90
    threshold = acceptance.calibrate(state)
    assert threshold == pytest.approx(0.91)
    bound = acceptance.bound(state, 0.91)
    assert bound.upper <= 0.005 and bound.labelled == 500 and bound.wrong == 0
    assert bound.upper == pytest.approx(bound.share_upper * bound.wrong_upper)
    assert acceptance.bound(state, 0.90).upper > 0.005
    assert acceptance.decide(state, Neighbour(0.93, EntryEvidence()), []).serve
    assert not acceptance.decide(state, Neighbour(0.905, EntryEvidence()), []).serve
    assert state.served == 1
    copy = AcceptanceState.from_json(json.loads(json.dumps(state.to_json())))
    assert copy.threshold == state.threshold and copy.seen == state.seen and copy.wrong == state.wrong


def test_anytime_valid_bounds_need_more_evidence() -> None:
    fixed, anytime = CacheAcceptance(), CacheAcceptance(sequential=True)
    state = AcceptanceState()
    _lookups(fixed, state, None, False, 1000)
    _lookups(fixed, state, 0.95, False, 400)
    assert anytime.bound(state, 0.95).upper > fixed.bound(state, 0.95).upper
    assert bounds.mixture_upper(0, 1000, 0.95) > bounds.upper(0, 1000, 0.95)
    assert bounds.mixture_upper(3, 10, 0.95) < 1.0 and bounds.mixture_upper(10, 10, 0.95) == 1.0


def test_a_conflict_makes_its_neighbourhood_stricter() -> None:
    acceptance, state = CacheAcceptance(), AcceptanceState()
    _lookups(acceptance, state, None, False, 2000)
    _lookups(acceptance, state, 0.955, False, 800)
    assert acceptance.calibrate(state) is not None
    crowded = EntryEvidence()
    acceptance.observe(state, 0.95, True, [crowded])  # a different question matched it at 0.95
    assert crowded.wrong == 1 and crowded.conflict_similarity == 0.95
    calm = acceptance.decide(state, Neighbour(0.96, EntryEvidence()), [])
    near = acceptance.decide(state, Neighbour(0.96, EntryEvidence()), [Neighbour(0.95, crowded)])
    itself = acceptance.decide(state, Neighbour(0.96, crowded), [])
    clear = acceptance.decide(state, Neighbour(0.98, crowded), [])  # closer than the conflict was
    assert calm.serve and not near.serve and not itself.serve and clear.serve
    assert "conflict" in near.reason
    assert EntryEvidence.from_json(crowded.to_json()) == crowded
