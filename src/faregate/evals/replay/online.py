"""The closed loop of online calibration, replayed on recorded outcomes (`faregate replay --online`).

Prompts arrive one at a time in a seeded order. For each: the policy scores it with the ranking in
force (the offline prior; with `learn`, the prior corrected by a frozen snapshot of labelled
neighbours once the challenger has won its test, learning/online/ranking_switch.py), ranks the
score among recent ones, and
takes the cheap path when the rank is below the certified cut (router: the weak model answers;
cascade: the cheap answer is accepted). The verification plan (learning/online/verification_plan.py)
then says with what probability this decision is labelled, as the gateway would after responding:

- router, cheap decision: a shadow call to the strong model (paid; counted as a strong call);
- router, strong decision: a shadow call to the weak model (cheap: a few % of the strong price);
- cascade, accepted answer: a shadow call to the strong model (paid; a strong call);
- cascade, escalated answer: both answers exist already, a free label (when free labels are on).

A labelled decision's outcome is read from the recorded correctness of both models and updates the
calibration (learning/online/calibrator.py), the router-health check and, with `learn`, the
challenger's evidence and its test against the ranking in force (a win switches the ranking and
restarts the calibration and the health check); an unlabelled one counts as a decision. Every
shadow call is charged as the call it is. With a prior, the model file's calibration curve enters
first as pseudo-outcomes (learning/online/prior.py).

Reported per window of prompts: realised accuracy against the strong model's on the same prompts,
strong-model share (answers, and calls including verification), shadow calls by kind, cost
including verification; over the stream: APGR of the routed traffic (its decision-time ranks swept
like any scorer) beside the static prior's and the length heuristic's on the same stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import numpy as np

from faregate.evals.replay.engine import Pair, call_cost, length_score, sweep
from faregate.evals.replay.outcomes import Outcomes, PromptRecord
from faregate.evals.replay.router_eval import scorer_of
from faregate.learning.online.betting import Bettor
from faregate.learning.online.calibrator import LabelledDecision, ScoreRanks, ShareCalibrator
from faregate.learning.online.domain_router import DomainRouter
from faregate.learning.online.health import HealthState, RouterHealth
from faregate.learning.online.prior import pseudo_outcomes
from faregate.learning.online.ranking_switch import RankingSwitch, SwitchState
from faregate.learning.online.sampling import coin
from faregate.learning.online.verification_plan import VerificationPlan, pace
from faregate.learning.thresholds import CalibrationPoint
from faregate.types import Price

Mode = Literal["router", "cascade"]
Order = Literal["shuffled", "by-source"]


@dataclass(slots=True, frozen=True)
class OnlineOptions:
    mode: Mode
    target: float = 0.95
    confidence: float = 0.95
    # Expected share of decisions given a shadow call (router: cheap and paid; cascade: paid).
    verify_share: float = 0.05
    # Stratified sampling: the band above the cut sampled like the cheap side, and the rate deep
    # on the strong side relative to it (frontier 0 and rest_ratio 1: uniform sampling).
    frontier: float = 0.1
    rest_ratio: float = 0.1
    # Cascade: an escalation's two answers label it for free.
    free_labels: bool = True
    # Pseudo-outcomes from the model file's calibration curve (0: no prior).
    prior_count: int = 0
    window: int = 500
    seed: int = 0
    order: Order = "shuffled"
    # Learn the domains: the prior corrected by labelled neighbours (domain_router.py) as a
    # challenger, switched in frozen when its test wins (ranking_switch.py); router mode only.
    learn: bool = False
    # Labels the challenger's evidence must hold before its test starts.
    learn_min_labels: int = 100
    fallback: bool = True
    domain: DomainRouter = field(default_factory=DomainRouter)
    bettor: Bettor = field(default_factory=Bettor)


@dataclass(slots=True)
class Window:
    start: int
    prompts: int = 0
    correct: int = 0
    strong_correct: int = 0
    strong_answers: int = 0
    strong_calls: int = 0
    # Labels by kind: free (escalations), cheap (weak shadow calls), paid (strong shadow calls).
    free_labels: int = 0
    cheap_shadows: int = 0
    paid_shadows: int = 0
    cost: Decimal = Decimal(0)
    verification_cost: Decimal = Decimal(0)
    strong_share_setting: float = 1.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.prompts if self.prompts else 0.0

    @property
    def strong_accuracy(self) -> float:
        return self.strong_correct / self.prompts if self.prompts else 0.0

    @property
    def retained(self) -> float:
        return self.correct / self.strong_correct if self.strong_correct else 1.0

    @property
    def shadow_calls(self) -> int:
        return self.cheap_shadows + self.paid_shadows


@dataclass(slots=True)
class OnlineReport:
    data: str
    mode: Mode
    options: OnlineOptions
    prompts: int
    pair: Pair
    windows: list[Window]
    total: Window
    all_strong_cost: Decimal
    apgr_routed: float
    apgr_prior: float
    apgr_length: float
    flagged_at: int | None
    health_reason: str
    final_share: float
    # Prompts (0-based positions) at which the learned challenger was switched in.
    switched_at: list[int] = field(default_factory=list)
    # The challenger's e-value against the ranking in force at the end, and the labels it has seen.
    challenger_evidence: float = 1.0
    challenger_labels: int = 0
    # Rankings that use every label of the stream (not deployable): what learning could reach.
    apgr_hindsight: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class PriorCurve:
    """The model file's calibration curve and the strong model's training accuracy."""

    points: tuple[CalibrationPoint, ...]
    strong_accuracy: float


def stream_order(records: Sequence[PromptRecord], order: Order, seed: int) -> list[int]:
    """Indices in arrival order: a seeded shuffle, or whole sources (subjects) one after the other in
    a seeded order (a drifting mix)."""
    rng = np.random.default_rng(seed)
    if order == "shuffled":
        return [int(i) for i in rng.permutation(len(records))]
    sources = sorted({r.source for r in records})
    ranked = [sources[int(i)] for i in rng.permutation(len(sources))]
    return [i for s in ranked for i in range(len(records)) if records[i].source == s]


class _Loop:
    """The per-route state of the replay: what the gateway would keep in its store."""

    def __init__(self, options: OnlineOptions, reference_scores: Sequence[float], prior: PriorCurve | None):
        self.options = options
        self.calibrator = ShareCalibrator(options.target, options.confidence, bettor=options.bettor)
        self.plan = VerificationPlan(
            options.verify_share,
            frontier=options.frontier,
            rest_ratio=options.rest_ratio,
            free_strong_side=options.mode == "cascade" and options.free_labels,
        )
        self.prior = prior
        self.reference_scores = list(reference_scores)
        self.ranks = ScoreRanks(reference=list(reference_scores))
        self.length_ranks = ScoreRanks()
        self.switch = RankingSwitch(options.domain, options.confidence, options.learn_min_labels)
        self.switch_state = SwitchState()
        self.health_state = HealthState()
        self.health = RouterHealth()
        self.state = self.calibrator.new_state()
        self.seed_prior()
        self.start_tests()

    def start_tests(self) -> None:
        self.calibrator.start_tests(self.state, self.plan.dense(self.calibrator.cuts, self.state.cheap_share))

    def seed_prior(self) -> None:
        if self.prior is None or self.options.prior_count <= 0:
            return
        ones = np.ones(len(self.calibrator.cuts))
        # Pseudo-outcomes carry weight 1: every cut's test starts with them.
        self.calibrator.start_tests(self.state, ones > 0)
        for decision in pseudo_outcomes(
            self.prior.points, self.prior.strong_accuracy, self.options.prior_count, self.options.seed
        ):
            self.calibrator.observe(self.state, decision, ones)
        self.calibrator.calibrate(self.state)

    def restart_calibration(self) -> None:
        """The deciding ranking changed (fallback to length): evidence about cuts of the old one does
        not transfer, so the calibration starts again (all strong until re-certified)."""
        self.state = self.calibrator.new_state()
        self.start_tests()

    def switch_to_challenger(self) -> None:
        """The challenger won: it is frozen as the ranking in force (its recent scores become the
        rank window), and what was about the old ranking starts again."""
        self.switch.switch(self.switch_state)
        self.ranks = self.switch_state.challenger_ranks
        self.switch_state.challenger_ranks = ScoreRanks.from_json(self.ranks.to_json())
        self.health_state = HealthState()
        self.restart_calibration()


def run_online(
    outcomes: Outcomes,
    prior: np.ndarray,
    vectors: np.ndarray,
    pair: Pair,
    prices: dict[str, Price],
    options: OnlineOptions,
    reference_scores: Sequence[float] = (),
    prior_curve: PriorCurve | None = None,
) -> OnlineReport:
    """Replay the loop. `prior[i]` is the offline score of record i (higher: strong path),
    `vectors[i]` its prompt's unit embedding."""
    records = outcomes.records
    loop = _Loop(options, reference_scores, prior_curve)
    seed = f"online-{options.seed}"
    windows: list[Window] = []
    total = Window(0)
    decided = np.zeros(len(records))
    flagged_at: int | None = None
    flagged = False
    switched_at: list[int] = []
    reason = ""
    learn = options.learn and options.mode == "router"
    for position, i in enumerate(stream_order(records, options.order, options.seed)):
        record = records[i]
        if position % options.window == 0:
            windows.append(Window(position, strong_share_setting=loop.state.strong_share))
        vector = vectors[i] if learn else None
        in_force = loop.switch.in_force_score(loop.switch_state, float(prior[i]), vector)
        length = length_score(record)
        router_rank = loop.ranks.rank(in_force)
        length_rank = loop.length_ranks.rank(length)
        loop.ranks.record(in_force)
        loop.length_ranks.record(length)
        rank = length_rank if flagged else router_rank
        challenger_rank = 0.0
        if learn:
            challenger = loop.switch.challenger_score(loop.switch_state, float(prior[i]), vector)
            challenger_rank = loop.switch.challenger_rank(loop.switch_state, challenger)
        decided[i] = rank
        cut = loop.state.cheap_share
        strong = rank >= cut - 1e-12 or cut <= 0.0
        s_ok, w_ok = record.correct[pair.strong], record.correct[pair.weak]
        cost = _answer_cost(record, pair, prices, options.mode, strong)
        used = total.shadow_calls if options.mode == "router" else total.paid_shadows
        scale = pace(options.verify_share, used, position)
        probability = loop.plan.probability(rank, cut, scale)
        labelled = coin(seed, str(i)) < probability
        verification, extra_strong, kind = Decimal(0), 0, ""
        if labelled:
            verification, extra_strong, kind = _shadow(record, pair, prices, options.mode, strong)
            decision = LabelledDecision(rank, s_ok and not w_ok, w_ok and not s_ok, s_ok, probability)
            floor = loop.plan.floor_probabilities(loop.calibrator.cuts, cut, scale)
            loop.calibrator.observe(loop.state, decision, floor)
            loop.calibrator.calibrate(loop.state)
            loop.start_tests()
            net = int(s_ok) - int(w_ok)
            least = min(loop.plan.least_probability(cut, scale), probability)
            if not flagged:
                loop.health.observe(loop.health_state, net, router_rank, length_rank, probability, least)
                verdict = loop.health.verdict(loop.health_state)
                if verdict.flagged and options.fallback and options.mode == "router":
                    flagged, reason = True, verdict.reason
                    flagged_at = position if flagged_at is None else flagged_at
                    loop.restart_calibration()
                elif flagged_at is None:
                    reason = verdict.reason
            won = learn and loop.switch.observe(
                loop.switch_state, net, rank, challenger_rank, vector, probability, least
            )
            if won:
                switched_at.append(position)
                flagged = False
                loop.switch_to_challenger()
        else:
            loop.calibrator.observe_unlabelled(loop.state)
            if not flagged:
                loop.health.observe_unlabelled(loop.health_state)
            if learn:
                loop.switch.observe_unlabelled(loop.switch_state)
        for window in (windows[-1], total):
            window.prompts += 1
            window.correct += s_ok if strong else w_ok
            window.strong_correct += s_ok
            window.strong_answers += strong
            window.strong_calls += int(strong) + extra_strong
            window.free_labels += kind == "free"
            window.cheap_shadows += kind == "cheap"
            window.paid_shadows += kind == "paid"
            window.cost += cost + verification
            window.verification_cost += verification
    test = Outcomes(outcomes.name, outcomes.models, records, outcomes.contaminated_skipped)

    def apgr(scores: np.ndarray) -> float:
        return sweep(test, scorer_of(records, scores), pair, prices, "online").metrics.apgr

    all_strong = sum((call_cost(r, pair.strong, prices) for r in records), Decimal(0))
    return OnlineReport(
        data=outcomes.name,
        mode=options.mode,
        options=options,
        prompts=len(records),
        pair=pair,
        windows=windows,
        total=total,
        all_strong_cost=all_strong,
        apgr_routed=apgr(decided),
        apgr_prior=apgr(np.asarray(prior, dtype=np.float64)),
        apgr_length=apgr(np.array([length_score(r) for r in records])),
        flagged_at=flagged_at,
        health_reason=reason,
        final_share=loop.state.strong_share,
        switched_at=switched_at,
        challenger_evidence=loop.switch.evidence(loop.switch_state),
        challenger_labels=len(loop.switch_state.evidence.vectors),
        apgr_hindsight={
            name: apgr(scores) for name, scores in hindsight_rankings(records, prior, vectors, pair)
        },
    )


def hindsight_rankings(
    records: Sequence[PromptRecord], prior: np.ndarray, vectors: np.ndarray, pair: Pair, neighbours: int = 30
) -> list[tuple[str, np.ndarray]]:
    """Rankings built from every prompt's recorded outcome: the ceiling that learning the traffic's
    domains could approach with all labels. The subject oracle gives every prompt of a source its
    source's mean net gain (ties broken by the prior); the neighbours leave the prompt itself out."""
    net = np.array([int(r.correct[pair.strong]) - int(r.correct[pair.weak]) for r in records], float)
    tie = 1e-6 * np.argsort(np.argsort(prior)) / max(1, len(records))
    sources = [r.source for r in records]
    totals: dict[str, list[float]] = {}
    for source, gain in zip(sources, net, strict=True):
        totals.setdefault(source, []).append(gain)
    out = []
    if len(totals) > 1:
        subject = np.array([sum(totals[s]) / len(totals[s]) for s in sources])
        out.append(("subject oracle", subject + tie))
    unit = np.asarray(vectors, dtype=np.float32)
    k = min(neighbours, len(records) - 1)
    if k > 0:
        knn = np.empty(len(records))
        for start in range(0, len(records), 512):
            sims = unit[start : start + 512] @ unit.T
            for row in range(sims.shape[0]):
                sims[row, start + row] = -np.inf  # leave the prompt itself out
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            knn[start : start + 512] = net[top].mean(axis=1)
        out.append((f"{k} nearest neighbours, leave-one-out", knn + tie))
    return out


def _answer_cost(
    record: PromptRecord, pair: Pair, prices: dict[str, Price], mode: Mode, strong: bool
) -> Decimal:
    if mode == "router":
        return call_cost(record, pair.strong if strong else pair.weak, prices)
    # A cascade always asks the cheap model; an escalation asks the strong one too.
    cheap = call_cost(record, pair.weak, prices)
    return cheap + (call_cost(record, pair.strong, prices) if strong else Decimal(0))


def _shadow(
    record: PromptRecord,
    pair: Pair,
    prices: dict[str, Price],
    mode: Mode,
    strong: bool,
) -> tuple[Decimal, int, str]:
    """(cost of the label, strong-model calls it makes, kind: free / cheap / paid)."""
    if mode == "cascade" and strong:
        return Decimal(0), 0, "free"  # an escalation: both answers exist already
    if strong:
        return call_cost(record, pair.weak, prices), 0, "cheap"
    return call_cost(record, pair.strong, prices), 1, "paid"
