"""Replay a cheap-first cascade route on recorded outcomes: its judges, run offline on the recorded
cheap answers, decide which prompts escalate.

A two-step cascade (cheap model, then strong model) asks the cheap model, judges the answer, and
asks the strong model only when the judges refuse it. Offline that becomes: the cheap model's
recorded answer goes through the route's own judges, the rule checks first and then the learned
judge (as AllOf runs them live: the learned judge sees only answers the rules let through, in
file order, so a share-mode threshold drifts as it would on this traffic). Accepted: the cheap
model's outcome, and its call's cost. Escalated: the strong model's outcome, and the cost of both
calls. In the result, the strong model's share is the share of escalations (the share of answers
it gives), and the cheap model's is the rest, although every prompt paid for a cheap call.

The recorded data has no finish_reason, so the `truncated` check never fires here; a cut-off
answer still fails `final_number`, and the learned judge sees an unclosed calculation. An LLM
judge grades each answer by calling a model, so it cannot be replayed offline: it is refused.

With a learned judge the route also gets a threshold sweep, scored as `faregate router eval`
scores a cascade: rule-refused answers first (score 1 + P(wrong)), then by P(wrong); every point's
cost counts both calls on each escalated prompt (router_eval.cascade_running_costs).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np

from faregate.embedding.vector_cache import BatchEmbedder
from faregate.evals.replay.engine import (
    DEFAULT_BINS,
    CurvePoint,
    Pair,
    PolicyResult,
    Report,
    Sweep,
    baseline_report,
    evaluate_scorer,
)
from faregate.evals.replay.outcomes import Outcomes, PromptRecord
from faregate.evals.replay.router_eval import cascade_running_costs, judge_scores, scorer_of
from faregate.routing.policies import CascadePolicy
from faregate.types import Price


def require_cheap_answers(outcomes: Outcomes, cheap: str) -> None:
    """The judges read the cheap model's answer text; correctness alone (MMLU) is not enough."""
    missing = sum(cheap not in r.responses for r in outcomes.records)
    if missing:
        raise ValueError(
            f"{outcomes.name}: {missing:,} of {len(outcomes):,} prompts have no recorded answer from {cheap} "
            f"(no '{cheap}_response' column); a cascade's judges need the cheap model's answer text, "
            "so this data (correctness only) cannot replay a cascade"
        )


def refuse_llm_judge(policy: CascadePolicy, route: str) -> None:
    llm = policy.settings.judge.llm
    if llm is not None:
        raise ValueError(
            f"route {route}: its cascade has an LLM judge ({llm.model}), which grades each answer by "
            "calling a model; replay calls no model, so what that judge would have accepted is unknown. "
            "Replay a copy of the route without judge.llm (the rule checks and a learned judge replay "
            "offline), or measure it with `faregate eval` through the gateway"
        )


def _body(record: PromptRecord) -> dict[str, object]:
    # What the gateway's judges see: the request as the client sent it (one user message).
    return {"messages": [{"role": "user", "content": record.prompt}]}


def rule_rejections(records: list[PromptRecord], policy: CascadePolicy, cheap: str) -> np.ndarray:
    """True where the route's rule checks refuse the cheap model's recorded answer."""
    return np.array(
        [not policy.rules.verdict(_body(r), r.responses[cheap], None).accepted for r in records],
        dtype=bool,
    )


def escalations(rejected: np.ndarray, policy: CascadePolicy, learned: np.ndarray | None) -> np.ndarray:
    """Which prompts escalate: refused by a rule, else by the learned judge's own threshold."""
    if policy.learned is None or learned is None:
        return rejected.copy()
    threshold = policy.learned.threshold
    out = np.zeros(len(rejected), dtype=bool)
    for i, (refused, score) in enumerate(zip(rejected, learned, strict=True)):
        # Only answers the rules let through reach the learned judge (and its share window).
        out[i] = bool(refused) or threshold.decide(float(score))
    return out


def cascade_result(
    outcomes: Outcomes, escalate: np.ndarray, pair: Pair, prices: dict[str, Price], name: str
) -> PolicyResult:
    """Accepted: the cheap outcome and call. Escalated: the strong outcome, and both calls' cost."""
    records = outcomes.records
    n = len(records)
    k = int(escalate.sum())
    # Escalated prompts score 1 and sort first, so the running total at k is exactly this set's cost.
    cost = cascade_running_costs(records, escalate.astype(np.float64), pair, prices)[k]
    correct = sum(
        r.correct[pair.strong] if up else r.correct[pair.weak]
        for r, up in zip(records, escalate, strict=True)
    )
    return PolicyResult(name, {pair.strong: k / n, pair.weak: (n - k) / n}, correct / n, cost, n)


def with_cascade_costs(sweep: Sweep, running: list[Decimal], n: int) -> Sweep:
    """The sweep with each point's cost replaced by the cascade's (cheap call always, strong if escalated)."""

    def priced(point: CurvePoint) -> CurvePoint:
        return replace(point, cost=running[round(point.strong_share * n)])

    retain = None if sweep.retain_point is None else priced(sweep.retain_point)
    return Sweep(
        sweep.name, [priced(p) for p in sweep.points], [priced(p) for p in sweep.exact], sweep.metrics, retain
    )


def _operating_point(policy: CascadePolicy) -> str:
    spec = policy.settings.judge.learned
    assert spec is not None
    if spec.threshold is not None:
        return f"P(wrong) ≥ {spec.threshold:g}"
    if spec.retain is not None:
        return f"retain {spec.retain:.0%}"
    return f"escalate_share {spec.escalate_share:.0%}"


def evaluate_cascade(
    outcomes: Outcomes,
    policy: CascadePolicy,
    route: str,
    pair: Pair,
    prices: dict[str, Price],
    bins: int = DEFAULT_BINS,
    *,
    cache_dir: Path | None = None,
    embedder: BatchEmbedder | None = None,
) -> Report:
    """The route's cascade on the recorded outcomes: `pair.weak` is its cheap step, `pair.strong` the next."""
    refuse_llm_judge(policy, route)
    require_cheap_answers(outcomes, pair.weak)
    records = outcomes.records
    rejected = rule_rejections(records, policy, pair.weak)
    learned: np.ndarray | None = None
    judges = "rules only"
    if policy.learned is None:
        report = baseline_report(outcomes, pair, prices)
    else:
        judges = f"rules + learned judge at {_operating_point(policy)}"
        learned = judge_scores(policy.learned.file, records, pair, cache_dir, embedder)
        combined = learned + rejected.astype(np.float64)
        report = evaluate_scorer(
            outcomes,
            scorer_of(records, combined),
            f"route {route}: rules, then P(wrong)",
            pair,
            prices,
            bins,
        )
        assert report.sweep is not None
        running = cascade_running_costs(records, combined, pair, prices)
        report.sweep = with_cascade_costs(report.sweep, running, len(records))
    escalate = escalations(rejected, policy, learned)
    report.policy = cascade_result(outcomes, escalate, pair, prices, f"route {route} (cascade: {judges})")
    return report
