"""`faregate router eval`: a trained router (and cascade judge) on the held-out part of its split.

Everything is measured by the replay engine (evals/replay/engine.py) on prompts the model never saw:
the held-out split is re-derived from the seed and fraction recorded in the model file, and the
training part's digest must match, so a changed data file or a different contamination filter
is refused rather than silently mixing training prompts into the test.

Policies on the same held-out prompts: the trained router, the one-line length heuristic, a seeded
random scorer, and the oracle (plus the expected random line); for a cascade judge, the learned
judge, the rule judge (a single point: it has no threshold), and rules-then-learned. A cascade's
curve is read like a router's (strong-call share = share escalated; accuracy = the cheap answer's
if accepted, else the strong model's), but its cost counts both calls when it escalates.

The "calibrated" rows check the deployable settings: the strong-call share the file's calibration
curve (from training folds) says keeps 95% of the strong model's accuracy, applied to the held-out
prompts as a share (the live mode) and as the fixed score threshold it implied at training time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from faregate.embedding.embedder import DIMENSIONS
from faregate.embedding.vector_cache import BatchEmbedder, embed_texts
from faregate.evals.replay.engine import (
    DEFAULT_PRICES,
    RETAIN,
    Metrics,
    Pair,
    Report,
    Scorer,
    call_cost,
    evaluate_scorer,
    length_score,
    random_score,
)
from faregate.evals.replay.outcomes import Outcomes, PromptRecord
from faregate.learning.cascade_judges import MATH_CHECKS, RuleJudge, judge_matrix
from faregate.learning.complexity_router import ComplexityRouter, prompt_matrix
from faregate.learning.linear import Array
from faregate.learning.model_file import ModelFile
from faregate.learning.thresholds import share_for_quality
from faregate.learning.training.fit import weak_answers
from faregate.learning.training.selection import Split, SplitSpec, prompts_digest, split_outcomes
from faregate.types import Price


@dataclass(slots=True)
class Curve:
    name: str
    kind: str  # "router", "baseline" or "cascade"
    report: Report
    # Cascade only: total cost at each point of report.sweep.exact (cheap call always, strong if escalated).
    cascade_costs: list[Decimal] | None = None

    @property
    def metrics(self) -> Metrics:
        assert self.report.sweep is not None
        return self.report.sweep.metrics


@dataclass(slots=True, frozen=True)
class Point:
    """One operating point of a policy on the held-out prompts."""

    name: str
    strong_share: float
    accuracy: float
    cost: Decimal


@dataclass(slots=True)
class Evaluation:
    data: str
    split: dict[str, Any]
    pair: Pair
    prompts: int
    strong_accuracy: float
    weak_accuracy: float
    all_strong_cost: Decimal
    all_weak_cost: Decimal
    curves: list[Curve]
    reference: list[Metrics]  # expected random, oracle
    points: list[Point] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)


def held_out(outcomes: Outcomes, file: ModelFile) -> Split:
    """The test part of the split the file was trained on; refuses data that does not match."""
    recorded = file.training.get("split")
    if not isinstance(recorded, dict):
        raise ValueError("the model file records no training split; cannot tell held-out prompts apart")
    split = split_outcomes(outcomes, SplitSpec.from_json(recorded))
    if prompts_digest(split.train.records) != recorded.get("train_digest"):
        raise ValueError(
            f"{outcomes.name}: the training part of this data differs from the one the model was trained "
            "on (other file, or other contamination filtering); refusing to evaluate"
        )
    return split


def scorer_of(records: list[PromptRecord], scores: Array) -> Scorer:
    """Precomputed scores (one per record, in order) as a replay scorer."""
    by_id = {id(r): float(s) for r, s in zip(records, scores, strict=True)}
    return lambda record: by_id[id(record)]


def router_scores(
    file: ModelFile,
    records: list[PromptRecord],
    cache_dir: Path | None,
    embedder: BatchEmbedder | None = None,
) -> Array:
    texts = [r.prompt for r in records]
    router = ComplexityRouter(file)
    try:
        return router.score_vectors(texts, embed_texts(texts, cache_dir, embedder=embedder))
    finally:
        router.close()


def judge_scores(
    file: ModelFile,
    records: list[PromptRecord],
    pair: Pair,
    cache_dir: Path | None,
    embedder: BatchEmbedder | None = None,
) -> Array:
    questions = [r.prompt for r in records]
    answers = weak_answers(records, pair)
    vectors = (
        [embed_texts(texts, cache_dir, embedder=embedder) for texts in (questions, answers)]
        if file.embedded
        else []
    )
    x = judge_matrix(questions, answers, [None] * len(records), vectors)
    return file.model.predict(x)


def _total(records: list[PromptRecord], model: str, prices: dict[str, Price]) -> Decimal:
    return sum((call_cost(r, model, prices) for r in records), Decimal(0))


def cascade_running_costs(
    records: list[PromptRecord], scores: Array, pair: Pair, prices: dict[str, Price]
) -> list[Decimal]:
    """A cascade's total cost when the k highest-scoring prompts escalate, for k = 0..n: every prompt
    pays the cheap call, each escalated one the strong call on top. Ties keep file order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    running = [_total(records, pair.weak, prices)]
    for i in order:
        running.append(running[-1] + call_cost(records[int(i)], pair.strong, prices))
    return running


def cascade_costs(
    records: list[PromptRecord], scores: Array, report: Report, pair: Pair, prices: dict[str, Price]
) -> list[Decimal]:
    """Cost at each exact sweep point: every prompt pays the cheap call, escalated ones the strong too."""
    assert report.sweep is not None
    running = cascade_running_costs(records, scores, pair, prices)
    n = len(records)
    return [running[round(p.strong_share * n)] for p in report.sweep.exact]


def evaluate(
    outcomes: Outcomes,
    *,
    router: ModelFile | None = None,
    judge: ModelFile | None = None,
    cache_dir: Path | None = None,
    random_seed: int = 0,
    prices: dict[str, Price] | None = None,
    embedder: BatchEmbedder | None = None,
) -> Evaluation:
    if router is None and judge is None:
        raise ValueError("give a trained router, a trained judge, or both")
    prices = prices or DEFAULT_PRICES
    first = router or judge
    assert first is not None
    pair = Pair(first.strong, first.weak)
    split = held_out(outcomes, first)
    if router is not None and judge is not None:
        other = held_out(outcomes, judge)
        if prompts_digest(other.test.records) != prompts_digest(split.test.records):
            raise ValueError("the router and the judge were trained on different splits")
    test = split.test
    records = test.records
    curves: list[Curve] = []

    def scored(name: str, kind: str, scores: Array) -> Curve:
        report = evaluate_scorer(test, scorer_of(records, scores), name, pair, prices)
        return Curve(name, kind, report)

    points: list[Point] = []
    if router is not None:
        scores = router_scores(router, records, cache_dir, embedder)
        curves.append(scored("complexity router", "router", scores))
        points += calibrated_points("complexity router", router, scores, records, pair, prices, cascade=False)
    curves.append(scored("prompt length", "baseline", np.array([length_score(r) for r in records])))
    seeded = random_score(random_seed)
    curves.append(scored(f"random (seed {random_seed})", "baseline", np.array([seeded(r) for r in records])))
    if judge is not None:
        scores = judge_scores(judge, records, pair, cache_dir, embedder)
        learned = scored("cascade: learned judge", "cascade", scores)
        learned.cascade_costs = cascade_costs(records, scores, learned.report, pair, prices)
        curves.append(learned)
        rejected = _rule_rejections(records, pair)
        # Rules first: an answer a rule refuses is escalated before any the learned judge doubts.
        both = scores + rejected.astype(np.float64)
        combined = scored("cascade: rules, then learned judge", "cascade", both)
        combined.cascade_costs = cascade_costs(records, both, combined.report, pair, prices)
        curves.append(combined)
        points.append(_rule_point(records, rejected, pair, prices))
        points += calibrated_points(
            "cascade: learned judge", judge, scores, records, pair, prices, cascade=True
        )
    base = curves[0].report
    return Evaluation(
        data=outcomes.name,
        split=split.describe(),
        pair=pair,
        prompts=len(records),
        strong_accuracy=base.strong_accuracy,
        weak_accuracy=base.weak_accuracy,
        all_strong_cost=base.baselines[0].cost,
        all_weak_cost=base.baselines[1].cost,
        curves=curves,
        reference=base.reference,
        points=points,
    )


def _rule_rejections(records: list[PromptRecord], pair: Pair) -> np.ndarray:
    judge = RuleJudge(MATH_CHECKS)
    return np.array(
        [not judge.verdict({}, r.responses[pair.weak], None).accepted for r in records], dtype=bool
    )


def _point(
    name: str,
    records: list[PromptRecord],
    escalate: np.ndarray,
    pair: Pair,
    prices: dict[str, Price],
    cascade: bool,
) -> Point:
    """Accuracy and cost when `escalate` marks the prompts sent to (or escalated to) the strong model."""
    correct = 0
    cost = Decimal(0)
    for record, strong in zip(records, escalate, strict=True):
        correct += record.correct[pair.strong] if strong else record.correct[pair.weak]
        if cascade:
            # The cheap call always happens; an escalation pays for the strong call on top.
            cost += call_cost(record, pair.weak, prices)
            if strong:
                cost += call_cost(record, pair.strong, prices)
        else:
            cost += call_cost(record, pair.strong if strong else pair.weak, prices)
    n = len(records)
    return Point(name, float(np.mean(escalate)) if n else 0.0, correct / n if n else 0.0, cost)


def _rule_point(
    records: list[PromptRecord], rejected: np.ndarray, pair: Pair, prices: dict[str, Price]
) -> Point:
    name = "cascade: rule judge only (empty, cut off, refusal, no final number)"
    return _point(name, records, rejected, pair, prices, cascade=True)


def calibrated_points(
    name: str,
    file: ModelFile,
    scores: Array,
    records: list[PromptRecord],
    pair: Pair,
    prices: dict[str, Price],
    *,
    cascade: bool,
) -> list[Point]:
    """What the file's own "keep 95%" setting does on held-out prompts: as a share, and as a threshold."""
    if not file.calibration or not len(scores):
        return []
    share = share_for_quality(file.calibration, RETAIN)
    count = round(share * len(scores))
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[:count]] = True
    reference = np.asarray(file.reference_scores)
    threshold = float(np.quantile(reference, 1.0 - share)) if reference.size else 0.5
    return [
        _point(
            f"{name}, calibrated share {share:.0%} (target {RETAIN:.0%})", records, top, pair, prices, cascade
        ),
        _point(
            f"{name}, calibrated threshold {threshold:.3f} (target {RETAIN:.0%})",
            records,
            scores >= threshold,
            pair,
            prices,
            cascade,
        ),
    ]


def time_router(file: ModelFile, texts: list[str], rounds: int = 1) -> dict[str, float]:
    """Wall time of `score` per prompt with the real embedder (loaded first, not timed)."""
    router = ComplexityRouter(file)
    try:
        router.score("warm up")
        timings = []
        for _ in range(rounds):
            for text in texts:
                started = time.perf_counter()
                router.score(text)
                timings.append((time.perf_counter() - started) * 1000)
        features = []
        for text in texts:
            started = time.perf_counter()
            prompt_matrix([text], np.zeros((1, DIMENSIONS)))
            features.append((time.perf_counter() - started) * 1000)
    finally:
        router.close()
    return {
        "prompts": float(len(timings)),
        "p50_ms": float(np.percentile(timings, 50)),
        "p95_ms": float(np.percentile(timings, 95)),
        "features_p50_ms": float(np.percentile(features, 50)),
    }
