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
from faregate.learning.online.calibrator import (
    CalibrationState,
    ScoreRanks,
    ShareCalibrator,
    VerifiedOutcome,
)
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


def test_loss_bound_is_the_loss_upper_minus_the_gain_lower() -> None:
    with_gains = bounds.loss_upper(10, 5, 200, 0.95)
    assert with_gains < bounds.loss_upper(10, 0, 200, 0.95) <= bounds.upper(10, 200, 0.975)
    with pytest.raises(ValueError):
        bounds.loss_upper(150, 60, 200, 0.95)


# -- settings and sampling ------------------------------------------------------------------------------


def test_settings_are_strict_and_checked() -> None:
    import msgspec

    settings = msgspec.convert({"target": 0.9, "verification": {"share": 0.02}}, QualitySettings)
    assert settings.target == 0.9 and settings.verification.share == 0.02
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"target": 0.9, "colour": "red"}, QualitySettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"target": 1.5}, QualitySettings)
    cache = msgspec.convert({"max_wrong_hit_rate": 0.005}, SemanticAcceptanceSettings)
    assert cache.min_evidence > 0


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
    assert FinalAnswer().compare("The answer is (B)", "B").acceptable
    assert not FinalAnswer().compare("The answer is (B)", "Answer: C").acceptable
    assert final_answer("3 + 4 = 7\n#### 7") == "7"
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


# -- the share calibrator -------------------------------------------------------------------------------


def _outcomes(n: int, loss_rate_below: float, split: float, seed: int = 0) -> list[VerifiedOutcome]:
    """Ranks uniform; prompts ranked below `split` lose quality at `loss_rate_below`, above it always."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rank = float(rng.random())
        loss = bool(rng.random() < (loss_rate_below if rank < split else 0.5))
        out.append(VerifiedOutcome(rank, loss, False, True))
    return out


def test_too_little_evidence_means_the_strong_path() -> None:
    calibrator = ShareCalibrator(target=0.95, min_verified=30)
    assert calibrator.certified_share(_outcomes(29, 0.0, 0.6)) == 1.0


def test_clean_evidence_certifies_cheap_traffic_and_lossy_evidence_does_not() -> None:
    calibrator = ShareCalibrator(target=0.95, confidence=0.95)
    clean = calibrator.certified_share(_outcomes(2000, 0.0, 0.6))
    # Below rank 0.6 the cheap answers never lose: about 60% may go cheap (minus the bound's margin).
    assert 0.30 <= clean <= 0.55
    lossy = calibrator.certified_share(_outcomes(2000, 0.2, 0.6))
    assert lossy > clean
    assert calibrator.certified_share(_outcomes(2000, 0.5, 1.0)) >= 0.9


def test_the_certified_share_keeps_the_target_on_fresh_data() -> None:
    """Calibrate on one sample, check the realised loss on another: the target holds."""
    calibrator = ShareCalibrator(target=0.9, confidence=0.95)
    for seed in range(5):
        share = calibrator.certified_share(_outcomes(400, 0.05, 0.7, seed))
        fresh = _outcomes(20_000, 0.05, 0.7, seed + 100)
        loss = sum(o.loss for o in fresh if o.rank < 1 - share) / len(fresh)
        assert loss <= 0.1


def test_calibration_state_round_trips_and_estimates() -> None:
    calibrator = ShareCalibrator(target=0.95)
    state = CalibrationState()
    for outcome in _outcomes(500, 0.0, 0.5):
        calibrator.observe(state, outcome)
    share = calibrator.calibrate(state)
    copy = CalibrationState.from_json(json.loads(json.dumps(state.to_json())))
    assert copy.strong_share == share and len(copy.outcomes) == 500 and copy.verified_total == 500
    estimate = calibrator.estimate(state)
    assert estimate.verified == 500 and estimate.relative_quality_low <= estimate.relative_quality <= 1.0
    assert estimate.relative_quality_low >= 0.95 - 1e-9


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


def test_router_health_flags_a_router_no_better_than_random_or_length() -> None:
    rng = np.random.default_rng(3)
    good, useless = HealthState(), HealthState()
    for _ in range(400):
        rank, length = float(rng.random()), float(rng.random())
        net = int(rng.random() < rank) - int(rng.random() < 0.3)
        good.add(net, rank, length)
        useless.add(net, float(rng.random()) * 0 + (1 - rank), length)  # ranks backwards
    health = RouterHealth(min_outcomes=100)
    assert not health.verdict(good).flagged
    verdict = health.verdict(useless)
    assert verdict.flagged and "random" in verdict.reason
    few = HealthState()
    few.add(1, 0.1, 0.9)
    assert not health.verdict(few).flagged
    assert HealthState.from_json(json.loads(json.dumps(good.to_json()))).rows == good.rows


# -- cache acceptance -----------------------------------------------------------------------------------


def _label(
    acceptance: CacheAcceptance, state: AcceptanceState, similarity: float, wrong: bool, n: int
) -> None:
    for _ in range(n):
        acceptance.observe(state, similarity, wrong, [])


def test_no_semantic_hit_without_evidence() -> None:
    acceptance, state = CacheAcceptance(min_evidence=30), AcceptanceState()
    decision = acceptance.decide(state, Neighbour(0.97, EntryEvidence()), [], coin=0.0)
    assert not decision.serve and "evidence" in decision.reason
    assert not acceptance.decide(state, Neighbour(0.7, EntryEvidence()), [], coin=0.0).serve


def test_hits_are_served_with_a_probability_that_keeps_the_bound() -> None:
    acceptance, state = CacheAcceptance(max_wrong_hit_rate=0.005, confidence=0.95), AcceptanceState()
    _label(acceptance, state, 0.965, False, 2000)
    sure = acceptance.decide(state, Neighbour(0.965, EntryEvidence()), [], coin=0.99)
    assert sure.serve and sure.probability == 1.0  # 0 wrong in 2000: the bound is under 0.5%
    _label(acceptance, state, 0.905, True, 40)
    _label(acceptance, state, 0.905, False, 160)
    risky = acceptance.decide(state, Neighbour(0.905, EntryEvidence()), [], coin=0.5)
    assert not risky.serve and risky.probability * risky.upper == pytest.approx(0.005)
    assert state.lookups == 2 and state.served == 1


def test_a_crowded_neighbourhood_is_stricter() -> None:
    acceptance, state = CacheAcceptance(), AcceptanceState()
    _label(acceptance, state, 0.955, False, 3000)
    crowded = EntryEvidence()
    acceptance.observe(state, 0.95, True, [crowded])  # a different question matched it at 0.95
    assert crowded.wrong == 1 and crowded.wrong_similarity == 0.95
    calm = acceptance.decide(state, Neighbour(0.955, EntryEvidence()), [], coin=0.5)
    strict = acceptance.decide(state, Neighbour(0.955, EntryEvidence()), [Neighbour(0.95, crowded)], coin=0.5)
    assert calm.serve and not strict.serve and strict.reason == "crowded neighbourhood"
    state_copy = AcceptanceState.from_json(json.loads(json.dumps(state.to_json())))
    assert state_copy.labelled == state.labelled and state_copy.wrong == state.wrong
    assert EntryEvidence.from_json(crowded.to_json()) == crowded
