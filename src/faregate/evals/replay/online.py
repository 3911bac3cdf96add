"""The closed loop of online calibration, replayed on recorded outcomes (`faregate replay --online`).

Prompts arrive one at a time in a seeded order. For each: the policy scores it (the offline prior,
corrected by verified neighbours unless learning is off), ranks the score among recent ones, and
takes the strong path when the rank is in the calibrated strong-call share (router: the strong
model answers; cascade: the cheap answer is escalated). A uniform sample of decisions is verified,
as the gateway would after responding: the reference answer is "called" and its outcome read from
the recorded correctness of both models, and each verification is charged as the extra call it is
(router: the other model; cascade: the strong model for an accepted answer, nothing for an
escalated one, whose two answers both exist). Each verified outcome updates the calibration
(learning/online/calibrator.py), the domain evidence and the router-health check.

Reported per window of prompts: realised accuracy against the strong model's on the same prompts,
strong-model share (answers, and calls including verification), cost including verification;
over the stream: APGR of the routed traffic (its decision-time scores swept like any scorer) beside
the static prior's and the length heuristic's on the same stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

import numpy as np

from faregate.evals.replay.engine import Pair, call_cost, length_score, sweep
from faregate.evals.replay.outcomes import Outcomes, PromptRecord
from faregate.evals.replay.router_eval import scorer_of
from faregate.learning.online.calibrator import CalibrationState, ScoreRanks, ShareCalibrator, VerifiedOutcome
from faregate.learning.online.domain_router import DomainEvidence, DomainRouter
from faregate.learning.online.health import HealthState, RouterHealth
from faregate.learning.online.sampling import coin
from faregate.types import Price

Mode = Literal["router", "cascade"]
Order = Literal["shuffled", "by-source"]


@dataclass(slots=True, frozen=True)
class OnlineOptions:
    mode: Mode
    target: float = 0.95
    confidence: float = 0.95
    verify_share: float = 0.05
    min_verified: int = 30
    window: int = 500
    seed: int = 0
    order: Order = "shuffled"
    learn: bool = True
    fallback: bool = True
    domain: DomainRouter = field(default_factory=DomainRouter)


@dataclass(slots=True)
class Window:
    start: int
    prompts: int = 0
    correct: int = 0
    strong_correct: int = 0
    strong_answers: int = 0
    strong_calls: int = 0
    verified: int = 0
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


def stream_order(records: Sequence[PromptRecord], order: Order, seed: int) -> list[int]:
    """Indices in arrival order: a seeded shuffle, or whole sources (subjects) one after the other in
    a seeded order (a drifting mix)."""
    rng = np.random.default_rng(seed)
    if order == "shuffled":
        return [int(i) for i in rng.permutation(len(records))]
    sources = sorted({r.source for r in records})
    ranked = [sources[int(i)] for i in rng.permutation(len(sources))]
    return [i for s in ranked for i in range(len(records)) if records[i].source == s]


def run_online(
    outcomes: Outcomes,
    prior: np.ndarray,
    vectors: np.ndarray,
    pair: Pair,
    prices: dict[str, Price],
    options: OnlineOptions,
    reference_scores: Sequence[float] = (),
) -> OnlineReport:
    """Replay the loop. `prior[i]` is the offline score of record i (higher: strong path),
    `vectors[i]` its prompt's unit embedding."""
    records = outcomes.records
    calibrator = ShareCalibrator(options.target, options.confidence, options.min_verified)
    state = CalibrationState()
    ranks = ScoreRanks(reference=list(reference_scores))
    length_ranks = ScoreRanks()
    evidence = DomainEvidence()
    health_state = HealthState()
    health = RouterHealth()
    seed = f"online-{options.seed}"
    windows: list[Window] = []
    total = Window(0)
    decided = np.zeros(len(records))
    flagged_at: int | None = None
    reason = ""
    for position, i in enumerate(stream_order(records, options.order, options.seed)):
        record = records[i]
        if position % options.window == 0:
            windows.append(Window(position, strong_share_setting=state.strong_share))
        learned = options.domain.score(evidence, float(prior[i]), vectors[i]) if options.learn else prior[i]
        length = length_score(record)
        use_length = options.fallback and flagged_at is not None and options.mode == "router"
        score = length if use_length else float(learned)
        rank = (length_ranks if use_length else ranks).rank(score)
        router_rank = ranks.rank(float(learned))
        length_rank = length_ranks.rank(length)
        ranks.record(float(learned))
        length_ranks.record(length)
        # The rank that decided, on one [0, 1] scale whichever policy decided.
        decided[i] = rank
        strong = rank >= 1.0 - state.strong_share - 1e-12
        s_ok, w_ok = record.correct[pair.strong], record.correct[pair.weak]
        cost = _answer_cost(record, pair, prices, options.mode, strong)
        verification = Decimal(0)
        strong_calls = int(strong)
        verified = coin(seed, str(i)) < options.verify_share
        if verified:
            verification, extra_strong = _verification_cost(record, pair, prices, options.mode, strong)
            strong_calls += extra_strong
            outcome = VerifiedOutcome(
                router_rank, loss=s_ok and not w_ok, gain=w_ok and not s_ok, reference_ok=s_ok
            )
            calibrator.observe(state, outcome)
            calibrator.calibrate(state)
            net = int(s_ok) - int(w_ok)
            evidence.add(vectors[i], net)
            health_state.add(net, router_rank, length_rank)
            verdict = health.verdict(health_state)
            if verdict.flagged and flagged_at is None:
                flagged_at, reason = position, verdict.reason
            elif not reason or flagged_at is None:
                reason = verdict.reason
        for window in (windows[-1], total):
            window.prompts += 1
            window.correct += s_ok if strong else w_ok
            window.strong_correct += s_ok
            window.strong_answers += strong
            window.strong_calls += strong_calls
            window.verified += verified
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
        final_share=state.strong_share,
    )


def _answer_cost(
    record: PromptRecord, pair: Pair, prices: dict[str, Price], mode: Mode, strong: bool
) -> Decimal:
    if mode == "router":
        return call_cost(record, pair.strong if strong else pair.weak, prices)
    # A cascade always asks the cheap model; an escalation asks the strong one too.
    cheap = call_cost(record, pair.weak, prices)
    return cheap + (call_cost(record, pair.strong, prices) if strong else Decimal(0))


def _verification_cost(
    record: PromptRecord, pair: Pair, prices: dict[str, Price], mode: Mode, strong: bool
) -> tuple[Decimal, int]:
    """(cost of the shadow call, strong-model calls it makes)."""
    if mode == "router":
        if strong:
            return call_cost(record, pair.weak, prices), 0
        return call_cost(record, pair.strong, prices), 1
    if strong:
        return Decimal(0), 0  # both answers exist already
    return call_cost(record, pair.strong, prices), 1


@dataclass(slots=True)
class Prepared:
    outcomes: Outcomes
    prior: np.ndarray
    vectors: np.ndarray
    pair: Pair
    reference_scores: list[float]
    mode: Mode
    note: str


def prepare(spec: str, outcomes: Outcomes, *, held_out_only: bool, cache_dir: Path | None) -> Prepared:
    """The stream and its prior scores from `router:FILE` (a router) or `judge:FILE` (a cascade whose
    learned judge, after the rule checks, is the prior), on the file's held-out prompts if asked."""
    from faregate.embedding.vector_cache import embed_texts
    from faregate.evals.replay.router_eval import held_out, judge_scores
    from faregate.learning.cascade_judges import MATH_CHECKS, LearnedJudge, RuleJudge
    from faregate.learning.complexity_router import KIND, ComplexityRouter
    from faregate.learning.model_file import load_model_file
    from faregate.learning.text_features import PROMPT_NAMES

    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("router", "judge"):
        raise ValueError("--online needs --policy router:FILE (a trained router) or judge:FILE (a cascade)")
    file = load_model_file(path, KIND, PROMPT_NAMES) if kind == "router" else LearnedJudge.read(path)
    stream = held_out(outcomes, file).test if held_out_only else outcomes
    pair = Pair(file.strong, file.weak)
    stream.require(pair.strong, pair.weak)
    texts = [r.prompt for r in stream.records]
    vectors = embed_texts(texts, cache_dir)
    if kind == "router":
        router = ComplexityRouter(file)
        prior = router.score_vectors(texts, vectors)
        router.close()
        mode: Mode = "router"
    else:
        rules = RuleJudge(MATH_CHECKS)
        refused = np.array(
            [not rules.verdict({}, r.responses[pair.weak], None).accepted for r in stream.records],
            dtype=float,
        )
        # Rules first: an answer a rule refuses ranks above any the learned judge doubts.
        prior = judge_scores(file, stream.records, pair, cache_dir) + refused
        mode = "cascade"
    where = "held-out prompts the file never saw" if held_out_only else "all prompts (some trained on)"
    return Prepared(
        stream, prior, vectors, pair, list(file.reference_scores), mode, f"{len(stream):,} {where}"
    )
