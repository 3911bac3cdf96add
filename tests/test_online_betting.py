"""Anytime-valid calibration: betting tests, the share calibrator on weighted labels, the
verification plan, and the prior's pseudo-outcomes (learning/online/)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faregate.learning.online.betting import BettingTests, Bettor, first_failure, threshold
from faregate.learning.online.calibrator import CalibrationState, LabelledDecision, ShareCalibrator
from faregate.learning.online.prior import prior_loss, pseudo_outcomes
from faregate.learning.online.verification_plan import VerificationPlan, pace
from faregate.learning.thresholds import CalibrationPoint

# -- betting --------------------------------------------------------------------------------------------


def _run(values: np.ndarray, largest: float) -> float:
    """The highest log-wealth reached over the stream (what an anytime reader could have seen)."""
    tests, bettor = BettingTests(1), Bettor()
    best = 0.0
    for y in values:
        bettor.observe(tests, np.array([y]), np.array([largest]))
        best = max(best, float(tests.log_wealth[0]))
    return best


def test_a_true_null_is_rejected_at_any_time_no_more_often_than_alpha() -> None:
    """Mean exactly 0 (H0 true, at its edge): over whole streams, read after every observation,
    the wealth reaches 1/alpha in at most ~alpha of them (Ville's inequality)."""
    rng = np.random.default_rng(0)
    level = threshold(0.9)
    hits = 0
    for _ in range(400):
        # A loss (+0.95) with probability 0.05, otherwise -0.05: mean 0.
        values = np.where(rng.random(600) < 0.05, 0.95, -0.05)
        hits += _run(values, 0.95) >= level
    assert hits / 400 <= 0.1


def test_a_clearly_negative_mean_is_detected_and_wealth_never_goes_negative() -> None:
    rng = np.random.default_rng(1)
    values = np.where(rng.random(2000) < 0.01, 0.95, -0.05)  # mean -0.04
    assert _run(values, 0.95) >= threshold(0.95)
    tests = BettingTests(1)
    Bettor().observe(tests, np.array([0.95]), np.array([0.95]))  # the worst outcome at the cap
    assert np.isfinite(tests.log_wealth[0]) and tests.log_wealth[0] >= np.log(0.5) - 1e-9
    with pytest.raises(ValueError):
        Bettor().observe(tests, np.array([2.0]), np.array([0.95]))


def test_tests_start_late_and_round_trip() -> None:
    tests = BettingTests(3, started=np.array([True, False, False]))
    bettor = Bettor()
    bettor.observe(tests, np.array([-0.05, 0.95, 0.95]), np.ones(3))
    bettor.observe_zeros(tests, 4)
    assert tests.count.tolist() == [5, 0, 0] and tests.log_wealth[1] == 0.0
    tests.start(np.array([False, True, False]))
    bettor.observe(tests, np.array([-0.05, -0.05, 0.95]), np.ones(3))
    assert tests.count.tolist() == [6, 1, 0] and tests.log_wealth[1] > 0
    copy = BettingTests.from_json(json.loads(json.dumps(tests.to_json())))
    assert copy.started.tolist() == [True, True, False] and np.allclose(copy.log_wealth, tests.log_wealth)
    assert first_failure([5.0, 4.0, 0.1, 9.0], 0.95) == 2 and first_failure([], 0.95) == 0


# -- the share calibrator -------------------------------------------------------------------------------


def _decisions(
    n: int, loss_below: float, split: float, seed: int = 0, plan: VerificationPlan | None = None
) -> list[tuple[LabelledDecision | None, float]]:
    """Ranks uniform; below `split` the cheap answer loses at `loss_below`, above it at 0.5. With a
    plan (cut 0), each decision is labelled with the plan's probability; None when not labelled."""
    rng = np.random.default_rng(seed)
    out: list[tuple[LabelledDecision | None, float]] = []
    for _ in range(n):
        rank = float(rng.random())
        loss = bool(rng.random() < (loss_below if rank < split else 0.5))
        p = plan.probability(rank, 0.0) if plan else 1.0
        out.append((LabelledDecision(rank, loss, False, True, p) if rng.random() < p else None, rank))
    return out


def _calibrated(calibrator: ShareCalibrator, stream: list[tuple[LabelledDecision | None, float]]) -> float:
    state = calibrator.new_state()
    calibrator.start_tests(state, np.ones(len(calibrator.cuts), dtype=bool))
    floor = np.ones(len(calibrator.cuts))
    for decision, _ in stream:
        if decision is None:
            calibrator.observe_unlabelled(state)
        else:
            calibrator.observe(state, decision, floor * min(1.0, decision.probability))
    return calibrator.calibrate(state)


def test_no_evidence_means_the_strong_path() -> None:
    calibrator = ShareCalibrator(target=0.95)
    state = calibrator.new_state()
    assert calibrator.calibrate(state) == 1.0 and state.cheap_share == 0.0


def test_clean_evidence_certifies_cheap_traffic_and_lossy_evidence_does_not() -> None:
    calibrator = ShareCalibrator(target=0.95, confidence=0.95)
    clean = _calibrated(calibrator, _decisions(3000, 0.0, 0.6))
    # Below rank 0.6 the cheap answers never lose and above it they lose half the time, so at most
    # 70% may go cheap (0.6, plus the 5% budget / 0.5 above it): a strong share of 0.3 at least,
    # more by the evidence's margin.
    assert 0.3 <= clean <= 0.65
    lossy = _calibrated(calibrator, _decisions(3000, 0.2, 0.6))
    assert lossy > clean
    assert _calibrated(calibrator, _decisions(3000, 0.5, 1.0)) >= 0.9


def test_the_certified_share_keeps_the_target_on_fresh_data() -> None:
    """Calibrate on one stream, check the realised loss on another: the target holds."""
    calibrator = ShareCalibrator(target=0.9, confidence=0.95)
    for seed in range(5):
        strong = _calibrated(calibrator, _decisions(800, 0.05, 0.7, seed))
        fresh = _decisions(20_000, 0.05, 0.7, seed + 100)
        loss = sum(d.loss for d, r in fresh if d is not None and r < 1 - strong) / len(fresh)
        assert loss <= 0.1


def test_weighted_labels_estimate_the_same_thing_as_uniform_ones() -> None:
    """Labels drawn 10x as densely below rank 0.1 as above it: the inverse-probability weights keep
    the calibration unbiased; it certifies about what uniform labels of the same cost do."""
    plan = VerificationPlan(0.2, frontier=0.1, rest_ratio=0.1)
    calibrator = ShareCalibrator(target=0.95)
    stratified = _calibrated(calibrator, _decisions(6000, 0.0, 0.6, 3, plan))
    assert stratified < 0.9  # it certified real cheap traffic
    # Never more than the truth allows (a strong share of 0.3; see the test above).
    assert stratified >= 0.3


def test_calibration_state_round_trips_and_estimates() -> None:
    calibrator = ShareCalibrator(target=0.95)
    state = calibrator.new_state()
    calibrator.start_tests(state, np.ones(len(calibrator.cuts), dtype=bool))
    for decision, _ in _decisions(2000, 0.0, 0.5):
        assert decision is not None
        calibrator.observe(state, decision, np.ones(len(calibrator.cuts)))
    share = calibrator.calibrate(state)
    copy = CalibrationState.from_json(json.loads(json.dumps(state.to_json())))
    assert copy.strong_share == share and copy.labelled == 2000 and len(copy.recent) == 2000
    assert np.allclose(copy.tests.log_wealth, state.tests.log_wealth)
    estimate = calibrator.estimate(state)
    # The cut in force keeps at least the target on this evidence, and loses something above rank 0.5.
    assert estimate.labelled == 2000 and 0.95 <= estimate.relative_quality < 1.0
    assert estimate.evidence >= 1 / 0.05
    with pytest.raises(ValueError):
        LabelledDecision(0.5, loss=True, reference_ok=False)
    with pytest.raises(ValueError):
        LabelledDecision(0.5, loss=False, probability=0.0)


# -- the verification plan ------------------------------------------------------------------------------


def test_the_plan_spends_its_budget_and_samples_near_the_cut() -> None:
    plan = VerificationPlan(0.05, frontier=0.1, rest_ratio=0.1)
    for cut in (0.0, 0.3, 0.8):
        ranks = (np.arange(100_000) + 0.5) / 100_000
        spent = np.mean([plan.probability(r, cut) for r in ranks[::50]])
        assert spent == pytest.approx(0.05, rel=0.02)
        assert plan.probability(cut + 0.05, cut) == pytest.approx(10 * plan.probability(0.99, cut))
    cuts = np.array([0.1, 0.2, 0.5])
    floor = plan.floor_probabilities(cuts, 0.1)
    assert floor[0] == floor[1] > floor[2]
    assert plan.dense(cuts, 0.1).tolist() == [True, True, False]
    cascade = VerificationPlan(0.05, free_strong_side=True)
    assert cascade.probability(0.9, 0.2) == 1.0 and not cascade.paid(0.9, 0.2)
    assert cascade.probability(0.1, 0.2) == pytest.approx(0.25) and cascade.paid(0.1, 0.2)
    assert cascade.least_probability(0.0) == 1.0 and cascade.dense(cuts, 0.0).all()
    assert pace(0.05, 0, 0) == pytest.approx(0.98) and pace(0.05, 100, 1000) < 1.0 < pace(0.05, 10, 1000)
    with pytest.raises(ValueError):
        VerificationPlan(0.0)


# -- the prior ------------------------------------------------------------------------------------------


def test_pseudo_outcomes_follow_the_model_files_curve() -> None:
    # Retained quality rises linearly from 0.8 (all cheap) to 1.0 (all strong).
    curve = [CalibrationPoint(s / 10, 0.8 + 0.02 * s, 0.0) for s in range(11)]
    outcomes = pseudo_outcomes(curve, strong_accuracy=0.9, count=500, seed=1)
    assert len(outcomes) == 500 and all(o.probability == 1.0 for o in outcomes)
    for cut in (0.2, 0.5, 1.0):
        losses = sum(o.net_gain for o in outcomes if o.rank < cut)
        assert losses == pytest.approx(500 * prior_loss(curve, 0.9, cut), abs=1.0)
    assert sum(o.reference_ok for o in outcomes) == pytest.approx(450, abs=1)
    assert prior_loss(curve, 0.9, 1.0) == pytest.approx(0.9 * 0.2)
    assert pseudo_outcomes(curve, 0.9, 0) == []
    # Fed first, they let a fresh route certify cheap traffic before any live label.
    calibrator = ShareCalibrator(target=0.95)
    state = calibrator.new_state()
    calibrator.start_tests(state, np.ones(len(calibrator.cuts), dtype=bool))
    for o in pseudo_outcomes(curve, 0.9, 2000):
        calibrator.observe(state, o, np.ones(len(calibrator.cuts)))
    assert calibrator.calibrate(state) < 1.0
