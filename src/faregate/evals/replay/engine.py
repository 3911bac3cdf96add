"""Replay a routing policy on recorded outcomes: what it would have cost and scored, with no model call.

A policy is either a router (prompt record -> model name) or, for two-model
threshold policies, a scorer (prompt record -> float, higher meaning "needs the
strong model"); a scorer is swept over thresholds and judged the way the
RouteLLM paper (and its routellm/evals/benchmarks.py + evaluate.py) does:

- thresholds are the 0%, 10%, ..., 100% quantiles of the scores (pandas.qcut bin
  edges); a prompt goes to the strong model when its score >= the threshold, and
  at the last (the maximum) when it is > the threshold, so the curve runs from
  100% to 0% strong calls in 11 points;
- PGR = (accuracy - weak) / (strong - weak);
- CPT(x) = strong-call share at which the curve reaches PGR x, interpolated
  linearly between points;
- APGR = area under PGR against strong-call share (trapezoids) over the span of
  shares, which is the whole [0, 1]; random routing scores 0.5.

Beside these, the share of strong calls needed to keep 95% of the strong model's
accuracy is read from the exact curve (every distinct threshold, no
interpolation), since it names a threshold one can deploy.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, Outcomes, PromptRecord
from faregate.types import Price, Usage

Router = Callable[[PromptRecord], str]
Scorer = Callable[[PromptRecord], float]

# List prices when the RouteLLM data was recorded (USD per 1M tokens, input/output).
DEFAULT_PRICES: dict[str, Price] = {
    STRONG_MODEL: Price(Decimal("10.00"), Decimal("30.00")),
    WEAK_MODEL: Price(Decimal("0.60"), Decimal("0.60")),
}
DEFAULT_BINS = 10  # RouteLLM's --num-results
RETAIN = 0.95
PGR_TARGETS = (0.5, 0.8)


@dataclass(slots=True, frozen=True)
class Pair:
    strong: str = STRONG_MODEL
    weak: str = WEAK_MODEL


@dataclass(slots=True, frozen=True)
class PolicyResult:
    """Where one policy sent the calls, what they cost and how many were right."""

    name: str
    shares: dict[str, float]
    accuracy: float
    cost: Decimal
    prompts: int
    # An expectation over random choices, not one run.
    expected: bool = False

    def share(self, model: str) -> float:
        return self.shares.get(model, 0.0)


@dataclass(slots=True, frozen=True)
class CurvePoint:
    strong_share: float
    accuracy: float
    # Strong when score >= threshold (> for the last RouteLLM point); None: analytic or "nobody".
    threshold: float | None = None
    cost: Decimal | None = None


@dataclass(slots=True, frozen=True)
class Metrics:
    name: str
    apgr: float
    cpt: dict[float, float | None]
    # Strong-call share needed to keep RETAIN of the strong model's accuracy.
    retain_share: float | None


@dataclass(slots=True)
class Sweep:
    name: str
    points: list[CurvePoint]  # RouteLLM's quantile thresholds, by ascending strong share
    exact: list[CurvePoint]  # every distinct threshold, by ascending strong share
    metrics: Metrics
    # The cheapest threshold that keeps RETAIN of the strong model's accuracy.
    retain_point: CurvePoint | None


@dataclass(slots=True)
class Report:
    data: str
    prompts: int
    contaminated_skipped: int
    pair: Pair
    prices: dict[str, Price]
    strong_accuracy: float
    weak_accuracy: float
    baselines: list[PolicyResult]  # all-strong, all-weak, random (expected), oracle
    reference: list[Metrics]  # the random and oracle curves' metrics
    policy: PolicyResult | None = None
    sweep: Sweep | None = None

    def pgr(self, accuracy: float) -> float:
        return pgr(accuracy, self.strong_accuracy, self.weak_accuracy)


# -- policies -------------------------------------------------------------------------------------------


def always(model: str) -> Router:
    return lambda record: model


def oracle_router(pair: Pair) -> Router:
    """Strong only where it matters: the weak model is wrong and the strong one right."""

    def route(record: PromptRecord) -> str:
        needed = record.correct[pair.strong] and not record.correct[pair.weak]
        return pair.strong if needed else pair.weak

    return route


def length_score(record: PromptRecord) -> float:
    """The one-line heuristic: a longer prompt needs the strong model. Characters, not tokens: on
    this data characters rank better (GSM8K APGR 0.60 vs 0.59, MMLU 0.54 vs 0.50)."""
    return float(len(record.prompt))


def random_score(seed: int = 0) -> Scorer:
    """A uniform score that depends only on (seed, prompt), so replays are repeatable."""

    def score(record: PromptRecord) -> float:
        digest = hashlib.blake2b(f"{seed}\0{record.prompt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    return score


# -- metrics --------------------------------------------------------------------------------------------


def pgr(accuracy: float, strong: float, weak: float) -> float:
    if strong == weak:
        raise ValueError("the strong and weak models are equally accurate here; PGR is undefined")
    return (accuracy - weak) / (strong - weak)


def apgr(curve: Sequence[CurvePoint], strong: float, weak: float) -> float:
    """Trapezoidal area under PGR over the curve's share span (RouteLLM's (AUC - weak)/(strong - weak))."""
    if len(curve) < 2:
        raise ValueError("APGR needs at least two points")
    area = 0.0
    for a, b in itertools.pairwise(curve):
        area += (b.strong_share - a.strong_share) * (
            pgr(a.accuracy, strong, weak) + pgr(b.accuracy, strong, weak)
        )
    span = curve[-1].strong_share - curve[0].strong_share
    return area / 2 / span


def share_reaching(curve: Sequence[CurvePoint], accuracy: float) -> float | None:
    """Least strong-call share at which the curve reaches `accuracy`; None if it never does.

    Linear between points, like RouteLLM's np.interp (the same on a rising curve;
    np.interp is undefined on a curve that dips, this takes the first crossing)."""
    previous: CurvePoint | None = None
    for point in curve:
        if point.accuracy >= accuracy:
            if previous is None:
                return point.strong_share
            rise = point.accuracy - previous.accuracy
            step = point.strong_share - previous.strong_share
            return previous.strong_share + (accuracy - previous.accuracy) / rise * step
        previous = point
    return None


def summarize(
    name: str,
    curve: Sequence[CurvePoint],
    strong: float,
    weak: float,
    exact: Sequence[CurvePoint] | None = None,
) -> Metrics:
    cpt = {target: share_reaching(curve, weak + target * (strong - weak)) for target in PGR_TARGETS}
    retain = _retain_share(exact, strong) if exact is not None else share_reaching(curve, RETAIN * strong)
    return Metrics(name, apgr(curve, strong, weak), cpt, retain)


def _retain_point(exact: Sequence[CurvePoint], strong: float) -> CurvePoint | None:
    target = RETAIN * strong - 1e-12  # accuracies are count/n; do not lose a tie to rounding
    return next((p for p in exact if p.accuracy >= target), None)


def _retain_share(exact: Sequence[CurvePoint], strong: float) -> float | None:
    point = _retain_point(exact, strong)
    return None if point is None else point.strong_share


def random_curve(strong: float, weak: float) -> list[CurvePoint]:
    """Expected accuracy of routing a random share p to the strong model: a straight line."""
    return [CurvePoint(0.0, weak), CurvePoint(1.0, strong)]


def oracle_curve(outcomes: Outcomes, pair: Pair) -> list[CurvePoint]:
    """Best accuracy at each share: strong calls go first to prompts only the strong model gets right."""
    n = len(outcomes)
    weak = outcomes.accuracy(pair.weak)
    gain = sum(r.correct[pair.strong] and not r.correct[pair.weak] for r in outcomes.records) / n
    return [CurvePoint(0.0, weak), CurvePoint(gain, weak + gain), CurvePoint(1.0, weak + gain)]


# -- replay ---------------------------------------------------------------------------------------------


def call_cost(record: PromptRecord, model: str, prices: dict[str, Price]) -> Decimal:
    price = prices.get(model)
    if price is None:
        raise ValueError(f"no price for {model}; give one (USD per 1M input/output tokens)")
    return price.cost(Usage(record.input_tokens, record.output_tokens[model]))


def replay(outcomes: Outcomes, router: Router, prices: dict[str, Price], name: str) -> PolicyResult:
    calls: Counter[str] = Counter()
    correct = 0
    cost = Decimal(0)
    for record in outcomes.records:
        model = router(record)
        if model not in record.correct:
            raise ValueError(f"policy {name} chose {model!r}, which has no recorded outcome")
        calls[model] += 1
        correct += record.correct[model]
        cost += call_cost(record, model, prices)
    n = len(outcomes)
    return PolicyResult(name, {m: calls[m] / n for m in outcomes.models}, correct / n, cost, n)


def expected_random(
    all_strong: PolicyResult, all_weak: PolicyResult, pair: Pair, share: Decimal
) -> PolicyResult:
    p = float(share)
    return PolicyResult(
        name=f"random {share * 100:.0f}%",
        shares={pair.strong: p, pair.weak: 1 - p},
        accuracy=p * all_strong.accuracy + (1 - p) * all_weak.accuracy,
        cost=share * all_strong.cost + (1 - share) * all_weak.cost,
        prompts=all_strong.prompts,
        expected=True,
    )


def sweep(
    outcomes: Outcomes,
    scorer: Scorer,
    pair: Pair,
    prices: dict[str, Price],
    name: str,
    bins: int = DEFAULT_BINS,
) -> Sweep:
    records = outcomes.records
    n = len(records)
    scores = np.array([float(scorer(r)) for r in records])
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"policy {name} gave a score that is not a finite number")
    # Sending the k highest-scoring prompts to the strong model: prefix sums over that order give
    # every threshold's accuracy and exact cost in one pass.
    order = np.argsort(-scores, kind="stable")
    descending = scores[order]
    strong_ok = np.array([r.correct[pair.strong] for r in records], dtype=np.int64)
    weak_ok = np.array([r.correct[pair.weak] for r in records], dtype=np.int64)
    correct_at = int(weak_ok.sum()) + np.concatenate(([0], np.cumsum((strong_ok - weak_ok)[order])))
    cost_at = [sum((call_cost(r, pair.weak, prices) for r in records), Decimal(0))]
    for i in order:
        record = records[int(i)]
        cost_at.append(
            cost_at[-1] + call_cost(record, pair.strong, prices) - call_cost(record, pair.weak, prices)
        )

    def point(k: int, threshold: float | None) -> CurvePoint:
        return CurvePoint(k / n, int(correct_at[k]) / n, threshold, cost_at[k])

    ascending = descending[::-1]
    edges = np.quantile(scores, np.linspace(0.0, 1.0, bins + 1))
    points = []
    for i, edge in enumerate(edges):
        # >= edge (searchsorted "left"), but > the last edge, the maximum ("right"): nobody strong.
        below = np.searchsorted(ascending, edge, side="left" if i < bins else "right")
        points.append(point(n - int(below), float(edge)))
    points.sort(key=lambda p: p.strong_share)
    # The last index of each run of equal scores: a threshold there takes the whole run.
    ends = np.flatnonzero(np.append(descending[1:] != descending[:-1], True))
    exact = [point(0, None)] + [point(int(e) + 1, float(descending[e])) for e in ends]
    strong, weak = outcomes.accuracy(pair.strong), outcomes.accuracy(pair.weak)
    metrics = summarize(name, points, strong, weak, exact)
    return Sweep(name, points, exact, metrics, _retain_point(exact, strong))


def baseline_report(outcomes: Outcomes, pair: Pair, prices: dict[str, Price]) -> Report:
    """The four baselines (all-strong, all-weak, random expected, oracle) and the reference curves."""
    if not outcomes.records:
        raise ValueError(f"{outcomes.name}: no prompts to replay")
    outcomes.require(pair.strong, pair.weak)
    if pair.strong == pair.weak:
        raise ValueError("the strong and weak models must differ")
    all_strong = replay(outcomes, always(pair.strong), prices, "all-strong")
    all_weak = replay(outcomes, always(pair.weak), prices, "all-weak")
    oracle = replay(outcomes, oracle_router(pair), prices, "oracle")
    strong, weak = all_strong.accuracy, all_weak.accuracy
    return Report(
        data=outcomes.name,
        prompts=len(outcomes),
        contaminated_skipped=outcomes.contaminated_skipped,
        pair=pair,
        prices=prices,
        strong_accuracy=strong,
        weak_accuracy=weak,
        baselines=[all_strong, all_weak, expected_random(all_strong, all_weak, pair, Decimal("0.5")), oracle],
        reference=[
            summarize("random", random_curve(strong, weak), strong, weak),
            summarize("oracle", oracle_curve(outcomes, pair), strong, weak),
        ],
    )


def evaluate_router(
    outcomes: Outcomes,
    router: Router,
    name: str,
    pair: Pair | None = None,
    prices: dict[str, Price] | None = None,
) -> Report:
    pair, prices = pair or Pair(), prices or DEFAULT_PRICES
    report = baseline_report(outcomes, pair, prices)
    report.policy = replay(outcomes, router, prices, name)
    return report


def evaluate_scorer(
    outcomes: Outcomes,
    scorer: Scorer,
    name: str,
    pair: Pair | None = None,
    prices: dict[str, Price] | None = None,
    bins: int = DEFAULT_BINS,
) -> Report:
    pair, prices = pair or Pair(), prices or DEFAULT_PRICES
    report = baseline_report(outcomes, pair, prices)
    report.sweep = sweep(outcomes, scorer, pair, prices, name, bins)
    retain = report.sweep.retain_point
    if retain is not None and retain.cost is not None:
        # The curve's first point (no strong call) has no threshold: it is the cheapest when the
        # weak model alone already keeps RETAIN of the strong model's accuracy.
        cut = ": nobody strong" if retain.threshold is None else f" ≥ {retain.threshold:g}"
        report.policy = PolicyResult(
            name=f"{name}{cut} (keeps {RETAIN:.0%} of strong)",
            shares={pair.strong: retain.strong_share, pair.weak: 1 - retain.strong_share},
            accuracy=retain.accuracy,
            cost=retain.cost,
            prompts=len(outcomes),
        )
    return report
